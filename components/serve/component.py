"""KFP components of the serve step (thin: they call the step through spectrain.steps.run_step)."""

from kfp import dsl
from kfp.dsl import Artifact, Output

from spectrain import images


@dsl.component(base_image=images.SERVE, install_kfp_package=False)
def serve_base_model(base_model: str, run_id: str, serve_mode: str, endpoint_url: str, max_model_len: int,
                     result: Output[Artifact]) -> str:
    """Start vLLM on the base model (or check an external endpoint); returns the OpenAI base URL."""
    import json

    from spectrain.steps import run_step

    outcome = run_step("serve", {"base_model": base_model, "run_id": run_id, "mode": serve_mode,
                                 "endpoint_url": endpoint_url, "max_model_len": max_model_len})
    with open(result.path, "w") as handle:
        json.dump(outcome, handle)
    return outcome["endpoint"]


@dsl.component(base_image=images.SERVE, install_kfp_package=False)
def stop_server(run_id: str, server_log: Output[Artifact]):
    """Exit handler: stop the run's vLLM server (even after a failed step) and keep its log."""
    from spectrain.steps import run_step

    run_step("stop-server", {"run_id": run_id, "log_copy": server_log.path})
