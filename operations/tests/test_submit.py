"""`spectrain submit / schedule / runs` through the CLI parser and a real kfp.Client, against a FAKE KFP API server
(tests/support/fake_kfp.py: real HTTP on loopback, in-memory objects; a real KFP server cannot run here)."""

from __future__ import annotations

import argparse
from pathlib import Path

import kfp
import pytest
import yaml

from spectrain.cli import kubeflow as submit
from spectrain.operations import kfp_client
from tests.support.fake_kfp import FakeKfpServer
from spectrain.errors import SpectrainError
from spectrain.pipelines.settings import DEFAULT_YAML

PACKAGE = DEFAULT_YAML  # the committed, compiled pipeline
EXPERIMENTS, RUNS, RECURRING = "/apis/v2beta1/experiments", "/apis/v2beta1/runs", "/apis/v2beta1/recurringruns"


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """A fake KFP server; the environment is made hermetic (token from KFP_TOKEN only, no kfp context file)."""
    for name in ("KFP_HOST", "KFP_NAMESPACE", "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KFP_TOKEN", "t0ken")
    monkeypatch.setattr(kfp_client, "SERVICE_ACCOUNT_TOKEN", tmp_path / "no-service-account-token")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "no-kfp-token"))
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    with FakeKfpServer() as server:
        yield server


def cli(fake: FakeKfpServer, *argv: str) -> int:
    """Parse argv with the commands' own parsers (as cli/__init__.py wires them) and run the handler."""
    parser = argparse.ArgumentParser(prog="spectrain")
    submit.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([*argv[:1], "--host", fake.url, *argv[1:]])
    return args.handler(args, parser)


def params_file(tmp_path: Path, params: dict, name: str = "params.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(params))
    return str(path)


def test_submit_creates_experiment_then_run_with_spec_params_and_token(fake, tmp_path, capsys):
    params = {"modes": ["eagle3"], "train_max_steps": 40, "node_selector": {"nvidia.com/gpu.product": "H100"}}
    assert cli(fake, "submit", "--params", params_file(tmp_path, params), "--run-name", "nightly-1") == 0

    writes = fake.writes()
    assert [(r.method, r.path) for r in writes] == [("POST", EXPERIMENTS), ("POST", RUNS)]
    assert writes[0].body["display_name"] == "spectrain"
    body = writes[1].body
    assert body["display_name"] == "nightly-1"
    assert body["experiment_id"] == fake.experiments[0]["experiment_id"]
    assert body["runtime_config"]["parameters"] == params
    spec = next(yaml.safe_load_all(PACKAGE.read_text()))  # documents: pipeline spec, platform spec
    assert body["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == spec["pipelineInfo"]["name"]
    assert body["pipeline_spec"]["pipeline_spec"]["root"]["inputDefinitions"] == spec["root"]["inputDefinitions"]
    assert "platform_spec" in body["pipeline_spec"]  # node selectors, PVC, secrets travel with the run
    assert {r.authorization for r in fake.requests} == {"Bearer t0ken"}

    run_id = fake.runs[0]["run_id"]
    out = capsys.readouterr().out
    assert f"run id:  {run_id}" in out and f"run URL: {fake.url}/#/runs/details/{run_id}" in out


def test_service_account_token_is_used_without_kfp_token(fake, tmp_path, monkeypatch):
    token = tmp_path / "token"
    token.write_text("sa-token\n")
    monkeypatch.delenv("KFP_TOKEN")
    monkeypatch.setattr(kfp_client, "SERVICE_ACCOUNT_TOKEN", token)
    assert cli(fake, "submit", "--run-name", "r") == 0
    assert {r.authorization for r in fake.requests} == {"Bearer sa-token"}


def test_the_token_projected_for_the_kfp_api_wins_over_the_service_account_token(fake, tmp_path, monkeypatch):
    """Multi-user KFP accepts a token with audience pipelines.kubeflow.org (manifests/base/watch.yaml mounts one)."""
    (tmp_path / "sa").write_text("sa-token")
    (tmp_path / "kfp").write_text("kfp-audience-token\n")
    monkeypatch.delenv("KFP_TOKEN")
    monkeypatch.setattr(kfp_client, "SERVICE_ACCOUNT_TOKEN", tmp_path / "sa")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "kfp"))
    assert cli(fake, "submit", "--run-name", "r") == 0
    assert {r.authorization for r in fake.requests} == {"Bearer kfp-audience-token"}


def test_submit_twice_with_the_same_name_creates_one_run(fake, capsys):
    assert cli(fake, "submit", "--run-name", "nightly-1") == 0
    assert cli(fake, "submit", "--run-name", "nightly-1") == 0
    assert len(fake.runs) == 1 and len(fake.experiments) == 1
    assert len(fake.calls("POST", RUNS)) == 1
    out = capsys.readouterr().out
    assert "already exists" in out and f"run id:  {fake.runs[0]['run_id']}" in out

    assert cli(fake, "submit", "--run-name", "nightly-1", "--force") == 0
    assert len(fake.runs) == 2


def test_unknown_param_is_an_error_naming_file_and_key(fake, tmp_path):
    path = params_file(tmp_path, {"train_max_steps": 40, "learning_rate": 0.1}, name="mine.yaml")
    with pytest.raises(SpectrainError) as error:
        cli(fake, "submit", "--params", path)
    assert error.value.where == path
    assert "learning_rate" in error.value.what and "train_max_steps" not in error.value.what
    assert "train_lr" in error.value.fix.split(": ", 1)[1].split(", ")  # the known names are listed
    assert fake.requests == []  # checked before talking to the server


def test_wrongly_typed_param_is_an_error(fake, tmp_path):
    with pytest.raises(SpectrainError, match="modes: expected list"):
        cli(fake, "submit", "--params", params_file(tmp_path, {"modes": "eagle3"}))


def test_a_param_outside_its_domain_is_refused_before_the_server_is_asked(fake, tmp_path):
    path = params_file(tmp_path, {"train_lr": -1.0, "modes": ["eagle3", "eagle2"], "base_model": "/models/on-the-pvc"})
    for command in (("submit",), ("schedule", "--name", "nightly", "--cron", "0 0 3 * * *")):
        with pytest.raises(SpectrainError) as error:
            cli(fake, *command, "--params", path)
        assert error.value.where == path
        assert (
            "train_lr = -1.0 is not allowed: expected 0 (chosen from the base model) or a number > 0"
            in error.value.what
        )
        assert "unknown: 'eagle2'" in error.value.what
        assert "on-the-pvc" not in error.value.what  # a path of the cluster's, not checked on this machine
    assert fake.requests == []


HELD_OUT = {"regenerate_options": {"heldout": 20}}  # what a retraining holds out of its data unless told


def schedule(fake: FakeKfpServer, *extra: str) -> int:
    return cli(fake, "schedule", "--name", "nightly", *extra)


def test_schedule_creates_recurring_run_with_cron_one_at_a_time_no_catchup(fake, tmp_path):
    params = {"train_max_minutes": 30.0}
    assert schedule(fake, "--cron", "0 0 3 * * *", "--params", params_file(tmp_path, params)) == 0
    (created,) = fake.calls("POST", RECURRING)
    body = created.body
    assert body["display_name"] == "nightly"
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert body["max_concurrency"] == 1 and body["no_catchup"] is True and body["mode"] == "ENABLE"
    # a nightly retraining continues each mode's champion unless its params say otherwise, and holds out some of
    # its data to measure the continued draft on (the guard against forgetting)
    assert body["runtime_config"]["parameters"] == {**params, "warm_start": "champion", **HELD_OUT}
    assert body["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "speculative-decoding"
    assert created.authorization == "Bearer t0ken"


def test_a_schedule_whose_params_say_new_drafts_trains_new_drafts(fake, tmp_path):
    assert schedule(fake, "--cron", "0 0 3 * * *", "--params", params_file(tmp_path, {"warm_start": ""})) == 0
    assert fake.recurring_runs[0]["runtime_config"]["parameters"] == {"warm_start": ""}


def test_a_schedule_whose_params_choose_the_held_out_share_keeps_their_choice(fake, tmp_path):
    options = {"regenerate_options": {"heldout": 0, "top_p": 0.95}}
    assert schedule(fake, "--cron", "0 0 3 * * *", "--params", params_file(tmp_path, options)) == 0
    assert fake.recurring_runs[0]["runtime_config"]["parameters"] == {**options, "warm_start": "champion"}


def test_schedule_again_identically_changes_nothing(fake, tmp_path, capsys):
    path = params_file(tmp_path, {"train_max_minutes": 30.0})
    assert schedule(fake, "--cron", "0 0 3 * * *", "--params", path) == 0
    before = len(fake.writes())
    assert schedule(fake, "--cron", "0 0 3 * * *", "--params", path) == 0
    assert len(fake.writes()) == before
    assert len(fake.recurring_runs) == 1
    assert "left as is" in capsys.readouterr().out


@pytest.mark.parametrize("change", ["cron", "params"])
def test_schedule_with_a_change_replaces_it(fake, tmp_path, change):
    assert schedule(fake, "--cron", "0 0 3 * * *", "--params", params_file(tmp_path, {"train_max_steps": 10})) == 0
    old_id = fake.recurring_runs[0]["recurring_run_id"]
    cron = "0 30 4 * * *" if change == "cron" else "0 0 3 * * *"
    steps = 10 if change == "cron" else 20
    assert schedule(fake, "--cron", cron, "--params", params_file(tmp_path, {"train_max_steps": steps})) == 0

    writes = [(r.method, r.path) for r in fake.writes()]
    assert writes[-2:] == [("DELETE", f"{RECURRING}/{old_id}"), ("POST", RECURRING)]
    (current,) = fake.recurring_runs
    assert current["recurring_run_id"] != old_id
    assert current["trigger"]["cron_schedule"]["cron"] == cron
    assert current["runtime_config"]["parameters"] == {"train_max_steps": steps, "warm_start": "champion", **HELD_OUT}


def test_disable_and_enable_toggle_the_existing_recurring_run(fake, capsys):
    assert schedule(fake, "--cron", "0 0 3 * * *") == 0
    recurring_id = fake.recurring_runs[0]["recurring_run_id"]

    assert schedule(fake, "--disable") == 0
    assert fake.writes()[-1].path == f"{RECURRING}/{recurring_id}:disable"
    assert fake.recurring_runs[0]["mode"] == "DISABLE"
    writes = len(fake.writes())
    assert schedule(fake, "--disable") == 0  # already disabled: no request
    assert len(fake.writes()) == writes

    # replacing a disabled schedule keeps it disabled
    assert schedule(fake, "--cron", "0 0 4 * * *") == 0
    assert fake.recurring_runs[0]["mode"] == "DISABLE"

    assert schedule(fake, "--enable") == 0
    assert fake.writes()[-1].path.endswith(":enable")
    assert fake.recurring_runs[0]["mode"] == "ENABLE"
    assert "enabled" in capsys.readouterr().out


def test_toggling_a_missing_recurring_run_is_an_error(fake):
    assert schedule(fake, "--cron", "0 0 3 * * *") == 0  # the experiment exists, this name does not
    with pytest.raises(SpectrainError, match="no recurring run named 'weekly'"):
        cli(fake, "schedule", "--name", "weekly", "--disable")


def test_five_field_cron_is_a_clear_error(fake):
    with pytest.raises(SpectrainError) as error:
        schedule(fake, "--cron", "0 3 * * *")
    assert "5 field" in error.value.what and "6" in error.value.what
    assert "0 0 3 * * *" in error.value.fix
    assert fake.requests == []


def test_runs_prints_a_table_of_the_most_recent_runs(fake, capsys):
    for name in ("first", "second", "third"):
        assert cli(fake, "submit", "--run-name", name) == 0
    fake.runs[0]["state"] = "SUCCEEDED"
    fake.runs[1]["state"] = "FAILED"
    capsys.readouterr()

    assert cli(fake, "runs", "--limit", "2") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["RUN", "ID", "NAME", "STATE", "CREATED"]
    rows = [line.split() for line in lines[1:]]
    assert [(row[0], row[1], row[2]) for row in rows] == [  # newest first, limited to 2
        (fake.runs[2]["run_id"], "third", "PENDING"),
        (fake.runs[1]["run_id"], "second", "FAILED"),
    ]
    assert rows[0][3] == "2026-01-01"
    state_column = lines[0].index("STATE")  # aligned: every state starts under the header
    assert [line[state_column:].split()[0] for line in lines] == ["STATE", "PENDING", "FAILED"]


def test_runs_of_a_missing_experiment_is_an_error(fake):
    with pytest.raises(SpectrainError, match="No experiment is found"):
        cli(fake, "runs", "--experiment", "nope")


def test_unreachable_server_is_an_error_naming_the_host(fake):
    with FakeKfpServer() as stopped:
        pass  # started and stopped: nothing listens on its port any more
    with pytest.raises(SpectrainError, match="cannot reach the KFP API") as error:
        cli(stopped, "runs")
    assert error.value.where == stopped.url


def test_the_pipeline_root_sends_artifacts_to_s3_and_a_new_root_replaces_the_schedule(fake, tmp_path, monkeypatch):
    assert cli(fake, "submit", "--run-name", "r", "--pipeline-root", "s3://spectrain/root") == 0
    assert fake.calls("POST", RUNS)[0].body["runtime_config"]["pipeline_root"] == "s3://spectrain/root"

    monkeypatch.setenv("SPECTRAIN_PIPELINE_ROOT", "s3://spectrain/a")
    assert schedule(fake, "--cron", "0 0 3 * * *") == 0
    assert fake.recurring_runs[0]["runtime_config"]["pipeline_root"] == "s3://spectrain/a"
    monkeypatch.setenv("SPECTRAIN_PIPELINE_ROOT", "s3://spectrain/b")
    assert schedule(fake, "--cron", "0 0 3 * * *") == 0
    assert [r.method for r in fake.writes()][-2:] == ["DELETE", "POST"]
    assert fake.recurring_runs[0]["runtime_config"]["pipeline_root"] == "s3://spectrain/b"


def test_runs_use_the_service_account_the_manifests_create_and_a_new_one_replaces_the_schedule(fake, monkeypatch):
    assert cli(fake, "submit", "--run-name", "a") == 0
    assert fake.calls("POST", RUNS)[0].body["service_account"] == "spectrain-pipeline-runner"
    assert cli(fake, "submit", "--run-name", "b", "--service-account", "") == 0
    assert not fake.calls("POST", RUNS)[1].body.get("service_account")  # the KFP installation's default

    assert schedule(fake, "--cron", "0 0 3 * * *") == 0
    assert fake.recurring_runs[0]["service_account"] == "spectrain-pipeline-runner"
    monkeypatch.setenv("SPECTRAIN_SERVICE_ACCOUNT", "team-runner")
    assert schedule(fake, "--cron", "0 0 3 * * *") == 0
    assert [r.method for r in fake.writes()][-2:] == ["DELETE", "POST"]
    assert fake.recurring_runs[0]["service_account"] == "team-runner"


@pytest.mark.parametrize("command", [["submit"], ["schedule", "--name", "nightly", "--cron", "0 0 3 * * *"]])
def test_a_serving_mode_that_cannot_cross_pods_is_refused_before_the_server_is_asked(fake, tmp_path, command):
    path = params_file(tmp_path, {"serve_mode": "local"})
    with pytest.raises(SpectrainError) as error:
        cli(fake, *command, "--params", path)
    assert error.value.where == path
    assert "serve_mode = 'local' starts vLLM inside the serve step's own pod" in error.value.what
    assert "expected 'cluster'" in error.value.what and fake.requests == []


def test_the_compiled_default_serves_from_its_own_deployment_and_submits_without_flags(fake):
    spec = next(yaml.safe_load_all(PACKAGE.read_text()))
    assert spec["root"]["inputDefinitions"]["parameters"]["serve_mode"]["defaultValue"] == "cluster"
    assert cli(fake, "submit", "--run-name", "defaults") == 0  # docs/kubernetes.md's step 4 without a params file


def test_a_package_whose_own_default_cannot_cross_pods_is_refused(fake, tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text(PACKAGE.read_text().replace("defaultValue: cluster", "defaultValue: local", 1))
    with pytest.raises(SpectrainError, match="serve_mode = 'local'") as error:
        cli(fake, "submit", "--package", str(old))
    assert "compile it again" in error.value.fix and fake.requests == []


@pytest.mark.parametrize("command", [["submit"], ["schedule", "--name", "nightly", "--cron", "0 0 3 * * *"]])
def test_a_kfp_server_older_than_the_package_needs_is_refused_before_anything_is_created(fake, command):
    """The compiled package says the backend it needs (`spectrain compile` writes it at the top); the server says
    its own release in healthz's tag_name (which kfp's model of that answer drops, so it is read raw)."""
    assert PACKAGE.read_text().startswith("# Requires: Kubeflow Pipelines backend >= 2.5.0")
    fake.release = "2.4.1"
    with pytest.raises(
        SpectrainError, match="runs Kubeflow Pipelines 2.4.1, but speculative_decoding.yaml needs 2.5.0"
    ):
        cli(fake, *command)
    assert fake.writes() == []
    fake.release = "2.5.0"
    assert cli(fake, *command) == 0


@pytest.mark.parametrize("command", [["submit"], ["schedule", "--name", "nightly", "--cron", "0 0 3 * * *"]])
def test_namespace_and_installation_kind_are_chosen_together_or_refused_before_anything_is_created(
    fake, command, monkeypatch
):
    """Multi-user Kubeflow runs a pipeline in the profile namespace it is submitted to (as default-editor, or the
    account named); standalone KFP runs every pipeline in its own namespace and ignores a client's. The server says
    which it is in healthz's multi_user. A namespace where the run cannot find spectrain's account, PVC and
    Secrets is refused, naming what to do, before any request that creates something."""
    fake.multi_user = True
    with pytest.raises(SpectrainError, match="multi-user Kubeflow.*'no namespace' is not a profile") as error:
        cli(fake, *command)
    assert "--namespace <your profile's namespace>" in error.value.fix and "default-editor" in error.value.fix
    with pytest.raises(SpectrainError, match="'kubeflow' is not a profile"):
        cli(fake, *command[:1], "--namespace", "kubeflow", *command[1:])
    assert fake.writes() == []
    assert cli(fake, *command[:1], "--namespace", "team-a", "--service-account", "default-editor", *command[1:]) == 0
    assert fake.writes()[-1].body["service_account"] == "default-editor"

    fake.multi_user = False
    before = len(fake.writes())
    monkeypatch.setenv("KFP_NAMESPACE", "spectrain")
    with pytest.raises(SpectrainError, match="standalone Kubeflow Pipelines.* ignores --namespace spectrain") as error:
        cli(fake, *command)
    assert "drop --namespace" in error.value.fix and len(fake.writes()) == before
    monkeypatch.delenv("KFP_NAMESPACE")
    assert cli(fake, *command) == 0  # standalone, no namespace named: the run goes where KFP runs it
