"""The warm-start step against a real MLflow sqlite store and a real S3 (moto): the draft a run continues."""

import json

import boto3
import pytest
from mlflow import MlflowClient

from spectrain import draft_checkpoint, s3
from spectrain.components.register.config import RegisterConfig, WarmStartConfig
from spectrain.components.register.register import run as register
from spectrain.components.register.tests.test_register import results
from spectrain.components.register.warm_start import run
from spectrain.errors import SpectrainError
from spectrain.summary import summary_table

NAME = "spectrain-smollm2-135m-instruct-medusa"  # the registry name the embedded base's Medusa drafts get


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECTRAIN_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # as test_register's store: nothing leaks into later tests
    return tmp_path


def checkpoint(folder, steps: int, warm_start: dict | None = None):
    """A train step's output as register logs it (its files' contents do not matter to the registry)."""
    folder.mkdir(parents=True)
    (folder / draft_checkpoint.MODELOPT_STATE).write_bytes(b"modelopt state")
    (folder / draft_checkpoint.DRAFT_WEIGHTS).write_bytes(f"weights after {steps} steps".encode())
    (folder / draft_checkpoint.TRAIN_RESULT).write_text(json.dumps({"mode": "medusa", "steps": steps}))
    (folder / "checkpoint-2").mkdir()  # the Trainer's own: not the draft, never logged
    return folder


def registered(store, tau: float, name: str, warm_start: dict | None = None) -> dict:
    files = results(store, tau, name)
    if warm_start:  # the train step's result of a warm-started run
        train = json.loads(open(files["step_results"]["train"]).read())
        open(files["step_results"]["train"], "w").write(json.dumps({**train, "warm_start": warm_start}))
    return register(
        RegisterConfig(pipeline_run_id=name, checkpoint_dir=str(checkpoint(store / name / "ckpt", 7)), **files)
    )


def test_a_run_continues_the_champion_and_its_version_is_tagged_with_the_one_it_continued(store):
    first = registered(store, 1.30, "run-1")
    assert first["alias"] == "champion"
    fetched = run(WarmStartConfig(source="champion", mode="medusa", output_dir=str(store / "parent")))
    lineage = fetched["warm_start"]
    assert (lineage["registered_model"], lineage["version"], lineage["alias"]) == (NAME, "1", "champion")
    assert lineage["from"] == f"models:/{NAME}/1" and lineage["run_id"] == first["run_id"]
    files = {p.name for p in (store / "parent").iterdir()}
    assert files == {*draft_checkpoint.FILES, draft_checkpoint.LINEAGE}  # the draft only, not checkpoint-2/
    assert (store / "parent" / draft_checkpoint.DRAFT_WEIGHTS).read_text() == "weights after 7 steps"
    assert json.loads((store / "parent" / draft_checkpoint.LINEAGE).read_text()) == lineage
    # the continued draft, registered: its version names its parent, and the summary shows it
    second = registered(store, 1.40, "run-2", warm_start=lineage)
    client = MlflowClient(tracking_uri=second["tracking_uri"], registry_uri=second["tracking_uri"])
    version = client.get_model_version(NAME, second["version"])
    assert version.tags["parent_version"] == "1" and version.tags["warm_started_from"] == f"{NAME} v1"
    assert f"{NAME} v2 ← v1 |" in summary_table([second])
    assert f"{NAME} v1 |" in summary_table([first])
    # a version by number, and the same alias now pointing at the continued draft
    assert (
        run(WarmStartConfig(source=f"models:/{NAME}/1", output_dir=str(store / "v1")))["warm_start"]["version"] == "1"
    )
    assert (
        run(WarmStartConfig(source="champion", mode="medusa", output_dir=str(store / "now")))["warm_start"]["version"]
        == "2"
    )


def test_without_a_champion_yet_the_run_trains_a_new_draft_and_a_missing_version_is_refused(store, capsys):
    fetched = run(WarmStartConfig(source="champion", mode="medusa", output_dir=str(store / "parent")))
    assert fetched["warm_start"] is None and list((store / "parent").iterdir()) == []
    assert f"no {NAME}@champion: a new draft is trained" in capsys.readouterr().err
    with pytest.raises(SpectrainError) as caught:
        run(WarmStartConfig(source=f"models:/{NAME}/9", output_dir=str(store / "v9")))
    assert caught.value.where == "warm_start.source" and f"no version 9 of {NAME}" in caught.value.what
    with pytest.raises(SpectrainError) as caught:
        run(WarmStartConfig(source=f"models:/{NAME}", output_dir=str(store / "bad")))
    assert "models:/NAME@ALIAS" in caught.value.fix


def test_an_earlier_runs_output_is_fetched_from_a_folder_or_s3_with_where_it_came_from(store, s3_endpoint):
    earlier = checkpoint(store / "earlier", 3)
    fetched = run(WarmStartConfig(source=str(earlier), output_dir=str(store / "from-folder")))
    assert fetched["warm_start"] == {"from": str(earlier)}
    assert {p.name for p in (store / "from-folder").iterdir()} == {*draft_checkpoint.FILES, draft_checkpoint.LINEAGE}
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="drafts")
    s3.upload(earlier, "s3://drafts/run-1/train/medusa/")
    fetched = run(WarmStartConfig(source="s3://drafts/run-1/train/medusa", output_dir=str(store / "from-s3")))
    assert fetched["warm_start"] == {"from": "s3://drafts/run-1/train/medusa"}
    assert (store / "from-s3" / draft_checkpoint.DRAFT_WEIGHTS).read_text() == "weights after 3 steps"
    with pytest.raises(SpectrainError) as caught:
        run(WarmStartConfig(source=str(store / "nowhere"), output_dir=str(store / "none")))
    assert "no trained draft at" in caught.value.what and caught.value.where == "warm_start.source"
    assert run(WarmStartConfig(source="", output_dir=str(store / "empty")))["warm_start"] is None
