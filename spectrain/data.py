"""Chat datasets: read Daring-Anteater / ShareGPT / OpenAI-messages data into one shape, write it back.

Where data can come from (a *dataset spec*):
  embedded                  the prompt set spectrain ships (``split``: train or heldout)
  path/to/file              .jsonl, .json (a list of records) or .parquet
  path/to/folder/           every .jsonl/.json/.parquet file below it, in name order
  s3://bucket/key, s3://bucket/prefix/   the same, downloaded with boto3 (spectrain.s3)
  hf:owner/name[:split]     a Hugging Face ``datasets`` id (or hf:/local/dataset/dir)
The record shape is detected per record (``conversations`` with from/value, OpenAI ``messages``
with role/content, or MT-Bench / EAGLE question files' ``turns``: the user turns only, as in
``vicuna_bench_question.jsonl``) unless a format is forced.

Every problem with an input record is reported with file, line (or record number) and reason,
and the record is skipped and counted; nothing raises a bare traceback at the user.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

from spectrain import paths
from spectrain.errors import SpectrainError

EMBEDDED = "embedded"
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
FORMATS = {
    "auto": None,
    "daring-anteater": "conversations",
    "sharegpt": "conversations",
    "openai": "messages",
    "mt-bench": "turns",
}
ROLE_ALIASES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
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
            "conversations": [
                {"from": "User" if t["role"] == "user" else "Assistant", "value": t["content"]} for t in self.turns
            ],
        }
        if self.category:
            record["category"] = self.category
        record.update(self.extra)
        return record


@dataclass
class SkippedLine:
    path: str
    line: int  # line of a jsonl file, else the record's number (1-based)
    reason: str

    @property
    def where(self) -> str:
        by_record = self.path.endswith((".json", ".parquet")) or self.path.startswith("hf:")
        return f"{self.path} record {self.line}" if by_record else f"{self.path}:{self.line}"

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


def embedded_path(split: str) -> Path:
    """The prompt set spectrain ships: ``train`` or ``heldout``."""
    return Path(str(resources.files("spectrain") / "data" / "embedded" / f"{split}.jsonl"))


def content_id(system: str, turns: list[dict[str, str]]) -> str:
    """A stable id from the prompts alone, so re-runs and regenerated copies share it."""
    prompts = [system] + [t["content"] for t in turns if t["role"] == "user"]
    return "sha1-" + hashlib.sha1(json.dumps(prompts).encode()).hexdigest()[:16]


def _question_turns(turns: object) -> object:
    """MT-Bench's ``turns`` (user messages; the replies are to be generated) as messages with empty replies."""
    if turns is None:
        return None
    if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
        raise ValueError("'turns' is not a list of strings (the user's messages)")
    return [m for text in turns for m in ({"role": "user", "content": text}, {"role": "assistant", "content": ""})]


def parse_record(record: dict, data_format: str = "auto") -> Conversation:
    """One record in any supported shape (or the forced ``data_format``) -> Conversation; ValueError says what is wrong."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    wanted = FORMATS[data_format]
    if wanted == "conversations" or (wanted is None and "conversations" in record):
        raw, role_key, text_key = record.get("conversations"), "from", "value"
    elif wanted == "messages" or (wanted is None and "messages" in record):
        raw, role_key, text_key = record.get("messages"), "role", "content"
    elif wanted == "turns" or (wanted is None and "turns" in record):
        raw, role_key, text_key = _question_turns(record.get("turns")), "role", "content"
    else:
        raise ValueError(
            "no 'conversations' (Daring-Anteater/ShareGPT), 'messages' (OpenAI) or 'turns' (MT-Bench) field"
        )
    if raw is None:
        raise ValueError(f"no '{wanted}' field, which the forced format {data_format!r} reads")
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
            raise ValueError(
                f"turn {position} has unknown role {role_name!r} (known: {', '.join(sorted(ROLE_ALIASES))})"
            )
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
    conversation_id = str(
        record.get("conversation_id") or record.get("id") or record.get("question_id") or content_id(system, turns)
    )
    extra = {k: record[k] for k in ("finish_reasons", "truncated") if k in record}  # a regenerated record's
    return Conversation(conversation_id, turns, system, str(record.get("category") or ""), extra)


def cache_dir() -> Path:
    return paths.data_cache()


def input_files(spec: str, split: str = "train") -> list[tuple[str, Path]]:
    """The files a dataset spec names, as (origin, local path): origin is the S3 URI or the path itself."""
    from spectrain import s3

    if spec in ("", EMBEDDED):
        path = embedded_path(split)
        return [(str(path), path)]
    if s3.is_s3(spec):
        local = cache_dir() / "s3" / hashlib.sha1(spec.encode()).hexdigest()[:16]
        files = s3.download(spec, local)
        location = s3.S3Uri.parse(spec)
        base = location.key if location.key.endswith("/") or len(files) > 1 else location.key.rsplit("/", 1)[0] + "/"
        pairs = [(f"s3://{location.bucket}/{base}{f.relative_to(local).as_posix()}", f) for f in files]
        if [origin for origin, _ in pairs] == [spec]:
            return pairs  # a single key named explicitly is read whatever its name (jsonl by default)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise SpectrainError(
                f"no such file or folder: {spec}",
                where="dataset",
                fix="pass a .jsonl/.json/.parquet file, a folder of them, an s3:// URI, "
                "hf:<datasets id>, or 'embedded'",
            )
        if not path.is_dir():
            return [(str(path), path)]  # a file named explicitly is read whatever its name (jsonl by default)
        pairs = [(str(f), f) for f in sorted(p for p in path.rglob("*") if p.is_file())]
    data = [(origin, f) for origin, f in pairs if f.suffix in DATA_SUFFIXES]
    if not data:
        raise SpectrainError(
            f"no {'/'.join(DATA_SUFFIXES)} file in {spec}",
            where="dataset",
            fix="point at a data file or a folder holding some",
        )
    return data


def _records(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """(line or record number, record, or None and the reason it cannot be read) of one file."""
    if path.suffix == ".parquet":
        import pyarrow.parquet

        for number, record in enumerate(pyarrow.parquet.read_table(path).to_pylist(), start=1):
            yield number, record, None
        return
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if path.suffix == ".json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            yield exc.lineno, None, f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
            return
        if isinstance(records, dict) and isinstance(records.get("data"), list):
            records = records["data"]
        if not isinstance(records, list):
            yield 1, None, 'a .json dataset must be a list of records (or {"data": [...]})'
            return
        for number, record in enumerate(records, start=1):
            yield number, record, None
        return
    lines = text.split("\n")
    last = len(lines)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line), None
        except json.JSONDecodeError as exc:
            ending = " (a truncated last line: was the writer interrupted?)" if number >= last - 1 else ""
            yield number, None, f"not valid JSON ({exc.msg} at column {exc.colno}){ending}"


def _hf_records(spec: str) -> tuple[str, Iterator[tuple[int, Any, str | None]]]:
    """Rows of a Hugging Face dataset: hf:owner/name[:split] (the hub) or hf:/a/local/dataset/dir."""
    name, split = spec[3:], "train"
    if ":" in name and "/" not in name.rsplit(":", 1)[1]:
        name, split = name.rsplit(":", 1)
    try:
        import datasets
    except ImportError as exc:
        raise SpectrainError(
            "reading hf: datasets needs the `datasets` package",
            where=spec,
            fix="run in the serve or train environment (or pip install datasets)",
        ) from exc
    try:
        local = Path(name).expanduser()
        if (local / "dataset_info.json").exists() or (local / "state.json").exists():
            loaded = datasets.load_from_disk(str(local))  # written by Dataset.save_to_disk
            loaded = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        else:
            loaded = datasets.load_dataset(name, split=split)
    except Exception as exc:  # the hub, auth and file errors of datasets are many; all mean "cannot load"
        raise SpectrainError(
            f"cannot load the Hugging Face dataset {name!r} (split {split!r}): {exc}",
            where=spec,
            fix="check the id and split, HF_TOKEN for gated sets, or HF_DATASETS_OFFLINE",
        ) from exc
    return f"{spec}", ((number, row, None) for number, row in enumerate(loaded, start=1))


def heldout_chats(spec: str, num_prompts: int = 0) -> list[tuple[Conversation, list[dict[str, str]]]]:
    """The held-out prompts as chat messages: an optional system prompt + each conversation's first user turn.

    One function for the evaluate step's replay and the vLLM cross-check, so both measure the same prompts.
    ``num_prompts``: the first N (0: all).
    """
    chats = []
    for conversation in read_conversations(spec, split="heldout"):
        system = [{"role": "system", "content": conversation.system}] if conversation.system else []
        chats.append((conversation, system + [{"role": "user", "content": conversation.prompts[0]}]))
    return chats[:num_prompts] if num_prompts else chats


def read_conversations(
    spec: str, split: str = "train", skipped: list[SkippedLine] | None = None, data_format: str = "auto"
) -> Iterator[Conversation]:
    """Yield the valid conversations a dataset spec holds; collect what was skipped and why in ``skipped``.

    Without ``skipped`` the first bad record raises a SpectrainError naming file, line and reason.
    """
    if data_format not in FORMATS:
        raise SpectrainError(f"unknown data format {data_format!r}", where="format", fix=f"use one of {list(FORMATS)}")
    if str(spec).startswith("hf:"):
        sources = [_hf_records(spec)]
    else:
        sources = [(origin, _records(path)) for origin, path in input_files(spec, split)]
    for origin, records in sources:
        for number, record, problem in records:
            try:
                if problem:
                    raise ValueError(problem)
                conversation = parse_record(record, data_format)
            except ValueError as exc:
                line = SkippedLine(origin, number, str(exc))
                if skipped is None:
                    raise SpectrainError(str(exc), where=line.where, fix="fix or remove that record") from exc
                skipped.append(line)
                continue
            conversation.source = f"{origin}:{number}"
            yield conversation


def append_jsonl(handle, record: dict) -> None:
    """Append one whole line and make it durable, so a crash never leaves half a record behind."""
    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


def dataset_fingerprint(spec: str, split: str = "train") -> str:
    """Content hash of every file a dataset spec names (a hub dataset: its spec, the hub versions it)."""
    if str(spec).startswith("hf:"):
        return spec
    files = input_files(spec, split)
    if len(files) == 1:
        return fingerprint(files[0][1])
    digest = hashlib.sha256("\n".join(f"{origin} {fingerprint(path)}" for origin, path in files).encode())
    return "sha256:" + digest.hexdigest()[:16]


def fingerprint(path: str | Path) -> str:
    """Content hash of a data file: which exact data a model was trained or evaluated on."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()[:16]
