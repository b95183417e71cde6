"""What a parameter may hold: rules that say what they allow and give an example.

A rule is attached to a config field (``spectrain.config.field(..., check=...)``) and runs whenever a
config is built, so `spectrain step`, a KFP component and the pipeline-wide check before a run
(pipelines/parameters.py) all judge a value by the same rule.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlparse

# Whether local paths and S3 credentials can be checked here: not when the values are for pods on a
# cluster (`spectrain submit`), whose files and secrets live there.
_HERE = contextvars.ContextVar("spectrain_checks_here", default=True)


@contextlib.contextmanager
def for_cluster() -> Iterator[None]:
    """Within this block, rules skip what only the cluster can tell (its files, its credentials)."""
    token = _HERE.set(False)
    try:
        yield
    finally:
        _HERE.reset(token)


def checking_here() -> bool:
    return _HERE.get()


@dataclass(frozen=True)
class Rule:
    """``test(value)`` returns None when the value is allowed, else why not ('' when ``allowed`` says it all)."""

    allowed: str
    example: str
    test: Callable[[Any], str | None]

    def problem(self, value: Any) -> str | None:
        return self.test(value)


def at_least(low: float, example: Any = None) -> Rule:
    kind = "an integer" if isinstance(low, int) else "a number"
    return Rule(f"{kind} ≥ {low}", str(example if example is not None else low), lambda v: None if v >= low else "")


def above(low: float, example: Any) -> Rule:
    return Rule(f"a number > {low}", str(example), lambda v: None if v > low else "")


def or_auto(auto: Any, rule: Rule, meaning: str = "chosen from the base model") -> Rule:
    """``rule``, or the value ``auto`` that leaves the choice to the run (``meaning`` says what it does)."""
    return Rule(
        f"{auto:g} ({meaning}) or {rule.allowed}",
        rule.example,
        lambda v: None if v == auto else rule.test(v),
    )


def between(low: float, high: float, example: Any) -> Rule:
    return Rule(f"a number from {low} to {high}", str(example), lambda v: None if low <= v <= high else "")


# Kubernetes quantities as KFP's PipelineTask.set_cpu_request / set_memory_request take them (and Kubernetes does).
CPU_QUANTITY = re.compile(r"([0-9]*[.])?[0-9]+m?")
MEMORY_QUANTITY = re.compile(r"[0-9]+(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?")


def cpu_quantity(example: str) -> Rule:
    return Rule("CPU cores (8, 0.5 or 500m)", example, lambda v: None if CPU_QUANTITY.fullmatch(str(v)) else "")


def memory_quantity(example: str) -> Rule:
    return Rule("a memory size (64Gi, 512Mi)", example, lambda v: None if MEMORY_QUANTITY.fullmatch(str(v)) else "")


def one_of(*choices: str, retired: dict[str, str] | None = None) -> Rule:
    """One of ``choices``; a value in ``retired`` (value -> why it went) is refused with its reason."""
    retired = retired or {}
    return Rule(f"one of {', '.join(choices)}", choices[0], lambda v: None if v in choices else retired.get(v, ""))


def each_one_of(*choices: str, retired: dict[str, str] | None = None) -> Rule:
    retired = retired or {}

    def test(values: list) -> str | None:
        if not values:
            return "the list is empty"
        gone = [v for v in values if v in retired]
        if gone:
            return retired[gone[0]]
        unknown = [v for v in values if v not in choices]
        if unknown:
            return f"unknown: {', '.join(map(repr, unknown))}"
        if len(set(values)) < len(values):
            return "a value is repeated"
        return None

    return Rule(f"a non-empty list of distinct values from {', '.join(choices)}", ",".join(choices[:2]), test)


def increasing_sizes(example: str, from_one: bool = True) -> Rule:
    """A non-empty list of integers ≥ 1, strictly increasing, starting at 1 (batch sizes) unless not ``from_one``."""

    def test(values: list) -> str | None:
        try:
            sizes = [int(v) for v in values]
        except (TypeError, ValueError):
            return "not all integers"
        if not sizes:
            return "the list is empty"
        if sizes[0] != 1 if from_one else sizes[0] < 1:
            return "the list must start at 1" if from_one else "the values must be at least 1"
        if any(b <= a for a, b in zip(sizes, sizes[1:])):
            return "the sizes must increase"
        return None

    return Rule("increasing integers " + ("starting at 1" if from_one else "≥ 1"), example, test)


def url(*, schemes: tuple[str, ...] = ("http", "https"), optional: bool = True, several: bool = False) -> Rule:
    """A well-formed URL (host and scheme); ``several``: comma-separated URLs."""

    def test(value: str) -> str | None:
        if not value:
            return None if optional else "it is empty"
        for one in value.split(",") if several else [value]:
            parsed = urlparse(one.strip())
            needs_host = parsed.scheme in ("http", "https")
            if parsed.scheme not in schemes or (needs_host and not parsed.netloc) or not (parsed.netloc or parsed.path):
                return f"{one.strip()!r} is not a {'/'.join(schemes)} URL" + (" with a host" if needs_host else "")
        return None

    kind = f"a {'/'.join(schemes)} URL" + (" (several: comma-separated)" if several else "")
    return Rule(kind + (", or empty" if optional else ""), "http://127.0.0.1:8000/v1", test)


def s3_credentials_problem() -> str | None:
    """Why S3 could not be reached with credentials from here, or None.

    Looks only where credentials are configured (variables, files), never at a metadata endpoint.
    """
    if not checking_here():
        return None
    variables = (
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    )
    files = (
        os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
        os.environ.get("AWS_CONFIG_FILE", "~/.aws/config"),
    )
    if any(os.environ.get(v) for v in variables) or any(Path(f).expanduser().is_file() for f in files):
        return None
    return (
        "no S3 credentials are configured (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
        "or ~/.aws/credentials; AWS_ENDPOINT_URL for a MinIO or other S3 server)"
    )


def _s3_location_problem(value: str) -> str | None:
    if not re.fullmatch(r"s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?", value):
        return f"{value!r} is not s3://bucket/key or s3://bucket/prefix/"
    return s3_credentials_problem()


def s3_prefix(optional: bool = True) -> Rule:
    def test(value: str) -> str | None:
        if not value:
            return None if optional else "it is empty"
        return _s3_location_problem(value)

    return Rule(
        "an s3://bucket/prefix/ with credentials configured" + (", or empty" if optional else ""),
        "s3://my-bucket/spectrain/",
        test,
    )


def _readable_path_problem(value: str) -> str | None:
    if not checking_here():
        return None
    path = Path(value).expanduser()
    if not path.exists():
        return f"{value} does not exist"
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        return f"{value} is not readable"
    return None


def _no_conversation_problem(value: str) -> str | None:
    """A local dataset must hold at least one usable conversation; reading stops at the first one."""
    if not checking_here():
        return None
    from spectrain.data import SkippedLine, read_conversations
    from spectrain.errors import SpectrainError

    skipped: list[SkippedLine] = []
    try:
        if next(iter(read_conversations(value, skipped=skipped)), None) is not None:
            return None
    except SpectrainError as exc:
        return str(exc)
    first = f"; first problem: {skipped[0].where}: {skipped[0].reason}" if skipped else ""
    return f"{value} holds no usable conversation ({len(skipped)} records skipped{first})"


def data_source(optional: bool = False) -> Rule:
    """'embedded', hf:<id>, s3://..., or a readable local file or folder."""

    def test(value: str) -> str | None:
        if not value:
            return None if optional else "it is empty"
        if value == "embedded" or value.startswith("hf:"):
            return None
        if value.startswith("s3://"):
            return _s3_location_problem(value)
        return _readable_path_problem(value) or _no_conversation_problem(value)

    return Rule(
        "'embedded', a .jsonl/.json/.parquet file or a folder of them, s3://bucket/key or prefix/, or hf:<dataset id>",
        "embedded",
        test,
    )


HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+")


def model_source() -> Rule:
    """'embedded', a local checkpoint folder holding config.json, or a hub id org/name."""

    def test(value: str) -> str | None:
        if value in ("", "embedded"):
            return None
        path = Path(value).expanduser()
        local = value.startswith(("/", "./", "../", "~")) or path.exists()
        if local:
            if not checking_here():
                return None
            if not path.is_dir():
                return f"no such directory: {value}"
            if not (path / "config.json").is_file():
                return f"{value} has no config.json, so it is not a Hugging Face checkpoint folder"
            return None
        return None if HUB_ID.fullmatch(value) else f"{value!r} is neither a local folder nor a hub id org/name"

    return Rule(
        "'embedded', a local Hugging Face checkpoint folder, or a hub id", "HuggingFaceTB/SmolLM2-135M-Instruct", test
    )


def existing_folder(optional: bool = False) -> Rule:
    def test(value: str) -> str | None:
        if not value:
            return None if optional else "it is empty"
        if not checking_here():
            return None
        return None if Path(value).is_dir() else f"no such directory: {value}"

    return Rule("an existing folder", "./draft-checkpoint", test)


def existing_path(optional: bool = False) -> Rule:
    def test(value: str) -> str | None:
        if not value:
            return None if optional else "it is empty"
        if not checking_here():
            return None
        return None if Path(value).exists() else f"no such file or directory: {value}"

    return Rule("an existing file or folder", "./evaluation/evaluation.json", test)
