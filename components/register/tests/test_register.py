"""Register step against a real MLflow sqlite store: runs, versions, champion promotion, no secrets logged."""

import json

import pytest
from mlflow import MlflowClient

from components.register.config import RegisterConfig
from components.register.register import run


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECTRAIN_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def results(tmp_path, tau: float, name: str, eval_fingerprint="sha256:heldout") -> dict:
    """Result files as the train/evaluate/export steps write them, and an exported draft folder."""
    folder = tmp_path / name
    (folder / "draft").mkdir(parents=True)
    (folder / "draft" / "config.json").write_text('{"architectures": ["MedusaModel"]}')
    files = {
        "train": {"mode": "medusa", "steps": 2, "seconds_per_step": 1.5, "trainable_parameters": 10, "seconds": 3.0,
                  "history": [{"step": 1, "loss": 5.0, "head_0_accuracy": 0.1}, {"step": 2, "loss": 4.0}]},
        "evaluate": {"mode": "medusa", "acceptance_length": tau, "ngram_acceptance_length": 1.2,
                     "ratio_to_ngram": tau / 1.2, "acceptance_rate_per_position": [tau - 1, 0.0, 0.0],
                     "num_draft_tokens": 3, "eval_dataset_fingerprint": eval_fingerprint, "seconds": 2.0},
    }
    paths = {}
    for step, result in files.items():
        paths[step] = str(folder / f"{step}.json")
        (folder / f"{step}.json").write_text(json.dumps(result))
    return {"draft_dir": str(folder / "draft"), "step_results": paths}


def register(store, tau, name, **kwargs):
    return run(RegisterConfig(pipeline_run_id=name, params={"lr": 0.001, "hf_token": "hf_secret", "api_key": "k"},
                              **results(store, tau, name, **kwargs)))


def test_first_draft_above_the_gate_becomes_champion_and_is_fully_logged(store):
    outcome = register(store, 1.30, "run-1")
    assert (outcome["version"], outcome["alias"]) == ("1", "champion")
    client = MlflowClient(tracking_uri=outcome["tracking_uri"], registry_uri=outcome["tracking_uri"])
    version = client.get_model_version_by_alias(outcome["registered_model"], "champion")
    assert version.source.endswith("/draft") and version.run_id == outcome["run_id"]
    assert version.tags["mode"] == "medusa" and version.tags["eval_dataset_fingerprint"] == "sha256:heldout"
    mlflow_run = client.get_run(outcome["run_id"])
    assert mlflow_run.data.metrics["acceptance_length"] == pytest.approx(1.30)
    assert mlflow_run.data.params["lr"] == "0.001"
    assert not {"hf_token", "api_key"} & set(mlflow_run.data.params)  # secrets never become params
    assert [m.value for m in client.get_metric_history(outcome["run_id"], "train_loss")] == [5.0, 4.0]
    artifacts = {a.path for a in client.list_artifacts(outcome["run_id"], "draft")}
    assert artifacts == {"draft/config.json"}
    assert outcome["registered_model"] == "spectrain-smollm2-135m-instruct-medusa"


def test_champion_moves_only_to_a_better_draft_on_the_same_eval_set(store):
    register(store, 1.30, "run-1")
    worse = register(store, 1.20, "run-2")
    assert worse["alias"] == "" and "does not beat champion v1" in worse["promotion"]
    better = register(store, 1.45, "run-3")
    assert better["alias"] == "champion"
    other_set = register(store, 1.90, "run-4", eval_fingerprint="sha256:another")
    assert other_set["alias"] == "" and "different eval set" in other_set["promotion"]
    client = MlflowClient(tracking_uri=better["tracking_uri"], registry_uri=better["tracking_uri"])
    assert str(client.get_model_version_by_alias(better["registered_model"], "champion").version) == "3"


def test_a_draft_below_the_gate_is_registered_but_not_promoted(store):
    outcome = register(store, 1.0, "run-1")
    assert outcome["version"] == "1" and outcome["alias"] == ""
    assert "gate" in outcome["promotion"]
