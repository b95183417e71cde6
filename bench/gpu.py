"""The GPU proof: EAGLE-3 and DFlash training, the hidden-state cache, evaluation and step costs, all on CUDA.

On a 1B-class base with Llama 3.2's real config (tests/model_matrix/configs/llama-3.2-1b-instruct.json: 1.24B
parameters, llama3 rope, a 128,256-token vocabulary) and random bf16 weights, with a tokenizer trained here on the
shipped prompts. Each stage runs the steps' own code (train_heads, evaluate) and records its time, the GPU's peak
memory next to the memory plan's estimate, and what the step decided (device, dtypes, the served k).

    python bench/gpu.py --prepare-wheels .whl    # where pip reaches PyPI: modelopt and the packages a GPU machine
                                                 # with torch and transformers lacks (Python 3.12, x86-64; ~37 MB)
    python bench/gpu.py --wheels .whl            # on the GPU machine: installs them (no index) and runs, ≤ 10 min
    python bench/gpu.py --device cpu --tiny      # the same stages at tiny size on a CPU (the test suite runs this)

Writes bench/results/gpu-<date>.json (with the card's name, torch, CUDA and the driver) unless --no-record;
--copy-to DIR puts a copy there too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

BASE_CONFIG = ROOT / "tests" / "model_matrix" / "configs" / "llama-3.2-1b-instruct.json"
# What the train step needs beyond torch and transformers, pinned as docker/train/requirements.txt resolves them.
# transformers is carried too: modelopt 0.47 needs <5.15 (its EAGLE breaks on newer), and with it its tokenizers.
WHEELS = [
    "nvidia-modelopt==0.47.0",
    "transformers==5.14.1",
    "tokenizers==0.22.2",
    "omegaconf==2.4.0",
    "PuLP==3.3.2",
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "typing_extensions==4.16.0",
]
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def prepare_wheels(directory: Path) -> None:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12"]
    command += ["--implementation", "cp", *(f"--platform={p}" for p in PLATFORMS), "-d", str(directory), *WHEELS]
    subprocess.run(command, check=True)


def with_wheels(directory: Path, argv: list[str]) -> None:
    """Install the carried wheels into a scratch site (no index, nothing else touched) and run again on it."""
    site = Path(tempfile.mkdtemp(prefix="spectrain-site-"))
    wheels = sorted(str(p) for p in directory.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"no wheels in {directory}: make them with `python bench/gpu.py --prepare-wheels {directory}`")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--target"]
    subprocess.run([*pip, str(site), *wheels], check=True)
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    rest = [a for i, a in enumerate(argv) if a != "--wheels" and (i == 0 or argv[i - 1] != "--wheels")]
    os.execve(sys.executable, [sys.executable, __file__, *rest], environment)


def tokenizer(directory: Path):
    """A byte-level BPE tokenizer trained on the shipped prompts, with ChatML: what the random base reads."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from spectrain.data import embedded_path

    texts = [line for line in Path(embedded_path("train")).read_text().splitlines()]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=8192, special_tokens=special))
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=special[0], eos_token=special[2], pad_token=special[0], chat_template=CHATML
    )
    fast.save_pretrained(directory)
    return fast


def base(directory: Path, device: str, tiny: bool) -> Path:
    """Llama 3.2 1B's config with random bf16 weights (``tiny``: 4 layers of 64), and the tokenizer above."""
    import torch
    import transformers

    words = tokenizer(directory)
    config = json.loads(BASE_CONFIG.read_text())
    if tiny:
        config.update(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4)
        config.update(num_key_value_heads=1, head_dim=16)
    config.update(bos_token_id=words.bos_token_id, eos_token_id=words.eos_token_id, pad_token_id=words.pad_token_id)
    (directory / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(
            transformers.AutoConfig.from_pretrained(directory), dtype=torch.bfloat16
        )
    model.save_pretrained(directory)
    transformers.GenerationConfig(eos_token_id=words.eos_token_id, pad_token_id=words.pad_token_id).save_pretrained(
        directory
    )
    return directory


def stage(name: str, work, device: str) -> dict:
    """Run ``work()``; its result with the wall time and the GPU's peak memory."""
    import torch

    gpu = device.startswith("cuda")
    if gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.monotonic()
    result = work()
    figures = {"seconds": round(time.monotonic() - started, 1)}
    if gpu:
        figures["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(f"[gpu] {name}: {figures}", flush=True)
    return {**figures, **result}


def train(mode: str, base_dir: Path, output: Path, steps: int, tiny: bool) -> dict:
    from spectrain.components.train_heads.config import TrainHeadsConfig
    from spectrain.components.train_heads.train import run
    from spectrain.data import embedded_path

    result = run(
        TrainHeadsConfig(
            base_model=str(base_dir),
            data=str(embedded_path("train")),
            output_dir=str(output),
            mode=mode,
            max_steps=steps,
            max_length=256 if tiny else 0,  # 0: the recipe the base gets (2,048 tokens; DFlash 4,096)
            dflash_num_layers=1 if tiny else 3,
        )
    )
    cache = result.get("hidden_state_cache") or {}
    return {
        "steps": result["steps"],
        "seconds_per_step": round(result["seconds_per_step"], 3),
        "first_loss": result["first_loss"],
        "final_loss": result["final_loss"],
        "settings": result["resolved"],
        "placement": result["placement"],
        "memory_plan_gib": round(result["memory_plan"]["per_process_bytes"] / 2**30, 2),
        "hidden_state_cache": {k: cache.get(k) for k in ("tokens", "bytes", "build_seconds")} if cache else None,
        "artifact_bytes": result["artifact_bytes"],
    }


def evaluate(checkpoint: Path, base_dir: Path, output: Path, tiny: bool) -> dict:
    from spectrain.components.evaluate.acceptance import run
    from spectrain.components.evaluate.config import EvaluateConfig

    result = run(
        EvaluateConfig(
            base_model=str(base_dir),
            checkpoint=str(checkpoint),
            mode="eagle3",
            output_dir=str(output),
            num_prompts=4 if tiny else 20,
            max_new_tokens=16 if tiny else 64,
            cost_batch_sizes=[1] if tiny else [1, 4, 16],
            cost_repeats=1 if tiny else 5,
            untrained_baseline=False,
        )
    )
    return {
        "dtype": result["dtype"],
        "accelerator": result["accelerator"],
        "step_costs": result["step_costs"],
        "draft_step_cost_ratio": result["draft_step_cost_ratio"],
        "recommended_num_draft_tokens": result["recommended_num_draft_tokens"],
        "expected_speedup": result["expected_speedup"],
        "num_speculative_tokens_per_batch_size": result["num_speculative_tokens_per_batch_size"],
    }


def card() -> dict:
    import torch

    facts = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        facts["name"] = torch.cuda.get_device_name(0)
        facts["memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        try:
            facts["driver"] = Path("/proc/driver/nvidia/version").read_text().splitlines()[0].strip()
        except (OSError, IndexError):
            facts["driver"] = None
    return facts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepare-wheels", type=Path, metavar="DIR", help="download the wheels into DIR and stop")
    parser.add_argument("--wheels", type=Path, metavar="DIR", help="install the wheels from DIR first (no index)")
    parser.add_argument("--device", default="cuda", help="cuda (the proof) or cpu (the same stages, for the tests)")
    parser.add_argument("--tiny", action="store_true", help="4 layers of 64 instead of the 1.24B base")
    parser.add_argument("--steps", type=int, default=50, help="training steps per mode")
    parser.add_argument("--no-record", action="store_true", help="write no bench/results/gpu-<date>.json")
    parser.add_argument("--copy-to", type=Path, metavar="DIR", help="also write the JSON into DIR")
    args = parser.parse_args(argv)
    if args.prepare_wheels:
        prepare_wheels(args.prepare_wheels)
        return 0
    if args.wheels:
        with_wheels(args.wheels, argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        from spectrain.devices import what_was_seen

        raise SystemExit(f"no CUDA device: {what_was_seen()} (run with --device cpu --tiny for the CPU rehearsal)")
    started = time.monotonic()
    figures: dict = {"card": card(), "base": BASE_CONFIG.name, "tiny": args.tiny}
    with tempfile.TemporaryDirectory(prefix="spectrain-gpu-") as tmp:
        work = Path(tmp)
        base_dir = base(work / "base", args.device, args.tiny)
        for mode in ("eagle3", "dflash"):
            figures[f"train {mode}"] = stage(
                f"train {mode}",
                lambda mode=mode: train(mode, base_dir, work / mode, args.steps, args.tiny),
                args.device,
            )
        figures["evaluate eagle3"] = stage(
            "evaluate eagle3", lambda: evaluate(work / "eagle3", base_dir, work / "evaluation", args.tiny), args.device
        )
        shutil.rmtree(work, ignore_errors=True)
    figures["seconds"] = round(time.monotonic() - started, 1)
    text = json.dumps(figures, indent=2)
    print(text)
    if not args.no_record:
        import results

        path = results.write("gpu", "python bench/gpu.py " + " ".join(argv), figures, gpu=figures["card"].get("name"))
        print(f"wrote {path.relative_to(ROOT)}")
        text = path.read_text()
    if args.copy_to:
        args.copy_to.mkdir(parents=True, exist_ok=True)
        (args.copy_to / f"gpu-{time.strftime('%Y-%m-%d')}.json").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
