"""Offline hidden-state cache: training from it follows the online loss curve, and the checkpoint is complete."""

import json
import subprocess

import pytest
import torch
import transformers
from safetensors.torch import load_file

from spectrain.components.train_heads import hidden_cache
from spectrain.components.train_heads.config import TrainHeadsConfig
from spectrain.components.train_heads.train import run
from spectrain import devices, draft_checkpoint
from spectrain.draft_checkpoint import HEAD_PREFIXES
from spectrain.models import resolve_base_model

SETTINGS = {
    "eagle3": {"draft_vocab_size": 1024},
    "medusa": {"medusa_num_heads": 2},
    "dflash": {"dflash_block_size": 4},
}


def train(data, output, mode, **extra):
    # fp32: the comparisons below are of the cache against the online base, not of bf16 against fp32
    return run(
        TrainHeadsConfig(
            data=data,
            output_dir=str(output),
            mode=mode,
            max_steps=4,
            batch_size=2,
            max_length=96,
            training_arguments={"warmup_steps": 0, "logging_steps": 1},
            precision="fp32",
            **SETTINGS[mode],
            **extra,
        )
    )


def losses(result):
    return [entry["loss"] for entry in result["history"] if "loss" in entry]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["eagle3", "medusa", "dflash"])
def test_training_from_the_cache_follows_the_online_loss_curve(tiny_data, tmp_path, mode):
    online = train(tiny_data, tmp_path / "online", mode, hidden_state_cache=False)
    exact = train(
        tiny_data,
        tmp_path / "exact",
        mode,
        hidden_state_cache=True,
        hidden_state_cache_dtype="float32",
        hidden_state_cache_dir=str(tmp_path / "cache32"),
    )
    compact = train(tiny_data, tmp_path / "compact", mode, hidden_state_cache=True)

    # float32 cache: the same numbers the online base computes, so the same curve
    assert losses(exact) == pytest.approx(losses(online), rel=1e-4)
    # bfloat16 cache (the default): the same curve within rounding noise
    assert losses(compact) == pytest.approx(losses(online), rel=0.02)
    assert losses(online)[-1] < losses(online)[0]

    # the artifact is the draft, as online training writes it, and restores onto the untouched base
    saved = load_file(str(tmp_path / "exact" / draft_checkpoint.DRAFT_WEIGHTS))
    reference = load_file(str(tmp_path / "online" / draft_checkpoint.DRAFT_WEIGHTS))
    assert saved.keys() == reference.keys() and all(name.startswith(HEAD_PREFIXES) for name in saved)
    # the trained draft, not its initial weights (4 Adam steps of lr 1e-3 move them by ~4e-3; fp32 noise ~2e-5)
    assert all(torch.allclose(saved[n], reference[n], atol=1e-4) for n in saved)
    base_path = resolve_base_model("embedded")
    restored = draft_checkpoint.load(tmp_path / "exact", base_path, devices.cpu()).state_dict()
    base = load_file(f"{base_path}/model.safetensors")
    assert all(torch.equal(restored[name].to(tensor.dtype), tensor) for name, tensor in base.items())
    assert all(torch.equal(restored[name], tensor) for name, tensor in saved.items())

    # size on disk is reported; the default cache lives in output_dir only while training
    info = exact["hidden_state_cache"]
    # hidden (+ EAGLE-3's 3 aux layers and draft-vocab logits, DFlash's 3 target layers)
    width = {"eagle3": 576 * 4 + 1024, "medusa": 576, "dflash": 576 * 4}[mode]
    assert info["bytes_per_token"] == pytest.approx(width * 4, rel=0.05)
    assert compact["hidden_state_cache"]["bytes_per_token"] == pytest.approx(width * 2, rel=0.1)
    assert not (tmp_path / "compact" / "hidden-state-cache").exists()
    assert (tmp_path / "cache32" / "manifest.json").exists()


@pytest.mark.slow
def test_a_kept_cache_is_reused_and_a_stale_one_rebuilt(tiny_data, tmp_path, capsys):
    cache = tmp_path / "cache"
    train(tiny_data, tmp_path / "a", "medusa", hidden_state_cache=True, hidden_state_cache_dir=str(cache))
    built = json.loads((cache / "manifest.json").read_text())
    train(tiny_data, tmp_path / "b", "medusa", hidden_state_cache=True, hidden_state_cache_dir=str(cache))
    assert "reusing hidden-state cache" in capsys.readouterr().out
    shorter = tmp_path / "shorter.jsonl"
    shorter.write_text("".join(open(tiny_data).readlines()[:4]))
    train(str(shorter), tmp_path / "c", "medusa", hidden_state_cache=True, hidden_state_cache_dir=str(cache))
    rebuilt = json.loads((cache / "manifest.json").read_text())
    assert "reusing" not in capsys.readouterr().out
    assert rebuilt["examples"] == 4 < built["examples"]


def test_an_interrupted_cache_build_is_not_mistaken_for_a_cache(tmp_path):
    (tmp_path / "shard-00000.safetensors").write_bytes(b"half written")
    assert hidden_cache.read_manifest(tmp_path) is None  # the manifest is written last
    (tmp_path / "manifest.json").write_text('{"key": ')
    assert hidden_cache.read_manifest(tmp_path) is None


def test_cache_dtype_is_checked():
    from spectrain.errors import SpectrainError

    from spectrain import config as configs

    with pytest.raises(SpectrainError, match="train_heads.hidden_state_cache_dtype = 'int8' is not allowed"):
        configs.from_dict(TrainHeadsConfig, {"data": "x", "hidden_state_cache_dtype": "int8"})


def test_the_cache_size_is_estimated_before_it_is_built():
    from spectrain.components.train_heads.hidden_cache import cache_bytes_per_token

    base = transformers.AutoConfig.from_pretrained(resolve_base_model("embedded"))
    eagle3 = TrainHeadsConfig(data="x", mode="eagle3", draft_vocab_size=4096)
    assert cache_bytes_per_token(eagle3, base) == (4 * 576 + 4096) * 2 + 5  # 12,805: what a built cache measured
    medusa = TrainHeadsConfig(data="x", mode="medusa", hidden_state_cache_dtype="float32")
    assert cache_bytes_per_token(medusa, base) == 576 * 4 + 5
    dflash = TrainHeadsConfig(data="x", mode="dflash", dflash_num_layers=2, draft_vocab_size=4096)
    assert cache_bytes_per_token(dflash, base) == 3 * 576 * 2 + 5  # final + 2 target layers; no draft vocabulary


@pytest.fixture
def small_disk(tmp_path):
    """A real 256 KiB filesystem (tmpfs: the suite runs as root, as pod boundaries need)."""
    disk = tmp_path / "small-disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], check=True)
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_a_cache_the_disk_cannot_hold_is_refused_before_it_is_built(small_disk, capsys):
    """On a cluster the cache goes to the pod's filesystem, for which Kubeflow Pipelines can request no space: a
    cache that fills it gets the pod evicted mid-build. Too big for the disk: training runs online, saying why."""
    base = transformers.AutoConfig.from_pretrained(resolve_base_model("embedded"))
    medusa = TrainHeadsConfig(data="x", mode="medusa")  # 576 bfloat16 values + 5 bytes a token: 1,157 bytes
    examples = [{"input_ids": [1] * 100}] * 3  # 347 KB: more than the disk holds
    assert not hidden_cache.cache_fits(medusa, base, examples, small_disk / "cache")
    warning = capsys.readouterr().err
    assert f"would take 347kB for 300 tokens, but {small_disk / 'cache'} has 262kB free" in warning
    assert "training online instead (set hidden_state_cache_dir to a larger disk" in warning
    assert hidden_cache.cache_fits(medusa, base, examples[:1], small_disk / "cache")  # 116 KB: it fits
    # a cache already there is replaced by a rebuild: its space counts as free
    (small_disk / "cache").mkdir()
    (small_disk / "cache" / "shard-00000.safetensors").write_bytes(b"0" * 200_000)
    assert hidden_cache.free_bytes(small_disk / "cache") == 200_000 + hidden_cache.shutil.disk_usage(small_disk).free


@pytest.mark.slow
def test_a_cache_over_the_size_limit_is_skipped_with_a_warning(tiny_data, tmp_path, capsys):
    result = train(tiny_data, tmp_path / "out", "medusa", hidden_state_cache=True, hidden_state_cache_max_gb=1e-6)
    assert result["hidden_state_cache"] is None and result["steps"] == 4  # trained online
    assert "would take" in capsys.readouterr().err and not (tmp_path / "out" / "hidden-state-cache").exists()
