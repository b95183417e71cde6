"""Warm start: a run continues a trained draft (an earlier run's train_heads output) on its own data and budget.

Only what the draft *is* must match: the mode, the base it imitates (revision and chat template), its vocabulary
and its architecture. The training settings (data, steps, learning rate, max_length) are the new run's own. A
difference is refused before any weight is loaded, naming the setting, the parent's value and this run's.

The parent's draft vocabulary (EAGLE-3's d2t) and DFlash mask token are taken as they are, not chosen again from
the new data: the weights were trained for them. A setting this run left to the base (draft_vocab_size -1) takes
the parent's value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from spectrain import draft_checkpoint, s3
from spectrain.components.train_heads.config import TrainHeadsConfig
from spectrain.drafts import TRAIN_RESULT
from spectrain.errors import SpectrainError

WHERE = "train_heads.warm_start"
# The settings that shape the draft's weights, per mode: a parent must have been trained with the same.
ARCHITECTURE = {
    "eagle3": (
        "eagle_num_layers",
        "eagle_intermediate_size",
        "eagle_num_attention_heads",
        "eagle_num_key_value_heads",
        "eagle_head_dim",
        "draft_vocab_size",
    ),
    "medusa": ("medusa_num_heads", "medusa_num_layers"),
    "dflash": ("dflash_block_size", "dflash_num_layers"),
}


@dataclass(frozen=True)
class Parent:
    directory: Path  # the parent's train_heads output (modelopt state, draft weights, train_result.json)
    result: dict  # its train_result.json
    lineage: dict  # what the registry said of it ({} for a folder given directly)

    @property
    def mask_token_id(self) -> int | None:
        return self.result.get("dflash_mask_token_id")

    def d2t(self):
        """The parent's reduced draft vocabulary (EAGLE-3's d2t buffer), or None where it has the full one."""
        from safetensors import safe_open

        with safe_open(str(self.directory / draft_checkpoint.DRAFT_WEIGHTS), "pt") as weights:
            return weights.get_tensor("eagle_module.d2t") if "eagle_module.d2t" in weights.keys() else None

    def describe(self) -> dict:
        """What the result and the registry record of the parent: where it came from and what it had seen."""
        return {
            "from": str(self.directory),
            "steps": self.result.get("steps"),
            "examples": self.result.get("examples"),
            "data_fingerprint": self.result.get("data_fingerprint"),
            **self.lineage,
        }


def architecture(config: TrainHeadsConfig) -> dict:
    """The settings of ``config`` that shape its draft's weights (train_result.json records them)."""
    return {name: getattr(config, name) for name in ARCHITECTURE[config.mode]}


def fetch(source: str) -> Path:
    """The parent's folder: ``source`` itself, or its s3:// copy brought into this machine's temporary folder
    (not into the run's output, which is the new draft's artifact), where every rank of the run reads it."""
    if s3.is_s3(source):
        local = Path(tempfile.gettempdir()) / f"spectrain-warm-start-{hashlib.sha256(source.encode()).hexdigest()[:16]}"
        draft_checkpoint.fetch_files(source, local)  # what is already there whole is not fetched again
        return local
    return Path(source)


def parent_of(config: TrainHeadsConfig) -> Parent:
    """The draft ``config.warm_start`` names, read and checked to be a draft this run can continue."""
    directory = fetch(config.warm_start)
    if not draft_checkpoint.is_draft_checkpoint(directory) or not (directory / TRAIN_RESULT).is_file():
        raise SpectrainError(
            f"no trained draft in {config.warm_start} (it needs {draft_checkpoint.MODELOPT_STATE}, "
            f"{draft_checkpoint.DRAFT_WEIGHTS} and {TRAIN_RESULT})",
            where=WHERE,
            fix="pass an earlier run's train_heads output folder (or its s3:// copy), or 'champion' to `spectrain "
            "run`, which fetches the registered champion's",
        )
    result = json.loads((directory / TRAIN_RESULT).read_text())
    lineage_file = directory / draft_checkpoint.LINEAGE
    lineage = json.loads(lineage_file.read_text()) if lineage_file.is_file() else {}
    return Parent(directory, result, lineage)


def differences(parent: Parent, config: TrainHeadsConfig, identity: dict) -> list[str]:
    """How the parent differs from what this run would train (mode, base, chat template, architecture)."""
    found = []
    if parent.result.get("mode") != config.mode:
        found.append(f"mode: the parent is a {parent.result.get('mode')} draft, this run trains {config.mode}")
        return found  # the rest compares settings of different drafts
    recorded = parent.result.get("base_identity", {})
    for key, what in (("base_model_revision", "base model revision"), ("chat_template_sha256", "chat template")):
        if recorded.get(key) != identity.get(key):
            found.append(f"{what}: {recorded.get(key) or 'not recorded'} for the parent, {identity.get(key)} here")
    shaped = parent.result.get("draft_architecture", {})
    for name, value in architecture(config).items():
        if name in shaped and shaped[name] != value:
            found.append(f"{name}: {shaped[name]} for the parent, {value} here")
    if config.mode == "dflash" and config.dflash_mask_token_id not in (-1, parent.mask_token_id):
        found.append(f"dflash_mask_token_id: {parent.mask_token_id} for the parent, {config.dflash_mask_token_id} here")
    return found


def inherit(config: TrainHeadsConfig, parent: Parent) -> TrainHeadsConfig:
    """``config`` with what it left to the base (draft_vocab_size -1) taken from the parent instead."""
    shaped = parent.result.get("draft_architecture", {})
    if config.draft_vocab_size == -1 and "draft_vocab_size" in shaped:
        return dataclasses.replace(config, draft_vocab_size=shaped["draft_vocab_size"])
    return config


def check(parent: Parent, config: TrainHeadsConfig, identity: dict) -> None:
    found = differences(parent, config, identity)
    if found:
        raise SpectrainError(
            f"the draft to start from ({parent.directory}) is not one this run can continue: " + "; ".join(found),
            where=WHERE,
            fix="start from a draft of the same mode, base model and draft shape (the training settings may differ), "
            "or leave warm_start empty to train a new draft",
        )


def load_weights(model, parent: Parent, mode: str) -> None:
    """Put the parent's draft weights into the freshly converted ``model`` (every draft tensor, none left out)."""
    from safetensors.torch import load_file

    from spectrain.components.train_heads.draft import draft_module

    prefix = f"{draft_checkpoint.DRAFT_MODULES[mode]}."
    weights = {
        name[len(prefix) :]: tensor
        for name, tensor in load_file(str(parent.directory / draft_checkpoint.DRAFT_WEIGHTS)).items()
        if name.startswith(prefix)
    }
    try:
        draft_module(model, mode).load_state_dict(weights, strict=True)
    except RuntimeError as error:  # a name or a shape of another draft
        raise SpectrainError(
            f"the weights of {parent.directory / draft_checkpoint.DRAFT_WEIGHTS} do not fit this run's draft: "
            + str(error).splitlines()[0],
            where=WHERE,
            fix="start from a draft trained with the same draft settings, spectrain and modelopt versions",
        ) from error
