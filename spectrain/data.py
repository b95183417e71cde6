"""Chat datasets: read Daring-Anteater / ShareGPT / OpenAI-messages jsonl into one shape, write it back.

Every problem with an input line is reported with file, line and reason, and the line is
skipped and counted; nothing raises a bare traceback at the user.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterator

from spectrain.errors import SpectrainError

EMBEDDED = "embedded"
ROLE_ALIASES = {
    "user": "user", "human": "user",
    "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "model": "assistant",
    "system": "system",
}


@dataclass
class Conversation:
    conversation_id: str
    turns: list[dict[str, str]]  # {"role": "user"|"assistant", "content": ...}
    system: str = ""
    category: str = ""
    extra: dict = field(default_factory=dict)
    source: str = ""  # file:line it was read from, for error reports (never written out)

    @property
    def prompts(self) -> list[str]:
        return [t["content"] for t in self.turns if t["role"] == "user"]

    def to_record(self) -> dict:
        """Daring-Anteater shape, which modelopt's data readers and our train step both read."""
        record = {
            "conversation_id": self.conversation_id,
            "system": self.system,
            "mask": "User",
            "conversations": [{"from": "User" if t["role"] == "user" else "Assistant", "value": t["content"]}
                              for t in self.turns],
        }
        if self.category:
            record["category"] = self.category
        record.update(self.extra)
        return record


@dataclass
class SkippedLine:
    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


def embedded_path(split: str) -> Path:
    """The prompt set spectrain ships: ``train`` or ``heldout``."""
    return Path(str(resources.files("spectrain") / "data" / "embedded" / f"{split}.jsonl"))


def resolve_path(spec: str, split: str = "train") -> Path:
    path = embedded_path(split) if spec in ("", EMBEDDED) else Path(spec).expanduser()
    if not path.exists():
        raise SpectrainError(f"no such file: {spec}", where="dataset",
                             fix="pass a jsonl file in Daring-Anteater, ShareGPT or OpenAI-messages shape, or 'embedded'")
    return path


def content_id(system: str, turns: list[dict[str, str]]) -> str:
    """A stable id from the prompts alone, so re-runs and regenerated copies share it."""
    prompts = [system] + [t["content"] for t in turns if t["role"] == "user"]
    return "sha1-" + hashlib.sha1(json.dumps(prompts).encode()).hexdigest()[:16]


def parse_record(record: dict) -> Conversation:
    """One JSON object in any supported shape -> Conversation; ValueError says what is wrong."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if "conversations" in record:
        raw, role_key, text_key = record["conversations"], "from", "value"
    elif "messages" in record:
        raw, role_key, text_key = record["messages"], "role", "content"
    else:
        raise ValueError("no 'conversations' (Daring-Anteater/ShareGPT) or 'messages' (OpenAI) field")
    if not isinstance(raw, list) or not raw:
        raise ValueError("the conversation is empty")
    system = record.get("system") or ""
    turns: list[dict[str, str]] = []
    for position, turn in enumerate(raw):
        if not isinstance(turn, dict):
            raise ValueError(f"turn {position} is not an object")
        role_name = str(turn.get(role_key, turn.get("role", turn.get("from", ""))))
        role = ROLE_ALIASES.get(role_name.lower())
        if role is None:
            raise ValueError(f"turn {position} has unknown role {role_name!r} (known: {', '.join(sorted(ROLE_ALIASES))})")
        text = turn.get(text_key, turn.get("content", turn.get("value")))
        if not isinstance(text, str) or not text.strip():
            if role == "assistant":
                text = ""  # to be regenerated anyway
            else:
                raise ValueError(f"turn {position} ({role}) is empty")
        if role == "system":
            if turns:
                raise ValueError(f"turn {position} is a system message after the conversation started")
            system = text
            continue
        turns.append({"role": role, "content": text})
    if not turns or turns[0]["role"] != "user":
        raise ValueError("the conversation does not start with a user turn")
    for previous, current in zip(turns, turns[1:]):
        if previous["role"] == current["role"]:
            raise ValueError(f"two {current['role']} turns in a row")
    conversation_id = str(record.get("conversation_id") or record.get("id") or content_id(system, turns))
    extra = {k: record[k] for k in ("finish_reasons", "truncated") if k in record}  # a regenerated record's
    return Conversation(conversation_id, turns, system, str(record.get("category") or ""), extra)


def read_conversations(spec: str, split: str = "train", skipped: list[SkippedLine] | None = None
                       ) -> Iterator[Conversation]:
    """Yield the valid conversations of a jsonl file; collect what was skipped and why in ``skipped``."""
    path = resolve_path(spec, split)
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    last = len(lines)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            ending = " (a truncated last line: was the writer interrupted?)" if number >= last - 1 else ""
            reason = f"not valid JSON ({exc.msg} at column {exc.colno}){ending}"
            if skipped is None:
                raise SpectrainError(reason, where=f"{path}:{number}", fix="fix or remove that line") from exc
            skipped.append(SkippedLine(str(path), number, reason))
            continue
        try:
            conversation = parse_record(record)
            conversation.source = f"{path}:{number}"
            yield conversation
        except ValueError as exc:
            if skipped is None:
                raise SpectrainError(str(exc), where=f"{path}:{number}", fix="fix or remove that line") from exc
            skipped.append(SkippedLine(str(path), number, str(exc)))


def append_jsonl(handle, record: dict) -> None:
    """Append one whole line and make it durable, so a crash never leaves half a record behind."""
    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


def fingerprint(path: str | Path) -> str:
    """Content hash of a data file: which exact data a model was trained or evaluated on."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()[:16]
