"""Step configs are documented dataclasses; CLI flags, JSON files and KFP parameters derive from them."""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from spectrain.errors import SpectrainError

C = TypeVar("C")


def field(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field whose help text feeds ``--help``, READMEs and KFP docs."""
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def _base_type(annotation: Any) -> Any:
    """`int | None` -> int; `list[str]` -> list; plain types unchanged."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    return origin or annotation


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(cls: type, name: str, value: Any, where: str) -> Any:
    kind = _base_type(_hints(cls)[name])
    if value is None:
        return None
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if kind in (int, float, str):
            if kind is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return kind(value)
        if kind is list:
            if isinstance(value, str):
                value = json.loads(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
            return list(value)
        if kind is dict:
            return dict(json.loads(value) if isinstance(value, str) else value)
    except (TypeError, ValueError) as exc:
        raise SpectrainError(
            f"field '{name}' expects {getattr(kind, '__name__', kind)}, got {value!r}",
            where=where,
            fix=f"see the help of '{name}': {help_of(cls, name)}",
        ) from exc
    return value


def help_of(cls: type, name: str) -> str:
    return next(f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == name)


def from_dict(cls: type[C], values: dict[str, Any], where: str = "config") -> C:
    """Build ``cls`` from a mapping, naming unknown or mistyped fields."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SpectrainError(
            f"unknown field(s) {', '.join(unknown)} for {cls.__name__}",
            where=where,
            fix=f"valid fields are: {', '.join(sorted(known))}",
        )
    config = cls(**{k: _coerce(cls, k, v, where) for k, v in values.items()})
    validate = getattr(config, "validate", None)
    if validate:
        validate()
    return config


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON config file as a dict; bad JSON is reported with file and line."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise SpectrainError(f"not valid JSON: {exc.msg}", where=f"{path}:{exc.lineno}", fix="fix the JSON syntax") from exc
    except OSError as exc:
        raise SpectrainError(f"cannot read the config file ({exc.strerror})", where=str(path)) from exc


def load_file(cls: type[C], path: str | Path) -> C:
    return from_dict(cls, read_json(path), where=str(path))


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--flag`` per field, with the field's help and default."""
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kind = _base_type(_hints(cls)[f.name])
        flag = "--" + f.name.replace("_", "-")
        text = f.metadata.get("help", "")
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{text} (default: {default})")
        else:
            metavar = {int: "INT", float: "FLOAT", list: "A,B,..", dict: "JSON"}.get(kind, "TEXT")
            parser.add_argument(flag, dest=f.name, default=None, metavar=metavar, help=f"{text} (default: {default!r})")


def from_args(cls: type[C], args: argparse.Namespace, base: dict[str, Any] | None = None) -> C:
    """Fields given on the command line override ``base`` (e.g. a JSON config file)."""
    values = dict(base or {})
    for f in dataclasses.fields(cls):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
    return from_dict(cls, values, where="command line")
