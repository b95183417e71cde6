"""The pipeline's parameters checked before anything starts, by the rules of the step config fields they feed.

`spectrain run`, `submit` and `schedule` call :func:`validate` on their arguments, so a typo or an
impossible value is reported within seconds, naming the parameter, instead of after vLLM has started.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from spectrain.components.evaluate.config import EvaluateConfig, VllmCrosscheckConfig
from spectrain.components.export.config import ExportConfig
from spectrain.components.regenerate.config import RegenerateConfig
from spectrain.components.register.config import RegisterConfig, WarmStartConfig
from spectrain.components.serve.config import ServeConfig
from spectrain.components.train_heads.config import TrainHeadsConfig, training_argument_names
from spectrain import checks
from spectrain.config import check_of, coerce, default_of, field_type, help_of, rule_problem
from spectrain.drafts import MODES, RETIRED_MODES, max_draft_tokens, too_many_draft_tokens
from spectrain.errors import SpectrainError

# pipeline parameter -> the step config field it becomes (its type and rule apply to the parameter too)
FEEDS: dict[str, tuple[type, str]] = {
    "base_model": (ServeConfig, "base_model"),
    "dataset": (RegenerateConfig, "dataset"),
    "eval_dataset": (EvaluateConfig, "dataset"),
    "serve_mode": (ServeConfig, "mode"),
    "serve_endpoint_url": (ServeConfig, "endpoint_url"),
    "serve_replicas": (ServeConfig, "replicas"),
    "serve_max_model_len": (ServeConfig, "max_model_len"),
    "regenerate_max_tokens": (RegenerateConfig, "max_tokens"),
    "regenerate_concurrency": (RegenerateConfig, "concurrency"),
    "regenerate_limit": (RegenerateConfig, "limit"),
    "train_max_steps": (TrainHeadsConfig, "max_steps"),
    "train_max_minutes": (TrainHeadsConfig, "max_minutes"),
    "train_num_epochs": (TrainHeadsConfig, "num_epochs"),
    "train_lr": (TrainHeadsConfig, "lr"),
    "train_batch_size": (TrainHeadsConfig, "batch_size"),
    "train_max_length": (TrainHeadsConfig, "max_length"),
    "train_draft_vocab_size": (TrainHeadsConfig, "draft_vocab_size"),
    "train_hidden_state_cache": (TrainHeadsConfig, "hidden_state_cache"),
    "num_draft_tokens": (EvaluateConfig, "num_draft_tokens"),
    "eval_num_prompts": (EvaluateConfig, "num_prompts"),
    "eval_max_new_tokens": (EvaluateConfig, "max_new_tokens"),
    "export_dtype": (ExportConfig, "dtype"),
    "register_model_name": (RegisterConfig, "registered_model_name"),
    "mlflow_tracking_uri": (RegisterConfig, "tracking_uri"),
    "register_min_acceptance_length": (RegisterConfig, "min_acceptance_length"),
    "node_selector": (ServeConfig, "node_selector"),
    "tolerations": (ServeConfig, "tolerations"),
    "model_cache_pvc": (ServeConfig, "model_cache_pvc"),
    "checkpoint_root": (TrainHeadsConfig, "checkpoint_uri"),
    "warm_start": (WarmStartConfig, "source"),
}

# A parameter of one step is named with that step's prefix; these few describe the run as a whole
# (what to train on, which drafts, where things live) and are used by several steps.
PREFIXES = {
    ServeConfig: "serve_",
    RegenerateConfig: "regenerate_",
    TrainHeadsConfig: "train_",
    EvaluateConfig: "eval_",
    ExportConfig: "export_",
    RegisterConfig: "register_",
}
SHARED = {
    "base_model",
    "dataset",
    "modes",
    "num_draft_tokens",
    "mlflow_tracking_uri",
    "node_selector",
    "tolerations",
    "model_cache_pvc",
    "checkpoint_root",
    "warm_start",
}


# Where the pipeline's default differs from the field it feeds, and why. A serve step run alone defaults to
# 'local' (vLLM as a process next to it); in the pipeline each step is a pod that ends with the step, so the
# server must live outside the serve step: its own Deployment + Service. `spectrain run` (kfp.local, every
# step on one machine) asks for 'local' itself (cli/local.py).
PIPELINE_DEFAULTS: dict[str, Any] = {"serve_mode": "cluster"}
# Serving modes that cannot work when every step is its own pod.
SINGLE_MACHINE_SERVE_MODES = {
    "local": "starts vLLM inside the serve step's own pod, which ends with that step: regenerate, train and "
    "evaluate, each in a pod of its own, would find nothing at its 127.0.0.1"
}


def default(name: str) -> Any:
    """The pipeline's default of parameter ``name``: the default of the step config field it feeds (one truth),
    unless :data:`PIPELINE_DEFAULTS` says otherwise."""
    return PIPELINE_DEFAULTS[name] if name in PIPELINE_DEFAULTS else default_of(*FEEDS[name])


# parameters that feed no single field: their own rule (None: the type is all there is to check)
OWN_RULES: dict[str, checks.Rule | None] = {
    "modes": checks.each_one_of(*MODES, retired=RETIRED_MODES),
    "serve_options": None,  # checked field by field against ServeConfig below
    "regenerate_options": None,  # against RegenerateConfig
    "train_options": None,  # against TrainHeadsConfig
    "eval_options": None,  # against EvaluateConfig
    "eval_vllm_crosscheck": None,
    "eval_vllm_crosscheck_options": None,  # against VllmCrosscheckConfig
    "export_trtllm_engine": None,
}
OPTIONS = {
    "serve_options": ServeConfig,
    "regenerate_options": RegenerateConfig,
    "train_options": TrainHeadsConfig,
    "eval_options": EvaluateConfig,
    "eval_vllm_crosscheck_options": VllmCrosscheckConfig,
}
# Fields of an *_options mapping the pipeline sets itself, from other parameters or its own artifacts.
SET_BY_PIPELINE = {
    "serve_options": {
        "base_model",
        "run_id",
        "image",
        "node_selector",
        "tolerations",
        "model_cache_pvc",
        "host",
        "port",
        "api_key",  # the spectrain-vllm Secret's VLLM_API_KEY
    },
    "regenerate_options": {"endpoint", "output", "checkpoint_uri", "heldout_output"},
    "train_options": {
        "base_model",
        "data",
        "output_dir",
        "mode",
        "checkpoint_uri",
        "resume_from_checkpoint",
        "warm_start",  # the warm_start parameter, fetched by its own step
    },
    "eval_options": {"base_model", "checkpoint", "mode", "output_dir", "extra_dataset"},
    "eval_vllm_crosscheck_options": {
        "base_model",
        "draft_dir",
        "mode",
        "dataset",
        "num_prompts",
        "num_draft_tokens",
        "max_new_tokens",
        "expected_acceptance_length",
        "output",
    },
}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def cluster_problems(arguments: dict[str, Any], label=flag) -> list[str]:
    """What cannot work on Kubernetes, where every step is a pod of its own (``arguments``: every parameter's
    effective value)."""
    mode = arguments.get("serve_mode")
    if mode in SINGLE_MACHINE_SERVE_MODES:
        return [
            f"{label('serve_mode')} = {mode!r} {SINGLE_MACHINE_SERVE_MODES[mode]}; expected 'cluster' (the "
            f"default: a vLLM Deployment + Service for the run) or 'external' with {label('serve_endpoint_url')}"
        ]
    return []


# The Python type of each parameter type of a pipeline spec (KFP's IR: the compiled YAML, the function's own spec).
IR_TYPES: dict[str, type] = {
    "STRING": str,
    "NUMBER_INTEGER": int,
    "NUMBER_DOUBLE": float,
    "BOOLEAN": bool,
    "LIST": list,
    "STRUCT": dict,
}


def declared(root: dict[str, Any]) -> dict[str, dict]:
    """name -> {type, default, help} of a pipeline's parameters, read from its spec's ``root`` (a compiled
    package's first document, or the pipeline function's own spec): what `spectrain run` makes flags of and
    what `spectrain submit` checks a params file against."""
    found = {}
    for name, spec in root.get("inputDefinitions", {}).get("parameters", {}).items():
        kind = IR_TYPES.get(spec.get("parameterType", ""), object)
        default = spec.get("defaultValue")
        if kind is int and isinstance(default, float) and default.is_integer():  # the IR keeps numbers as doubles
            default = int(default)
        found[name] = {"type": kind, "default": default, "help": spec.get("description", "")}
    return found


def accepts(kind: type, value: Any) -> bool:
    """Whether a value read from YAML is of a parameter's type as it is (no coercion: a params file is typed)."""
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def validate(arguments: dict[str, Any], parameters: dict[str, dict], where: str, label=flag) -> dict[str, Any]:
    """``arguments`` coerced to each parameter's type and checked against its rule; every problem in one error.

    ``parameters``: name -> {"type": python type, "default": ..} (:func:`declared`).
    ``label`` names a parameter in messages (a flag on the command line, the key in a params file).
    Returns the coerced arguments.
    """
    problems: list[str] = []
    coerced: dict[str, Any] = {}
    for name, value in arguments.items():
        kind = parameters[name]["type"]
        try:
            coerced[name] = coerce(kind, value)
        except (TypeError, ValueError):
            problems.append(f"{label(name)} = {value!r} is not allowed: expected {_kind_name(kind)}")
            continue
        rule = check_of(*FEEDS[name]) if name in FEEDS else OWN_RULES.get(name)
        if problem := rule_problem(label(name), coerced[name], rule):
            problems.append(problem)
        if name in OPTIONS:
            problems += _options_problems(name, coerced[name], label)
    effective = {name: spec["default"] for name, spec in parameters.items()} | coerced
    problems += _cross_problems(effective, label)
    if problems:
        raise SpectrainError(
            "\n  ".join(problems),
            where=where,
            fix="change the value(s) above; `spectrain run --help` explains every parameter",
        )
    return coerced


def _kind_name(kind: type) -> str:
    return {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "text",
        list: "a list (A,B or a JSON list)",
        dict: "a JSON object",
    }.get(kind, kind.__name__)


def _options_problems(name: str, options: dict, label_of) -> list[str]:
    """Each key of an *_options mapping must be a field of its step's config, of that field's type and rule,
    and not one a parameter of its own sets: one value per setting, so no precedence rule to remember."""
    cls, label = OPTIONS[name], label_of(name)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    own = {field: parameter for parameter, (owner, field) in FEEDS.items() if owner is cls}
    problems = []
    for key, value in options.items():
        if key in own:
            problems.append(f"{label}: {key!r} has a parameter of its own: set {label_of(own[key])} instead")
            continue
        if key in SET_BY_PIPELINE[name]:
            problems.append(f"{label}: {key!r} is set by the pipeline itself: remove it")
            continue
        if key not in fields and "training_arguments" in fields and key in training_argument_names():
            problems.append(
                f"{label}: {key!r} is a field of transformers.TrainingArguments: pass it inside training_arguments, "
                f'e.g. \'{{"training_arguments": {{"{key}": {json.dumps(value)}}}}}\''
            )
            continue
        if key not in fields:
            problems.append(
                f"{label}: unknown key {key!r}: expected fields of `spectrain step` ({', '.join(sorted(fields))})"
            )
            continue
        kind = field_type(cls, key)
        try:
            value = coerce(kind, value)
        except (TypeError, ValueError):
            problems.append(
                f"{label}: {key} = {value!r} is not allowed: expected {_kind_name(kind)} ({help_of(cls, key)})"
            )
            continue
        if problem := rule_problem(f"{label}: {key}", value, fields[key].metadata.get("check")):
            problems.append(problem)
    return problems


def _cross_problems(arguments: dict[str, Any], label) -> list[str]:
    """Rules that tie several parameters together."""
    problems = []
    if arguments.get("serve_mode") == "external" and not arguments.get("serve_endpoint_url"):
        problems.append(
            f"{label('serve_endpoint_url')} is empty, but {label('serve_mode')} = 'external' needs the URL "
            f"of a running server, e.g. http://vllm.example:8000/v1"
        )
    modes, k, options = arguments.get("modes"), arguments.get("num_draft_tokens"), arguments.get("train_options")
    defaults = TrainHeadsConfig()
    trained = {"medusa_num_heads": defaults.medusa_num_heads, "dflash_block_size": defaults.dflash_block_size}
    trained |= {
        name: value for name, value in (options if isinstance(options, dict) else {}).items() if isinstance(value, int)
    }
    for mode in modes if isinstance(modes, list) else []:
        problem = too_many_draft_tokens(mode, trained, k) if isinstance(k, int) else None
        if problem:
            reason, setting = problem
            problems.append(
                f"{label('num_draft_tokens')} = {k}, but {reason}: expected at most "
                f"{max_draft_tokens(mode, trained)}, or {label('train_options')} '{json.dumps(setting)}'"
            )
    if isinstance(modes, list) and "dflash" in modes:
        block = trained["dflash_block_size"]
        length = arguments.get("train_max_length")
        if isinstance(block, int) and block > 0 and isinstance(length, int) and length % block:
            problems.append(
                f"{label('train_max_length')} = {length} is not a multiple of the DFlash block size {block}: "
                f"expected e.g. {-(-length // block) * block}"
            )
    return problems
