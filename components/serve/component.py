"""KFP components of the serve step (thin: they call the step through spectrain.steps.run_step)."""

from kfp import dsl
from kfp.dsl import Artifact, Output

from spectrain import images


@dsl.component(base_image=images.SERVE, install_kfp_package=False)
def serve_base_model(
    base_model: str,
    run_id: str,
    serve_mode: str,
    endpoint_url: str,
    max_model_len: int,
    replicas: int,
    node_selector: dict,
    tolerations: list,
    model_cache_pvc: str,
    image: str,
    options: dict,
    result: Output[Artifact],
) -> str:
    """Start vLLM on the base model (here, or as a Deployment in cluster mode; or check an external endpoint).

    ``options`` holds any other ServeConfig field (tensor parallelism, GPUs, dtype, quantization, eager mode,
    extra vLLM flags, readiness window). Returns the OpenAI base URL.
    """
    import json

    from spectrain.steps import run_step
    from spectrain.components.serve import SERVE

    # `options` first: a parameter of its own wins (spectrain run/submit refuse such overlaps up front).
    outcome = run_step(
        SERVE,
        {
            **options,
            "base_model": base_model,
            "run_id": run_id,
            "mode": serve_mode,
            "endpoint_url": endpoint_url,
            "max_model_len": max_model_len,
            "replicas": replicas,
            "node_selector": node_selector,
            "tolerations": tolerations,
            "model_cache_pvc": model_cache_pvc,
            "image": image,
        },
    )
    with open(result.path, "w") as handle:
        json.dump(outcome, handle)
    return outcome["endpoint"]


@dsl.component(base_image=images.SERVE, install_kfp_package=False)
def stop_server(run_id: str, serve_mode: str, server_log: Output[Artifact]):
    """Exit handler: stop the run's vLLM server or Deployment (even after a failed step) and keep its log."""
    from spectrain.steps import run_step
    from spectrain.components.serve import STOP_SERVER

    run_step(STOP_SERVER, {"run_id": run_id, "mode": serve_mode, "log_copy": server_log.path})
