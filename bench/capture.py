"""Benchmark: the EAGLE-3 hidden-state cache captured by the served base, against a second pass of the base in torch.

The train step's cache (components/train_heads/hidden_cache.py) holds, per token, the base's final hidden state
(after its last norm), the outputs of EAGLE-3's three aux layers and the draft vocabulary's logits. Today the train
step computes them by running the base once more in torch. vLLM can capture the same layers while it serves
(spectrain.vllm_hidden_states); this measures what that would save, on the same examples:

  torch  hidden_cache.build, as the train step runs it (train env): the base in torch over every example
  vllm   one vLLM server capturing the aux layers' outputs and the last layer's (serve env): every example's token
         ids sent as a prompt (one output token), the states read back, then the final norm and the draft
         vocabulary's logits computed from the last layer's state (what the cache holds besides)

Examples: the shipped training conversations, tokenized as train_heads tokenizes them (the embedded base's chat
template, max_length 256). Both in float32 on the CPU; the first examples' states are compared between the two.
The server's start is reported apart: a run would capture while its server regenerates the data, started anyway.

    .venvs/orchestrate/bin/python bench/capture.py            # --examples 240 --concurrency 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

DRAFT_VOCABULARY = 4096  # the embedded base's reduced EAGLE-3 vocabulary (train_draft_vocab_size chosen below 1B)
COMPARED = 8  # examples whose states are compared between the two ways


def examples_part(args) -> None:
    """(train env) The examples as train_heads builds them, and EAGLE-3's aux layers of the base."""
    from transformers import AutoConfig, AutoTokenizer

    from spectrain.components.train_heads.draft import aux_layer_ids
    from spectrain.components.train_heads.examples import tokenize_conversation
    from spectrain.data import embedded_path, read_conversations
    from spectrain.models import resolve_base_model

    base = resolve_base_model("embedded")
    tokenizer = AutoTokenizer.from_pretrained(base)
    examples = []
    for conversation in list(read_conversations(str(embedded_path("train"))))[: args.examples]:
        example = tokenize_conversation(tokenizer, conversation.system, conversation.turns, 256)
        examples.append(example)
    layers = AutoConfig.from_pretrained(base).num_hidden_layers
    Path(args.out).write_text(json.dumps({"examples": examples, "aux": aux_layer_ids(layers), "layers": layers}))


def torch_part(args) -> None:
    """(train env) hidden_cache.build over the examples: the train step's second pass of the base."""
    import torch
    from transformers import AutoModelForCausalLM

    from spectrain.components.train_heads import hidden_cache
    from spectrain.models import resolve_base_model

    data = json.loads(Path(args.data).read_text())
    base = resolve_base_model("embedded")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    key = hidden_cache.cache_key(data["examples"], str(base), data["aux"], "float32", torch.arange(DRAFT_VOCABULARY))
    started = time.perf_counter()
    manifest = hidden_cache.build(
        model, data["examples"], Path(args.cache), key, batch_size=4, draft_token_ids=torch.arange(DRAFT_VOCABULARY)
    )
    seconds = time.perf_counter() - started
    Path(args.out).write_text(json.dumps({"seconds": seconds, "tokens": manifest["tokens"]}))


def vllm_part(args) -> None:
    """(serve env) One capturing server; every example's tokens as a prompt; states read back and completed."""
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from spectrain import vllm
    from spectrain.components.evaluate.served import post
    from spectrain.models import resolve_base_model
    from spectrain.vllm_hidden_states import read, serve_arguments

    data = json.loads(Path(args.data).read_text())
    base = resolve_base_model("embedded")
    layers = [i + 1 for i in data["aux"]] + [data["layers"]]  # a layer's output: the state after it (vLLM's ids)
    key, port, work = "capture-bench", vllm.free_port(), Path(args.work)
    extra = serve_arguments(layers, work / "states", on_gpu=False)
    started = time.perf_counter()
    process = vllm.start(
        vllm.serve_arguments(str(base), port, dtype="float32", max_model_len=1024, extra=extra),
        work / "vllm.log",
        vllm.cpu_env(key, 2),
    )
    try:
        vllm.wait_until_ready(f"http://127.0.0.1:{port}/v1", key, 900, process, work / "vllm.log")
        startup = time.perf_counter() - started
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)  # its norm and lm_head only
        draft_rows = model.lm_head.weight[:DRAFT_VOCABULARY]

        def capture(ids: list[int]) -> dict:
            reply = post(
                f"http://127.0.0.1:{port}/v1/completions",
                {"model": "base", "prompt": ids, "max_tokens": 1, "temperature": 0},
                key,
            )
            states, token_ids = read(reply["kv_transfer_params"]["hidden_states_path"])
            assert token_ids.tolist() == ids, "the server captured other tokens than it was sent"
            with torch.no_grad():
                hidden = model.model.norm(states[:, -1])
                return {"aux": states[:, :-1].flatten(1), "hidden": hidden, "logits": hidden @ draft_rows.T}

        started = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            captured = list(pool.map(capture, [e["input_ids"] for e in data["examples"]]))
        seconds = time.perf_counter() - started
    finally:
        vllm.terminate(process.pid)
    shard = load_file(str(sorted(Path(args.cache).glob("shard-*.safetensors"))[0]))  # the torch pass's cache
    offsets, differences = shard["offsets"].tolist(), {}
    for name in ("aux", "hidden", "logits"):
        worst = 0.0
        for index in range(COMPARED):
            theirs = shard[name][offsets[index] : offsets[index + 1]].float()
            ours = captured[index][name]
            worst = max(worst, ((ours - theirs).norm(dim=-1) / theirs.norm(dim=-1)).max().item())
        differences[name] = worst
    tokens = sum(len(e["input_ids"]) for e in data["examples"])
    Path(args.out).write_text(
        json.dumps({"seconds": seconds, "startup_seconds": startup, "tokens": tokens, "difference": differences})
    )


def run_part(env: str, part: str, *arguments: str) -> None:
    from spectrain.steps import python_for

    subprocess.run([python_for(env), __file__, "--part", part, *arguments], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=240, help="training conversations (the shipped 240)")
    parser.add_argument("--concurrency", type=int, default=8, help="prompts in flight against the capturing server")
    parser.add_argument("--part", choices=["examples", "torch", "vllm"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.part:
        {"examples": examples_part, "torch": torch_part, "vllm": vllm_part}[args.part](args)
        return 0

    import results  # bench/results.py: figures as JSON under bench/results/
    from heads import use_local_envs

    use_local_envs()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        data, cache = work / "examples.json", work / "cache"
        common = ["--examples", str(args.examples), "--concurrency", str(args.concurrency)]
        run_part("train", "examples", *common, "--out", str(data))
        run_part("train", "torch", *common, "--data", str(data), "--cache", str(cache), "--out", str(work / "t.json"))
        run_part(
            "serve", "vllm", *common, "--data", str(data), "--cache", str(cache), "--work", str(work),
            "--out", str(work / "v.json"),
        )  # fmt: skip
        in_torch, in_vllm = (json.loads((work / name).read_text()) for name in ("t.json", "v.json"))
    figures = {
        "examples": args.examples,
        "tokens": in_vllm["tokens"],
        "concurrency": args.concurrency,
        "torch_seconds": in_torch["seconds"],
        "vllm_seconds": in_vllm["seconds"],
        "vllm_startup_seconds": in_vllm["startup_seconds"],
        "speedup": in_torch["seconds"] / in_vllm["seconds"],
        "largest_relative_difference": in_vllm["difference"],
        "dtype": "float32",
        "cores": os.cpu_count(),
    }
    print(
        f"\nhidden-state cache of {args.examples} examples ({figures['tokens']} tokens), float32:\n"
        f"  torch (the train step's second pass)   {figures['torch_seconds']:.1f} s\n"
        f"  vLLM capture ({args.concurrency} in flight)            {figures['vllm_seconds']:.1f} s "
        f"({figures['speedup']:.2f}x faster; server start {figures['vllm_startup_seconds']:.0f} s apart)\n"
        f"  largest per-token difference of the first {COMPARED} examples: "
        + ", ".join(f"{k} {v:.1e}" for k, v in figures["largest_relative_difference"].items())
    )
    command = "python bench/capture.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"written: {results.write('capture', command.strip(), figures)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
