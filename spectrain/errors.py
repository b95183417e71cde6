"""User-facing errors: what was wrong, where, and what to do about it."""

from __future__ import annotations


class SpectrainError(Exception):
    """A mistake in the user's input or environment, reported without a traceback.

    ``where`` names the place (a file and line, a config field, a URL) and ``fix``
    says what to do; both are optional but should be given whenever they are known.
    """

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = f"{self.where}: {self.what}" if self.where else self.what
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text
