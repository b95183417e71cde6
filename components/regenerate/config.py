"""Config of the regenerate step: rewrite every assistant turn of a chat dataset with the served base model."""

from __future__ import annotations

from dataclasses import dataclass

from spectrain import checks
from spectrain.config import field
from spectrain.data import FORMATS

# What a retraining (`spectrain watch`, `spectrain schedule`) that continues the champion on new data holds out of
# it by default: a draft continued on new prompts is then also measured on prompts of that data, per source.
RETRAINING_HELDOUT = 20


@dataclass
class RegenerateConfig:
    """Send each conversation's user turns, in order, to the server; keep the server's replies."""

    dataset: str = field(
        "embedded",
        "chat data: a .jsonl/.json/.parquet file, a folder of them, s3://bucket/key "
        "or s3://bucket/prefix/, hf:<datasets id>[:split], or 'embedded' (shipped prompts)",
        check=checks.data_source(),
    )
    format: str = field(
        "auto",
        "record shape: auto (per record), daring-anteater, sharegpt (both: conversations "
        "with from/value) or openai (messages with role/content)",
        check=checks.one_of(*FORMATS),
    )
    output: str = field("regenerated.jsonl", "output jsonl; re-running with the same output resumes")
    endpoint: str = field(
        "http://127.0.0.1:8000/v1",
        "OpenAI-compatible base URL; several, comma-separated, spread the conversations over replicas",
        check=checks.url(optional=False, several=True),
    )
    api_key: str = field("spectrain-local", "API key of the endpoint (the VLLM_API_KEY env var wins)")
    model: str = field("", "model name to request; empty asks the server (/v1/models)")
    max_tokens: int = field(128, "max new tokens per assistant turn", check=checks.at_least(1, 256))
    temperature: float = field(
        0.0, "sampling temperature; 0 = greedy, what the draft must imitate", check=checks.at_least(0.0, 0.0)
    )
    top_p: float = field(1.0, "nucleus sampling", check=checks.between(0.0, 1.0, 0.95))
    concurrency: int = field(
        64,
        "conversations in flight at once (vLLM batches them: on a 2-core AMX CPU 64 "
        "gave 473 output tok/s against 244 at 16, bench/regenerate_concurrency.py)",
        check=checks.at_least(1, 16),
    )
    limit: int = field(0, "regenerate only the first N conversations (0 = all)", check=checks.at_least(0, 80))
    sample: int = field(
        0,
        "regenerate a random sample of N conversations, drawn with `seed` (0 = no sampling)",
        check=checks.at_least(0, 1000),
    )
    seed: int = field(0, "seed of the random sample and of the synthesized prompts")
    heldout: int = field(
        0,
        "hold out the last N conversations of the dataset (after dedupe and sample, before limit): never "
        "regenerated nor trained on, written to heldout_output for evaluate's per-source report, so a draft "
        "continued on new data is also measured on prompts of that data (0: none)",
        check=checks.at_least(0, 20),
    )
    heldout_output: str = field(
        "", "where the held-out conversations go (jsonl); empty: beside output, as <output name>.heldout.jsonl"
    )
    synthesize: int = field(
        0,
        "also have the served base write N new user prompts and answer them like the "
        "dataset's (Magpie: it completes its own chat template up to where a user's message "
        "starts): more and more varied training data from the base alone (0: none)",
        check=checks.at_least(0, 400),
    )
    synthesis_temperature: float = field(
        1.0, "sampling temperature of the synthesized prompts", check=checks.above(0.0, 1.0)
    )
    synthesis_max_tokens: int = field(
        96,
        "longest synthesized prompt in tokens; one that does not end by then is dropped",
        check=checks.at_least(8, 96),
    )
    dedupe: bool = field(True, "drop conversations whose prompts repeat an earlier one")
    keep_system_prompt: bool = field(True, "send the dataset's system prompt")
    system_prompt: str = field("", "send this system prompt instead of the dataset's")
    chat_template_kwargs: dict = field({}, 'passed to the server\'s chat template, e.g. {"enable_thinking": false}')
    request_options: dict = field(
        {},
        "more fields for every request (vLLM sampling extras), e.g. "
        '{"repetition_penalty": 1.05} or {"ignore_eos": true} for benchmarks',
    )
    checkpoint_uri: str = field(
        "",
        "s3://bucket/prefix/ where finished conversations are also copied while the step "
        "runs; a restarted step (e.g. a KFP retry: a new pod, an empty disk) takes them "
        "back instead of asking the server again. Empty: the local output only",
        check=checks.s3_prefix(),
    )
    checkpoint_interval_s: float = field(
        30.0,
        "seconds between uploads to checkpoint_uri (each uploads only the conversations finished since the last)",
        check=checks.above(0, 30),
    )
    request_timeout_s: float = field(120.0, "per-request timeout", check=checks.above(0, 120))
    max_retries: int = field(
        4, "retries per request on connection errors, timeouts, 429 and 5xx (with backoff)", check=checks.at_least(0, 4)
    )
    max_failure_ratio: float = field(
        0.1, "fail the step if more than this share of conversations failed", check=checks.between(0.0, 1.0, 0.1)
    )
