"""Register against a real `mlflow server` process (sqlite backend, artifacts proxied to S3 on a moto server).

What a cluster deployment looks like (manifests/mlflow: Postgres + S3), minus Postgres: the step only
talks HTTP to the tracking server, the server writes artifacts to S3, nothing touches the local disk.
"""

import os
import subprocess
import sys
import time
import urllib.request

import boto3
import pytest
from mlflow import MlflowClient

from components.register.config import RegisterConfig
from components.register.register import run
from components.register.tests.test_register import results
from spectrain.vllm import free_port


@pytest.fixture
def mlflow_server(s3_endpoint, tmp_path, monkeypatch):
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="mlflow")
    port = free_port()
    log = open(tmp_path / "mlflow.log", "w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            "s3://mlflow/artifacts",
            "--serve-artifacts",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint},
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            assert server.poll() is None, (tmp_path / "mlflow.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow server did not come up"
            time.sleep(0.5)
    monkeypatch.setenv("SPECTRAIN_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "token-from-the-secret")
    yield url
    os.killpg(server.pid, 15)
    server.wait(timeout=30)
    log.close()


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
