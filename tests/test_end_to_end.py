"""The whole DAG on this machine: real vLLM, real model, real modelopt training, real MLflow store."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from spectrain import draft_checkpoint

TINY = [
    "--regenerate-limit",
    "6",
    "--regenerate-max-tokens",
    "24",
    "--train-max-steps",
    "2",
    "--train-max-minutes",
    "0",
    "--train-max-length",
    "96",
    "--train-batch-size",
    "2",
    "--train-draft-vocab-size",
    "1024",
    "--eval-num-prompts",
    "3",
    "--eval-max-new-tokens",
    "12",
    # what the step times for the k schedule: batch size 1, one round (the default times 1, 4 and 16, five rounds)
    "--eval-options",
    '{"cost_batch_sizes": [1], "cost_repeats": 1}',
]


# The vLLM cross-check at its cheapest: the τ check's server (float32) also times the draft at k = 3, then the base
# alone and n-gram at k = 3, two chats of 8 tokens at batch 1
CROSSCHECK = {
    "speed_ks": [3],
    "speed_concurrency": [1],
    "speed_num_prompts": 2,
    "speed_max_new_tokens": 8,
    "speed_dtype": "float32",
}


# Recognisable credentials for every kind the run holds (moto takes any S3 keys, the local MLflow store and vLLM any
# token, the hub is never asked for the embedded base): none may surface anywhere the run writes or prints.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIAFAKEe2e7f3a9",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-e2e-7f3a9",
    "MLFLOW_TRACKING_TOKEN": "mlflow-token-e2e-7f3a9",
    "VLLM_API_KEY": "vllm-key-e2e-7f3a9",
    "HF_TOKEN": "hf_token_e2e_7f3a9",
}


def leaks(text: str) -> list[str]:
    return [name for name, secret in CREDENTIALS.items() if secret in text]


@pytest.mark.slow
def test_spectrain_run_goes_from_a_fresh_machine_to_registered_drafts_with_a_readable_console(tmp_path, s3_endpoint):
    import boto3

    from spectrain import s3

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="e2e")
    # As on a machine that never ran spectrain: an empty home (no caches) and an empty model cache, so the
    # first step to load the base model (serve, in its own environment) converts the embedded GGUF itself.
    fresh = {
        "HOME": str(tmp_path / "home"),
        "SPECTRAIN_MODEL_CACHE": str(tmp_path / "models"),
        "SPECTRAIN_STATE_DIR": str(tmp_path / "servers"),
    }
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "HF_", "XDG_", "VLLM_", "TRANSFORMERS_")) and k not in fresh
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "spectrain.cli",
            "run",
            "--workdir",
            str(tmp_path),
            *TINY,
            "--checkpoint-root",
            "s3://e2e/checkpoints/",
            "--warm-start",  # on a fresh machine there is no champion yet: each mode trains a new draft
            "champion",
        ],
        capture_output=True,
        text=True,
        timeout=1500,
        env={**env, **fresh, **CREDENTIALS},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "| eagle3 |" in result.stdout and "| medusa |" in result.stdout  # the summary table
    assert "τ / ngram τ" in result.stdout
    assert (tmp_path / "models" / "SmolLM2-135M-Instruct" / "config.json").is_file()  # converted by this run

    # The console: a line per step start and finish, not kfp.local's executor JSON; every log in the run directory
    for line in ("serve: started", "serve: done in", "train-heads eagle3: done in", "register medusa: done in"):
        assert line in result.stdout, line
    assert "executorInput" not in result.stdout and "Executing task" not in result.stdout
    (logs,) = (tmp_path / "runs").glob("*/logs")
    names = {p.name for p in logs.glob("*.log")}
    assert {"pipeline.log", "serve.log", "regenerate.log", "train-heads-eagle3.log", "evaluate-medusa.log"} <= names
    assert "Executing task" in (logs / "pipeline.log").read_text() and str(logs) in result.stdout
    assert "converting the embedded" in (logs / "serve.log").read_text()

    (run_dir,) = (tmp_path / "runs").glob("*/pipeline-root/speculative-decoding-*")
    regenerated = [json.loads(line) for line in open(run_dir / "regenerate" / "regenerated_conversations")]
    assert len(regenerated) == 6 and len({r["conversation_id"] for r in regenerated}) == 6
    assert all(r["conversations"][-1]["from"] == "Assistant" and "finish_reasons" in r for r in regenerated)

    registered = [json.loads(p.read_text()) for p in run_dir.glob("for-loop-2-iteration-*/register/result")]
    assert sorted(r["mode"] for r in registered) == ["eagle3", "medusa"]
    evaluated = [json.loads(p.read_text()) for p in run_dir.glob("for-loop-2-iteration-*/evaluate/result")]
    assert [[row["batch"] for row in e["step_costs"]] for e in evaluated] == [[1], [1]]  # --eval-options reached it
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # not the registry of the current directory
    for outcome in registered:
        assert outcome["tracking_uri"] == uri  # the local store of this run's workdir
        metrics = outcome["metrics"]
        rates = [v for k, v in metrics.items() if k.startswith("acceptance_rate_position_")]
        assert len(rates) == 3  # k = 3 draft positions, each logged
        # τ counts every step's bonus token plus its accepted drafts: τ = 1 + Σ per-position rates
        assert metrics["acceptance_length"] == pytest.approx(1 + sum(rates))
        assert metrics["untrained_acceptance_length"] >= 1.0 and metrics["ngram_acceptance_length"] >= 1.0
        version = client.get_model_version(outcome["registered_model"], outcome["version"])
        assert version.tags["mode"] == outcome["mode"]
        files = {a.path for a in client.list_artifacts(outcome["run_id"], "draft")}
        assert "draft/config.json" in files and "draft/model.safetensors" in files
        # the trained draft, for a later run to continue; this one continued nothing (no champion yet)
        trained = {a.path for a in client.list_artifacts(outcome["run_id"], "checkpoint")}
        assert trained == {f"checkpoint/{name}" for name in draft_checkpoint.FILES}, trained
        assert outcome["warm_started_from"] == "" and "parent_version" not in version.tags
        # plots travel as KFP artifacts of the register task (on a cluster, other steps' paths are other pods')
        plots = {a.path for a in client.list_artifacts(outcome["run_id"], "plots")}
        assert plots == {"plots/acceptance.png", "plots/speedup.png", "plots/training_curves.png"}, plots
    assert "no spectrain-smollm2-135m-instruct-eagle3@champion: a new draft is trained" in result.stdout + result.stderr

    # the server was released when regeneration ended (its log kept there); the exit handler found nothing left
    assert "Application startup complete" in (run_dir / "stop-server-2" / "server_log").read_text()
    assert "was running when this step ran" in (run_dir / "stop-server" / "server_log").read_text()
    serve = json.loads((run_dir / "serve-base-model" / "result").read_text())
    assert not Path(f"/proc/{serve['pid']}").exists(), "vLLM left running"

    # Secrets stay secret: not on the console, in a step log, an artifact or result of the run, nor in what MLflow
    # recorded (params, tags, the registered versions' tags)
    assert not leaks(result.stdout + result.stderr)
    for path in (tmp_path / "runs").rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert not leaks(path.read_bytes().decode("utf-8", "replace")), path
    for outcome in registered:
        run = client.get_run(outcome["run_id"])
        assert not leaks(json.dumps([run.data.params, run.data.tags])), outcome["mode"]
        version = client.get_model_version(outcome["registered_model"], outcome["version"])
        assert not leaks(json.dumps(version.tags))
    assert not leaks((Path(__file__).resolve().parents[1] / "pipelines" / "speculative_decoding.yaml").read_text())

    # checkpoint_root: progress went to S3 under the run id (moto server), where a retried step would find it
    regenerate = json.loads((run_dir / "regenerate" / "result").read_text())
    prefix = regenerate["checkpoint"]["uri"]
    assert prefix.startswith("s3://e2e/checkpoints/") and prefix.endswith("/regenerate/")
    assert regenerate["checkpoint"]["uploaded"] == 6
    run_root = prefix.removesuffix("regenerate/")
    for mode in ("eagle3", "medusa"):
        assert s3.latest_checkpoint(f"{run_root}train/{mode}/") is not None, mode


@pytest.mark.slow
def test_with_pod_boundaries_the_cluster_default_works_across_pods_on_one_model_cache(
    tmp_path, monkeypatch, embedded_model, memorised
):
    """Every step in a pod of its own (podsim/pods.py: network namespaces, a SIMULATION of a Kubernetes node).

    The serve step creates its vLLM Deployment through the simulated Kubernetes API, which runs it as a pod of
    its own; regenerate reaches it by its Service name. MLflow (`--no-serve-artifacts`, as manifests/mlflow
    deploys it) and S3 are this machine's servers, reached at the bridge address as a pod reaches cluster
    services; nothing on this machine's loopback is reachable from a step. The run continues a trained EAGLE-3
    draft (the memorised one, of the same shape: --warm-start with an earlier run's train output).
    """
    import boto3

    from podsim import pods
    from tests.support.servers import mlflow_server, moto_s3

    assert pods.unavailable() is None, f"pod boundaries cannot run here: {pods.unavailable()}"
    parent = memorised("eagle3").checkpoint
    shutil.copytree(embedded_model, tmp_path / "pvc" / embedded_model.name)  # the model cache PVC, already filled
    credentials = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    for variable, value in credentials.items():  # for this test's own clients
        monkeypatch.setenv(variable, value)
    with moto_s3("0.0.0.0") as s3_port:
        here, in_pods = f"http://127.0.0.1:{s3_port}", f"http://{pods.HOST_ADDRESS}:{s3_port}"
        s3_client = boto3.client("s3", endpoint_url=here)
        for bucket in ("mlflow", "e2e"):
            s3_client.create_bucket(Bucket=bucket)
        monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", here)  # this test's client reads the artifacts from S3
        with mlflow_server(tmp_path / "mlflow", here, host="0.0.0.0") as mlflow_port:
            env = {
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("MLFLOW_", "HF_", "XDG_", "VLLM_", "TRANSFORMERS_", "AWS_", "SPECTRAIN_MODEL"))
            }
            result = subprocess.run(
                [sys.executable, "-m", "podsim", "run", "--workdir", str(tmp_path)]
                + [*TINY, "--modes", "eagle3", "--checkpoint-root", "s3://e2e/checkpoints/"]
                + ["--warm-start", str(parent)]
                + ["--eval-vllm-crosscheck", "true", "--eval-vllm-crosscheck-options", json.dumps(CROSSCHECK)],
                capture_output=True,
                text=True,
                timeout=1500,
                cwd=Path(__file__).resolve().parents[1],  # podsim runs from the project's checkout
                env={
                    **env,
                    **credentials,
                    "HOME": str(tmp_path / "home"),
                    "SPECTRAIN_MODEL_CACHE": str(tmp_path / "pvc"),  # the model cache PVC, mounted at /models
                    "AWS_ENDPOINT_URL": in_pods,
                    "MLFLOW_S3_ENDPOINT_URL": in_pods,
                    "MLFLOW_TRACKING_URI": f"http://{pods.HOST_ADDRESS}:{mlflow_port}",
                },
            )
            assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
            tracking = f"http://127.0.0.1:{mlflow_port}"
            client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
            (registered,) = client.search_registered_models()
            (version,) = client.search_model_versions(f"name='{registered.name}'")
            files = {a.path for a in client.list_artifacts(version.run_id, "draft")}
            continued = client.get_model_version(registered.name, version.version).tags
        keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket="mlflow")["Contents"]]
        checkpoints = s3_client.list_objects_v2(Bucket="e2e", Prefix="checkpoints/")["KeyCount"]

    # serving: a Deployment run as a pod, reached by its Service name from the steps' own pods
    assert ".svc.cluster.local:8000/v1" in result.stdout and "pod boundaries:" in result.stdout
    (logs,) = (tmp_path / "runs").glob("*/logs")
    assert "created deployment and service spectrain/spectrain-vllm-" in (logs / "serve.log").read_text()
    (run_dir,) = (tmp_path / "runs").glob("*/pipeline-root/speculative-decoding-*")
    assert "Application startup complete" in (run_dir / "stop-server-2" / "server_log").read_text()  # its pod's log

    # one model cache for every pod: the "PVC", holding the converted base before the run (that the first step
    # converts it on a fresh machine is the test above); a step that looked anywhere else would convert it there
    step_logs = [p for p in logs.glob("*.log") if p.name != "pipeline.log"]  # (pipeline.log holds them all)
    assert {"serve.log", "regenerate.log", "train-heads-eagle3.log", "evaluate-eagle3.log"} <= {
        p.name for p in step_logs
    }
    converted = [p.name for p in step_logs if "converting the embedded" in p.read_text()]
    assert converted == [], converted
    assert not (tmp_path / "home" / ".cache").exists()

    # MLflow and S3 reached at the host's bridge address: the draft in the registry, its files in S3 via the client
    assert "draft/config.json" in files and any(k.endswith("/artifacts/draft/config.json") for k in keys)
    # the draft it continued, fetched by the warm-start step's pod and trained on by the train step's
    assert continued["warm_started_from"] == str(parent)
    # the cross-check's branch ran (dsl.If) and register took its served speed through dsl.OneOf (the Else branch
    # returns {}: the tag would say cost_model)
    (crosscheck,) = run_dir.rglob("vllm-crosscheck/crosscheck")
    rows = json.loads(crosscheck.read_text())["served"]["rows"]
    assert {r["setting"] for r in rows} == {"base", "eagle3 k=3", "ngram k=3"}
    assert continued["k_chosen_by"] == "served" and continued["num_speculative_tokens"] == "3"
    assert continued["beats_ngram_served"] in ("true", "false", "within noise")
    assert "draft/vllm_speculative_config.json" in files
    trained = json.loads((run_dir / "for-loop-2-iteration-0" / "train-heads" / "result").read_text())
    assert trained["warm_start"]["from"] == str(parent) and trained["resolved"]["draft_vocab_size"] == 1024
    assert any(k.endswith("/artifacts/checkpoint/draft_weights.safetensors") for k in keys)  # for the next run
    assert checkpoints > 0

    # every pod is gone: no namespace, no bridge, no scratch directory, no process
    assert "spectrain-10-213" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not list(pods.SCRATCH.glob("*"))  # (tests run one at a time: no other run's pods)
