"""Register against a real `mlflow server` process (sqlite backend, artifacts in S3 on a moto server).

Both ways a tracking server handles artifacts: `--no-serve-artifacts`, as manifests/mlflow deploys it (the
client, here the register step, writes the draft to S3 itself with its own credentials and
MLFLOW_S3_ENDPOINT_URL, as the spectrain-config ConfigMap gives the step), and `--serve-artifacts` (the server
proxies them). Minus Postgres, this is the cluster deployment; nothing touches the local disk.
"""

import os

from pathlib import Path

import boto3
import pytest
import yaml
from mlflow import MlflowClient

from spectrain.components.register.config import RegisterConfig
from spectrain.components.register.register import run
from spectrain.components.register.tests.test_register import results
from tests.support.servers import mlflow_server as mlflow_server_process


MANIFEST = Path(__file__).resolve().parents[3] / "manifests" / "mlflow" / "mlflow.yaml"


@pytest.fixture(params=["--no-serve-artifacts", "--serve-artifacts"])
def mlflow_server(request, s3_endpoint, tmp_path, monkeypatch):
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="mlflow")
    with mlflow_server_process(
        tmp_path / "server", s3_endpoint, serve_artifacts=request.param == "--serve-artifacts"
    ) as port:
        url = f"http://127.0.0.1:{port}"
        monkeypatch.setenv("SPECTRAIN_HOME", str(tmp_path))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "token-from-the-secret")
        if request.param == "--no-serve-artifacts":  # the client writes to S3: it needs the endpoint, as pods get it
            monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_endpoint)
        yield url


def test_register_and_promote_through_a_tracking_server_with_s3_artifacts(mlflow_server, s3_endpoint, tmp_path):
    first = run(
        RegisterConfig(
            pipeline_run_id="r1", params={"lr": 0.001, "mlflow_tracking_token": "x"}, **results(tmp_path, 1.3, "r1")
        )
    )
    second = run(RegisterConfig(pipeline_run_id="r2", **results(tmp_path, 1.6, "r2")))
    assert first["tracking_uri"] == mlflow_server and (first["alias"], second["alias"]) == ("champion", "champion")

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    name = second["registered_model"]
    assert client.get_model_version_by_alias(name, "champion").version == second["version"]
    assert client.get_model_version_by_alias(name, "previous_champion").version == first["version"]
    assert "mlflow_tracking_token" not in client.get_run(first["run_id"]).data.params

    # the draft went through the server into the S3 bucket, and a serving team can fetch it by alias
    keys = [
        o["Key"]
        for o in boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket="mlflow", Prefix="artifacts/")[
            "Contents"
        ]
    ]
    assert any(k.endswith(f"{second['run_id']}/artifacts/draft/config.json") for k in keys)
    import mlflow.artifacts

    local = mlflow.artifacts.download_artifacts(f"models:/{name}@champion", dst_path=str(tmp_path / "served"))
    assert open(os.path.join(local, "config.json")).read() == '{"architectures": ["MedusaModel"]}'
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()


def test_the_manifests_deploy_the_server_mode_tested_here():
    deployment = next(d for d in yaml.safe_load_all(MANIFEST.read_text()) if d and d.get("kind") == "Deployment")
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--no-serve-artifacts" in command  # the first parameter of the mlflow_server fixture
    assert any(arg.startswith("--default-artifact-root=s3://") for arg in command)
