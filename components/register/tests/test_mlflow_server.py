"""Register against a real `mlflow server` process (sqlite backend, artifacts in S3 on a moto server).

Both ways a tracking server handles artifacts: `--no-serve-artifacts`, as manifests/mlflow deploys it (the
client, here the register step, writes the draft to S3 itself with its own credentials and
MLFLOW_S3_ENDPOINT_URL, as the spectrain-config ConfigMap gives the step), and `--serve-artifacts` (the server
proxies them). Minus Postgres, this is the cluster deployment; nothing touches the local disk.
"""

import os
import re

from pathlib import Path

import boto3
import pytest
import yaml
from mlflow import MlflowClient

from spectrain.components.register.config import RegisterConfig
from spectrain.components.register.register import fetch, rollback, run
from spectrain.errors import SpectrainError
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
    script = deployment["spec"]["template"]["spec"]["containers"][0]["command"][2]  # sh -c
    assert "--no-serve-artifacts" in script  # the first parameter of the mlflow_server fixture
    assert "--default-artifact-root=s3://" in script


WRITER, READER = ("spectrain-pipeline", "pipeline-password-1234"), ("analyst", "analyst-password-1234")


@pytest.mark.slow
def test_with_mlflow_authentication_only_the_pipelines_user_registers_and_moves_champion(
    s3_endpoint, tmp_path, monkeypatch
):
    """The registry's champion decides what production serves: on a server with MLflow's own authentication
    (`--app-name basic-auth`, as manifests/mlflow runs it) the pipeline's user registers and promotes; a request
    without credentials, or a reader's, is refused with one clear error before anything is logged (no run, no
    version left behind), and so is a reader's rollback; readers still fetch the champion."""
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="mlflow")
    with mlflow_server_process(tmp_path / "server", s3_endpoint, users=dict([WRITER, READER])) as port:
        url = f"http://127.0.0.1:{port}"
        monkeypatch.setenv("SPECTRAIN_HOME", str(tmp_path))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_endpoint)

        def as_user(user):
            for variable, value in zip(("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"), user or ("", "")):
                monkeypatch.setenv(variable, value) if value else monkeypatch.delenv(variable, raising=False)

        as_user(WRITER)
        first = run(RegisterConfig(pipeline_run_id="r1", **results(tmp_path, 1.3, "r1")))
        second = run(RegisterConfig(pipeline_run_id="r2", **results(tmp_path, 1.6, "r2")))
        assert (first["alias"], second["alias"]) == ("champion", "champion")
        name = second["registered_model"]
        client = MlflowClient(tracking_uri=url, registry_uri=url)
        runs_before = len(client.search_runs([client.get_experiment_by_name("spectrain").experiment_id]))

        for user, refusal in (
            (None, "a request without credentials is not signed in (HTTP 401)"),
            (READER, "user 'analyst' lacks the permission (HTTP 403)"),
        ):
            as_user(user)
            with pytest.raises(
                SpectrainError, match=re.escape(f"refused to register a version of '{name}': {refusal}")
            ) as error:
                run(RegisterConfig(pipeline_run_id="r3", **results(tmp_path, 2.5, "r3")))
            assert "MLFLOW_TRACKING_USERNAME" in error.value.fix and error.value.where == url
        with pytest.raises(SpectrainError, match="refused to move the champion alias .* lacks the permission"):
            rollback(name)

        as_user(WRITER)
        assert len(client.search_runs([client.get_experiment_by_name("spectrain").experiment_id])) == runs_before
        assert [v.version for v in client.search_model_versions(f"name='{name}'")] == ["2", "1"]
        assert client.get_model_version_by_alias(name, "champion").version == second["version"]
        as_user(READER)  # readers read: the serving side fetches the champion with its own reader account
        assert fetch(name, "champion", str(tmp_path / "served"))["version"] == second["version"]
        as_user(WRITER)
        assert rollback(name)["champion"] == first["version"]


def test_the_manifests_run_mlflow_with_its_authentication_and_refuse_the_placeholder_secrets(s3_endpoint, tmp_path):
    """manifests/mlflow runs the server tested above (`--app-name basic-auth`, its users in the same database), its
    start refuses the shipped placeholders (they would become the admin's password), and the mlflow-users Job's
    script, run here against a real basic-auth server, creates the pipeline's user and, run again, sets its
    password: the register step then signs in with the Secret spectrain-mlflow."""
    import subprocess
    import sys

    from tests.support.servers import MLFLOW_ADMIN

    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    script = deployment["containers"][0]["command"][2]
    assert "--app-name=basic-auth" in script and "--no-serve-artifacts" in script
    assert any("Flask-WTF" in argument for argument in deployment["initContainers"][0]["command"])
    env = {e["name"]: e for e in deployment["containers"][0]["env"]}
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "spectrain-mlflow-auth"
    placeholder = {"MLFLOW_AUTH_ADMIN_PASSWORD": "REPLACE_ME", "MLFLOW_FLASK_SERVER_SECRET_KEY": "REPLACE_ME"}
    refused = subprocess.run(["sh", "-c", script], env={"PATH": "/usr/bin:/bin", **placeholder}, capture_output=True)
    assert refused.returncode == 1 and b"spectrain-mlflow-auth" in refused.stderr

    job = next(d for d in docs if d["kind"] == "Job")["spec"]["template"]["spec"]["containers"][0]
    create_user = job["command"][2]
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="mlflow")
    with mlflow_server_process(tmp_path / "server", s3_endpoint, users={}) as port:
        url = f"http://127.0.0.1:{port}"
        code = create_user.replace("http://mlflow:5000", url)
        secrets = {"MLFLOW_TRACKING_USERNAME": WRITER[0], "MLFLOW_AUTH_ADMIN_PASSWORD": MLFLOW_ADMIN[1]}
        for password in (WRITER[1], WRITER[1] + "-changed"):
            done = subprocess.run(
                [sys.executable, "-c", code], env={**secrets, "MLFLOW_TRACKING_PASSWORD": password}, capture_output=True
            )
            assert done.returncode == 0, done.stderr
            signed_in = MlflowClient(tracking_uri=url.replace("://", f"://{WRITER[0]}:{password}@"))
            assert signed_in.search_experiments() is not None
        short = subprocess.run([sys.executable, "-c", code], env={**secrets, "MLFLOW_TRACKING_PASSWORD": "REPLACE_ME"})
        assert short.returncode == 1
