"""The Kubernetes Secrets spectrain reads, and the keys each holds: one list for the pipeline, the serve
step's vLLM Deployment and the manifests' tests (manifests/base/secrets.yaml holds templates of the required
ones; the optional tokens are created only by a user who has one)."""

VLLM = "spectrain-vllm"  # required by serve_mode cluster: the server never runs without an API key
HF = "spectrain-hf"  # optional: public models need no token
S3 = "spectrain-s3"  # optional: only for s3:// data, checkpoints and MLflow artifacts
MLFLOW = "spectrain-mlflow"  # a tracking server's sign-in: the pipeline's user (manifests/mlflow), or a token

KEYS: dict[str, tuple[str, ...]] = {
    VLLM: ("VLLM_API_KEY",),
    HF: ("HF_TOKEN",),
    S3: ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
    MLFLOW: ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"),
}


# Secrets the manifests never ship as templates: a token whose value is a placeholder is still sent as a token.
OPTIONAL = (HF, MLFLOW)


def as_env(*names: str) -> dict[str, dict[str, str]]:
    """Secret name -> {key: environment variable of the same name}, for kfp-kubernetes' use_secret_as_env."""
    return {name: {key: key for key in KEYS[name]} for name in names}
