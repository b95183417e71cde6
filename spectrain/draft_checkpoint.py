"""The trained draft as an artifact: modelopt's state and the draft's own weights, restored onto the base model.

A draft is worthless without its base, and a base is tens of GB, so the train step's artifact holds only what
training produced: the draft module's tensors (``draft_weights.safetensors``) and modelopt's record of how the base
was converted (``modelopt_state.pth``), next to ``train_result.json``, which names the base and its identity.
evaluate and export load the base from the model cache (a PVC on a cluster) and restore the draft onto it the way
modelopt documents it (``mto.restore_from_modelopt_state``, then the weights: modelopt/torch/opt/conversion.py).

Only the train environment (torch, transformers, modelopt) imports this module.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

from spectrain.drafts import TRAIN_RESULT
from spectrain.errors import SpectrainError

MODELOPT_STATE = "modelopt_state.pth"
DRAFT_WEIGHTS = "draft_weights.safetensors"
# Where modelopt puts each mode's draft in the converted model; its tensors are named under these prefixes.
DRAFT_MODULES = {"eagle3": "eagle_module", "medusa": "medusa_heads", "dflash": "dflash_module"}
HEAD_PREFIXES = tuple(DRAFT_MODULES.values())
FILES = (MODELOPT_STATE, DRAFT_WEIGHTS, TRAIN_RESULT)  # the draft as an artifact: what register logs, warm starts read
LINEAGE = "lineage.json"  # beside a draft fetched from the registry to warm-start from: which version it is
OFFLINE_FLAGS = ("eagle_offline", "dflash_offline")  # modelopt's "the base has no decoder layers" switches


def fetch_files(source: str, destination: Path) -> list[str]:
    """The draft's files (and the lineage of one fetched from the registry) from the folder or s3:// prefix
    ``source`` into ``destination``, not the Trainer's checkpoint-N folders beside them; the names fetched."""
    from spectrain import s3

    destination.mkdir(parents=True, exist_ok=True)
    wanted = (*FILES, LINEAGE)
    if s3.is_s3(source):
        prefix = source.rstrip("/") + "/"
        there = {o["key"][len(s3.S3Uri.parse(prefix).key) :] for o in s3.list_objects(prefix)}  # keys below it
        names = [name for name in wanted if name in there]
        for name in names:
            s3.download(prefix + name, destination)
        return names
    names = [name for name in wanted if (Path(source) / name).is_file()]
    for name in names:
        shutil.copy2(Path(source) / name, destination / name)
    return names


def draft_state_dict(model) -> dict:
    """The draft module's weights and buffers: everything training changes (checked, not assumed), whole.

    Under FSDP2 each process holds a shard of every tensor: every process must call this (each sharded tensor is
    gathered in turn, the same order everywhere), and all get the whole draft.
    """
    state = {}
    for name, value in sorted(model.state_dict().items()):
        if name.startswith(HEAD_PREFIXES):
            value = value.full_tensor() if hasattr(value, "full_tensor") else value  # a DTensor shard: gathered
            state[name] = value.detach().contiguous()
    outside = [n for n, p in model.named_parameters() if p.requires_grad and n not in state]
    if outside:
        raise RuntimeError(f"trainable parameters outside the draft module: {outside[:3]}")
    return state


def with_offline(state: dict, offline: bool) -> dict:
    """``state`` (mto.modelopt_state) converting a base with its decoder layers (``offline`` False) or without.

    The draft's weights do not depend on it: modelopt's offline model is the same draft over a base whose layers
    were dropped (plugins/hf_eagle.py, hf_dflash.py ``modify``), so a draft trained from the hidden-state cache is
    restored online for evaluation, and export restores it offline, with no base layers loaded at all.
    """
    state = copy.deepcopy(state)
    for _mode, entry in state["modelopt_state_dict"]:
        for flag in OFFLINE_FLAGS:
            if flag in entry.get("config", {}):
                entry["config"][flag] = offline
    return state


def save(model, directory: Path, state: dict | None = None, tensors: dict | None = None) -> int:
    """Write the draft of the converted ``model`` (its ``tensors`` when already gathered, and ``state``, else the
    model's own modelopt state, made online) into ``directory``; returns the bytes written."""
    import modelopt.torch.opt as mto
    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    torch.save(with_offline(state or mto.modelopt_state(model), False), directory / MODELOPT_STATE)
    tensors = {k: v.to("cpu") for k, v in (tensors if tensors is not None else draft_state_dict(model)).items()}
    save_file(tensors, str(directory / DRAFT_WEIGHTS), metadata={"format": "pt"})
    return sum((directory / name).stat().st_size for name in (MODELOPT_STATE, DRAFT_WEIGHTS))


def is_draft_checkpoint(directory: str | Path) -> bool:
    return (Path(directory) / MODELOPT_STATE).is_file() and (Path(directory) / DRAFT_WEIGHTS).is_file()


def trained_on(directory: str | Path) -> dict:
    """What train_result.json says of the base the draft was trained on ({} when it says nothing)."""
    try:
        result = json.loads((Path(directory) / TRAIN_RESULT).read_text())
    except (OSError, ValueError):
        return {}
    return result.get("base_identity", {})


def check_base(directory: str | Path, base_path: str) -> None:
    """Refuse to put a draft onto another base than the one it was trained on (same shapes are not enough:
    a draft imitates one set of weights)."""
    from spectrain.models import base_model_identity

    recorded = trained_on(directory).get("base_model_revision")
    if not recorded:
        return
    found = base_model_identity(base_path)["base_model_revision"]
    if found != recorded:
        raise SpectrainError(
            f"the draft was trained on the base with revision {recorded}, and {base_path} is {found}",
            where=f"{directory}/{TRAIN_RESULT}: base_identity",
            fix="pass the base model the draft was trained on (base_model), or train a draft for this one",
        )


def restore(model, directory: str | Path, *, offline: bool = False):
    """Convert ``model`` (the freshly loaded base) as the draft was converted, then load the draft's weights;
    ``offline``: ``model`` was loaded without decoder layers (modelopt's offline loader)."""
    import modelopt.torch.opt as mto
    import torch
    from safetensors.torch import load_file

    directory = Path(directory)
    if not is_draft_checkpoint(directory):
        raise SpectrainError(
            f"no trained draft in {directory} (it needs {MODELOPT_STATE} and {DRAFT_WEIGHTS})",
            where=str(directory),
            fix="pass the train_heads step's output (draft_checkpoint)",
        )
    state = torch.load(directory / MODELOPT_STATE, map_location="cpu", weights_only=False)
    model = mto.restore_from_modelopt_state(model, with_offline(state, offline))
    weights = load_file(str(directory / DRAFT_WEIGHTS))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing_draft = [k for k in missing if k.startswith(HEAD_PREFIXES)]
    if unexpected or missing_draft:
        raise SpectrainError(
            f"{directory / DRAFT_WEIGHTS} does not fit the draft modelopt rebuilt "
            f"(missing {missing_draft[:3]}, unexpected {unexpected[:3]})",
            where=str(directory),
            fix="pass the base model the draft was trained on, with the same spectrain and modelopt versions",
        )
    return model


def load(directory: str | Path, base_path: str, placement, *, layers: bool = True):
    """The base at ``base_path`` on ``placement``, with the draft in ``directory`` restored onto it.

    ``layers`` False loads the base without its decoder layers (modelopt's ``load_vlm_or_llm`` for offline
    training: embeddings, final norm, lm_head), which is all an export needs of a base of any size.
    """
    from spectrain.models import load_base

    check_base(directory, base_path)
    base = load_base(base_path, placement, layers=layers)
    model = restore(base, directory, offline=not layers)
    return model.to(placement.torch_device()).eval()
