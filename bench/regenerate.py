"""Benchmark: is the regenerate client ever the bottleneck? Our output tokens/s against vLLM's own.

One vLLM-CPU server on the embedded model (the serve step), then for each concurrency level:
our regenerate step on single-turn prompts from the shipped set, and `vllm bench serve` (vLLM's
own load generator, the ceiling of this server) on random prompts of the same mean length,
both asking for exactly --max-tokens tokens per reply (ignore_eos), both over the chat API.

    make bench-regenerate                      # = .venvs/orchestrate/bin/python bench/regenerate.py
    python bench/regenerate.py --concurrency 1,8,32 --max-tokens 64

Targets: ours >= 0.9x the ceiling at concurrency 32, and >= 5x our own concurrency-1 figure.
The table is printed and written to <workdir>/regenerate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import results  # noqa: E402  (bench/results.py: figures as JSON under bench/results/)
from heads import use_local_envs  # noqa: E402

from spectrain.data import embedded_path, read_conversations  # noqa: E402
from spectrain.steps import python_for, run_step  # noqa: E402
from spectrain.components.regenerate import REGENERATE  # noqa: E402
from spectrain.components.serve import SERVE, STOP_SERVER  # noqa: E402

API_KEY = "bench-key"


def prompts_file(workdir: Path, count: int) -> tuple[Path, int]:
    """``count`` single-turn conversations (the shipped prompts' first turns, repeated as needed)."""
    firsts = [c.prompts[0] for c in read_conversations(str(embedded_path("train")))]
    path = workdir / f"prompts-{count}.jsonl"
    with open(path, "w") as handle:
        for i in range(count):
            turn = [{"from": "User", "value": firsts[i % len(firsts)]}, {"from": "Assistant", "value": ""}]
            handle.write(json.dumps({"id": f"bench-{i}", "conversations": turn}) + "\n")
    mean_chars = sum(len(firsts[i % len(firsts)]) for i in range(count)) / count
    return path, int(mean_chars / 4) + 20  # ~4 characters a token, plus the chat template's tokens


def ours(server: dict, data: Path, workdir: Path, concurrency: int, max_tokens: int) -> float:
    output = workdir / f"ours-{concurrency}.jsonl"
    output.unlink(missing_ok=True)
    result = run_step(
        REGENERATE,
        {
            "endpoint": server["endpoint"],
            "api_key": API_KEY,
            "dataset": str(data),
            "output": str(output),
            "max_tokens": max_tokens,
            "concurrency": concurrency,
            "dedupe": False,
            "request_options": {"ignore_eos": True},
        },
    )
    return result["output_tokens"] / result["seconds"]


def ceiling(
    server: dict, model_path: str, workdir: Path, concurrency: int, requests: int, input_len: int, max_tokens: int
) -> float:
    result_file = workdir / f"vllm-{concurrency}.json"
    command = [
        python_for("serve"),
        "-m",
        "spectrain.vllm_launcher",
        "bench",
        "serve",
        "--backend",
        "openai-chat",
        "--base-url",
        server["endpoint"].removesuffix("/v1"),
        "--endpoint",
        "/v1/chat/completions",
        "--model",
        server["model"],
        "--tokenizer",
        model_path,
        "--dataset-name",
        "random",
        "--random-input-len",
        str(input_len),
        "--random-output-len",
        str(max_tokens),
        "--num-prompts",
        str(requests),
        "--max-concurrency",
        str(concurrency),
        "--ignore-eos",
        "--temperature",
        "0",
        "--save-result",
        "--result-dir",
        str(workdir),
        "--result-filename",
        result_file.name,
        "--disable-tqdm",
    ]
    subprocess.run(command, check=True, env={**os.environ, "OPENAI_API_KEY": API_KEY})
    return json.loads(result_file.read_text())["output_throughput"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated concurrency levels")
    parser.add_argument("--max-tokens", type=int, default=64, help="output tokens per request (ignore_eos)")
    parser.add_argument(
        "--requests-per-slot", type=int, default=3, help="requests per level = max(8, this x concurrency)"
    )
    parser.add_argument("--workdir", default=str(ROOT / "bench" / ".work" / "regenerate"), help="scratch and results")
    args = parser.parse_args(argv)
    use_local_envs()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["SPECTRAIN_STATE_DIR"] = str(workdir / "servers")
    from spectrain.models import resolve_base_model

    model_path = resolve_base_model("embedded")
    started = time.monotonic()
    server = run_step(
        SERVE, {"run_id": "bench-regenerate", "api_key": API_KEY, "max_model_len": 2048, "kv_cache_gib": 2}
    )
    rows = []
    try:
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            requests = max(8, args.requests_per_slot * concurrency)
            data, input_len = prompts_file(workdir, requests)
            row = {
                "concurrency": concurrency,
                "requests": requests,
                "input_len": input_len,
                "ours": ours(server, data, workdir, concurrency, args.max_tokens),
                "vllm_bench_serve": ceiling(
                    server, model_path, workdir, concurrency, requests, input_len, args.max_tokens
                ),
            }
            rows.append(row)
            print(
                f"[bench] concurrency {concurrency}: ours {row['ours']:.1f} tok/s, "
                f"vllm bench serve {row['vllm_bench_serve']:.1f} tok/s",
                flush=True,
            )
    finally:
        run_step(STOP_SERVER, {"run_id": "bench-regenerate"})
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "argv": sys.argv[1:],
        "max_tokens": args.max_tokens,
        "rows": rows,
        "seconds": time.monotonic() - started,
    }
    (workdir / "regenerate.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {results.write('regenerate', 'python bench/regenerate.py ' + ' '.join(sys.argv[1:]), report)}")
    base = rows[0]["ours"]
    print(f"\noutput tokens/s, {args.max_tokens} tokens per reply (ignore_eos), one vLLM-CPU server")
    print(f"{'concurrency':>11} {'requests':>8} {'ours':>8} {'vllm bench':>10} {'ours/ceiling':>12} {'ours/c1':>8}")
    for row in rows:
        print(
            f"{row['concurrency']:>11} {row['requests']:>8} {row['ours']:>8.1f} {row['vllm_bench_serve']:>10.1f} "
            f"{row['ours'] / row['vllm_bench_serve']:>12.2f} {row['ours'] / base:>8.2f}"
        )
    print(
        "targets: ours/ceiling >= 0.90 at the highest concurrency; ours/c1 >= 5 there. "
        f"total {report['seconds'] / 60:.1f} min"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
