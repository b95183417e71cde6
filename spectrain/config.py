"""Step configs are documented dataclasses; CLI flags, JSON files and KFP parameters derive from them."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

from spectrain.checks import Rule
from spectrain.errors import SpectrainError

C = TypeVar("C", bound="DataclassInstance")


def field(default: Any, help: str, check: Rule | None = None, **kwargs: Any) -> Any:
    """A dataclass field whose help text feeds ``--help``, READMEs and KFP docs; ``check`` is the rule its
    value must satisfy (spectrain.checks), applied whenever a config is built."""
    metadata = {"help": help, "check": check}
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def parse_bool(value: Any) -> bool:
    """The one boolean parser of the CLI, config files and pipeline arguments: a typo is an error, never False."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        if value.strip().lower() in TRUE_WORDS:
            return True
        if value.strip().lower() in FALSE_WORDS:
            return False
    raise ValueError(f"{value!r} is not a boolean")


def coerce(kind: type, value: Any) -> Any:
    """``value`` (text from a command line, or a JSON/YAML value) as ``kind``; ValueError/TypeError if it is not one."""
    if kind is bool:
        return parse_bool(value)
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(value)
        return int(value)
    if kind is float:
        if isinstance(value, bool):
            raise ValueError(value)
        return float(value)
    if kind is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError(value)
        return str(value)
    if kind is list:
        if isinstance(value, str):
            value = json.loads(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ValueError(value)
        return list(value)
    if kind is dict:
        value = json.loads(value) if isinstance(value, str) else value
        if not isinstance(value, dict):
            raise ValueError(value)
        return dict(value)
    return value


def section(cls: type) -> str:
    """The name a config's fields are reported under: TrainHeadsConfig -> train_heads."""
    name = cls.__name__.removesuffix("Config")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def rule_problem(label: str, value: Any, rule: Rule | None) -> str | None:
    """'<label> = <value> is not allowed (<why>): expected <allowed>, e.g. <example>', or None if it is."""
    if rule is None:
        return None
    why = rule.problem(value)
    if why is None:
        return None
    return (
        f"{label} = {value!r} is not allowed{f' ({why})' if why else ''}: expected {rule.allowed}, e.g. {rule.example}"
    )


def _base_type(annotation: Any) -> Any:
    """`int | None` -> int; `list[str]` -> list; plain types unchanged."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    return origin or annotation


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_type(cls: type, name: str) -> Any:
    """The plain type of field ``name`` of config class ``cls`` (bool, int, float, str, list, dict)."""
    return _base_type(_hints(cls)[name])


def _coerce(cls: type, name: str, value: Any, where: str) -> Any:
    kind = _base_type(_hints(cls)[name])
    if value is None:
        return None
    try:
        return coerce(kind, value)
    except (TypeError, ValueError) as exc:
        raise SpectrainError(
            f"field '{name}' expects {getattr(kind, '__name__', kind)}, got {value!r}",
            where=where,
            fix=f"see the help of '{name}': {help_of(cls, name)}",
        ) from exc


def default_of(cls: type, name: str) -> Any:
    """The default of field ``name`` of config class ``cls`` (a fresh copy for a list or dict)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc,operator]


def check_of(cls: type, name: str) -> Rule | None:
    return next((f.metadata.get("check") for f in dataclasses.fields(cls) if f.name == name), None)


def check_fields(config: Any, where: str) -> None:
    """Every field against its rule; all problems in one error."""
    cls = type(config)
    problems = [
        p
        for f in dataclasses.fields(cls)
        if (p := rule_problem(f"{section(cls)}.{f.name}", getattr(config, f.name), f.metadata.get("check")))
    ]
    if problems:
        raise SpectrainError(
            "\n  ".join(problems),
            where=where,
            fix="change the value(s) above; `spectrain step <name> --help` describes each field",
        )


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
    check_fields(config, where)
    validate = getattr(config, "validate", None)
    if validate:
        validate()
    return config


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


SECRET_WORDS = ("key", "token", "secret", "password", "credential")


def is_secret(name: str) -> bool:
    """Whether a setting's name says it holds a secret (api_key, hf_token, ...): never logged or recorded."""
    return any(word in name.lower() for word in SECRET_WORDS)


def public_dict(config: Any) -> dict[str, Any]:
    """``config`` as a dict with every secret-named field that is set replaced by '<redacted>'."""
    return {k: ("<redacted>" if is_secret(k) and v else v) for k, v in to_dict(config).items()}


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON config file as a dict; bad JSON is reported with file and line."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise SpectrainError(
            f"not valid JSON: {exc.msg}", where=f"{path}:{exc.lineno}", fix="fix the JSON syntax"
        ) from exc
    except OSError as exc:
        raise SpectrainError(f"cannot read the config file ({exc.strerror})", where=str(path)) from exc


def load_file(cls: type[C], path: str | Path) -> C:
    return from_dict(cls, read_json(path), where=str(path))


def argparse_help(text: str) -> str:
    """``text`` as argparse's help: argparse %-formats it (for %(default)s), so a literal percent sign is doubled."""
    return text.replace("%", "%%")


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--flag`` per field, with the field's help and default."""
    for f in dataclasses.fields(cls):
        default = default_of(cls, f.name)
        kind = _base_type(_hints(cls)[f.name])
        flag = "--" + f.name.replace("_", "-")
        text = f.metadata.get("help", "")
        if kind is bool:
            parser.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=argparse_help(f"{text} (default: {default})"),
            )
        else:
            metavar = {int: "INT", float: "FLOAT", list: "A,B,..", dict: "JSON"}.get(kind, "TEXT")
            parser.add_argument(
                flag, dest=f.name, default=None, metavar=metavar, help=argparse_help(f"{text} (default: {default!r})")
            )


def from_args(cls: type[C], args: argparse.Namespace, base: dict[str, Any] | None = None) -> C:
    """Fields given on the command line override ``base`` (e.g. a JSON config file)."""
    values = dict(base or {})
    for f in dataclasses.fields(cls):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
    return from_dict(cls, values, where="command line")
