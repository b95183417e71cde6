"""Cluster serve mode against a FAKE Kubernetes API server over real HTTP (podsim/fake_kube.py).

What is verified: the requests the official client sends (manifests, selectors, deletions) and how the
step reacts to the states the fake reports. What is not: a real API server, scheduler or kubelet, the
vLLM image, or the in-cluster endpoint check (the test has no network to a cluster Service).
"""

from __future__ import annotations

import json
import re
import threading

import pytest
from kubernetes import client

from spectrain.components.serve import cluster, server
from spectrain.components.serve.config import ServeConfig, StopServerConfig
from podsim.fake_kube import FakeKube
from spectrain import config as configs
from spectrain.errors import SpectrainError

NS = "spectrain"
RUN = "3f2b9c1e-5a47-4c1d-9e2f-0b6a7d8c9e10"  # what KFP's PIPELINE_JOB_ID looks like
NAME = f"spectrain-vllm-{RUN}"
HUB_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # a hub id: the vLLM pods download it, nothing happens here
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
POLL = 0.05


@pytest.fixture
def fake():
    with FakeKube() as server_:
        yield server_
    assert not server_.unhandled, "the code called endpoints the fake does not implement"


@pytest.fixture
def api(fake):
    api_client = fake.api_client()
    yield cluster.Api(client.AppsV1Api(api_client), client.CoreV1Api(api_client))
    api_client.close()


def serve_config(**overrides) -> ServeConfig:
    values = {
        "mode": "cluster",
        "run_id": RUN,
        "namespace": NS,
        "base_model": HUB_MODEL,
        "api_key": "do-not-leak",
        "ready_timeout_s": 5,
        **overrides,
    }
    return configs.from_dict(ServeConfig, values)


def ready_after(fake: FakeKube, seconds: float = 0.3) -> None:
    """The fake's Deployments become ready ``seconds`` after they are created."""
    fake.on_deployment_created = lambda ns, name: threading.Timer(seconds, fake.mark_ready, (ns, name)).start()


def sent(fake: FakeKube, method: str, kind: str) -> list:
    return [r for r in fake.requests if r.method == method and r.path.endswith(f"/{kind}")]


def test_the_deployment_sent_runs_vllm_with_gpus_cache_secrets_probes_and_placement(fake, api, monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", "env-secret")
    toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ready_after(fake)
    cluster.start(
        serve_config(
            gpus=2,
            tensor_parallel_size=2,
            replicas=3,
            model_cache_pvc="my-cache",
            node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            tolerations=[toleration],
        ),
        api,
        poll_s=POLL,
    )

    [request] = sent(fake, "POST", "deployments")
    assert request.path == f"/apis/apps/v1/namespaces/{NS}/deployments"
    deployment = request.body
    labels = {"app.kubernetes.io/managed-by": "spectrain", "spectrain.dev/run-id": RUN}
    assert deployment["metadata"] == {"name": NAME, "labels": labels}
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    assert spec["selector"] == {"matchLabels": labels} and spec["template"]["metadata"]["labels"] == labels
    pod = spec["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [toleration]
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "my-cache"}} in pod["volumes"]
    # the serve image's uid 1000, and the model cache writable for it where the volume supports fsGroup
    assert pod["securityContext"] == {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000, "runAsNonRoot": True}
    [container] = pod["containers"]
    assert container["resources"] == {  # requested, so that its node has room for a base on its way to the GPU
        "requests": {"cpu": "8", "memory": "32Gi"},
        "limits": {"nvidia.com/gpu": 2, "memory": "32Gi"},
    }
    assert {"name": "model-cache", "mountPath": "/models"} in container["volumeMounts"]
    assert container["command"] == ["vllm"] and container["args"][:2] == ["serve", HUB_MODEL]
    arguments = " ".join(container["args"])
    for flag in ("--host 0.0.0.0", "--port 8000", "--served-model-name base", "--tensor-parallel-size 2"):
        assert flag in arguments
    # GPU pods: CUDA graphs on (eager mode is a CPU default), vLLM's share of the GPU memory set
    assert "--enforce-eager" not in container["args"] and "--gpu-memory-utilization 0.9" in arguments
    shm = {"name": "shm", "emptyDir": {"medium": "Memory"}}  # tensor parallelism's shared-memory segments (NCCL)
    assert shm in pod["volumes"] and {"name": "shm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    env = {e["name"]: e for e in container["env"]}
    assert env["VLLM_API_KEY"] == {
        "name": "VLLM_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "spectrain-vllm", "key": "VLLM_API_KEY"}},
    }
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "spectrain-hf", "key": "HF_TOKEN", "optional": True}
    assert env["HF_HOME"]["value"].startswith("/models/")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": 8000}  # /v1/models would need the key
    # The key reaches the pods through the Secret only: never in a request to the API server.
    everything = json.dumps([(r.path, r.query, r.body) for r in fake.requests])
    assert "do-not-leak" not in everything and "env-secret" not in everything


def test_without_placement_the_pod_spec_has_no_node_selector_or_tolerations():
    pod = cluster.deployment_manifest(serve_config(), HUB_MODEL)["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 1, "memory": "32Gi"}


def test_the_service_selects_the_vllm_pods_on_port_8000(fake, api):
    ready_after(fake)
    cluster.start(serve_config(), api, poll_s=POLL)
    [request] = sent(fake, "POST", "services")
    service, deployment = request.body, fake.get("deployments", NS, NAME)
    assert request.path == f"/api/v1/namespaces/{NS}/services"
    assert service["metadata"]["name"] == NAME
    assert service["metadata"]["labels"]["spectrain.dev/run-id"] == RUN
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(8000, "http")]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["ports"] == [{"name": "http", "containerPort": 8000}]


def test_start_waits_for_ready_replicas_and_returns_the_in_cluster_url(fake, api):
    ready_after(fake, 0.3)
    result = cluster.start(serve_config(replicas=2), api, poll_s=POLL)
    assert result["endpoint"] == f"http://{NAME}.{NS}.svc.cluster.local:8000/v1"
    assert result["model"] == "base" and result["namespace"] == NS and result["name"] == NAME
    assert {"endpoint", "model", "pid", "log", "seconds"} <= set(result)
    polls = [r for r in fake.requests if r.method == "GET" and r.path.endswith(f"/deployments/{NAME}")]
    assert len(polls) >= 3, "it returned before the fake reported the replicas ready"
    listed = [r for r in fake.requests if r.method == "GET" and r.path.endswith("/pods")]
    assert listed and all(r.query["labelSelector"] == cluster.label_selector(RUN) for r in listed)
    assert fake.names("deployments", NS) == [NAME] and fake.names("services", NS) == [NAME]


def crash_on_create(fake: FakeKube) -> None:
    fake.on_deployment_created = lambda ns, name: fake.add_pod(
        ns,
        name,
        waiting=("CrashLoopBackOff", "back-off 40s restarting failed container=vllm"),
        events=(
            ("Pulled", "Container image already present on machine"),
            ("BackOff", "Back-off restarting failed container vllm in pod"),
        ),
        log="ERROR worker: ValueError: Available memory on node 0 is less than desired\n"
        + "".join(f"INFO line {i}\n" for i in range(100))
        + "RuntimeError: Engine core initialization failed. See root cause above.\n",
    )


def test_a_crashing_pod_raises_with_its_events_and_log_tail_and_everything_is_deleted(fake, api):
    crash_on_create(fake)
    with pytest.raises(SpectrainError) as failure:
        cluster.start(serve_config(), api, poll_s=POLL)
    message = str(failure.value)
    assert "CrashLoopBackOff" in message
    assert "Back-off restarting failed container vllm in pod" in message
    assert "RuntimeError: Engine core initialization failed" in message
    assert "INFO line 99" in message and "INFO line 10\n" not in message  # a tail, not the whole log
    assert "ERROR worker: ValueError: Available memory" in message  # the root cause, far above the tail
    [log_request] = [r for r in fake.requests if r.path.endswith("/log")][:1]
    assert log_request.query["tailLines"] == str(cluster.LOG_FETCHED)
    assert fake.names("deployments", NS) == [] and fake.names("services", NS) == []
    assert fake.names("pods", NS) == []
    deleted = [r.path for r in fake.requests if r.method == "DELETE"]
    assert sorted(deleted) == [
        f"/api/v1/namespaces/{NS}/services/{NAME}",
        f"/apis/apps/v1/namespaces/{NS}/deployments/{NAME}",
    ]


def test_an_unschedulable_pod_raises_unless_the_autoscaler_is_adding_a_node(fake, api):
    why = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."
    fake.on_deployment_created = lambda ns, name: fake.add_pod(
        ns, name, unschedulable=why, events=(("FailedScheduling", why),)
    )
    with pytest.raises(SpectrainError, match="cannot be scheduled") as failure:
        cluster.start(serve_config(), api, poll_s=POLL)
    assert str(failure.value).count(why) >= 2  # the condition and the event
    assert fake.names("deployments", NS) == [] and fake.names("services", NS) == []

    def scaling_up(ns: str, name: str) -> None:
        fake.add_pod(ns, name, unschedulable=why, events=(("TriggeredScaleUp", "pod triggered scale-up"),))
        threading.Timer(0.3, fake.mark_ready, (ns, name)).start()

    fake.on_deployment_created = scaling_up
    assert cluster.start(serve_config(), api, poll_s=POLL)["name"] == NAME


def test_a_timeout_raises_and_deletes_what_it_created(fake, api):
    with pytest.raises(SpectrainError, match=r"not ready after 0 s \(0/1 replicas ready\)"):
        cluster.start(serve_config(ready_timeout_s=0.3), api, poll_s=POLL)
    assert fake.names("deployments", NS) == [] and fake.names("services", NS) == []


def test_an_existing_deployment_of_the_run_is_reported_and_left_alone(fake, api):
    fake.add("deployments", NS, cluster.deployment_manifest(serve_config(), HUB_MODEL))
    with pytest.raises(SpectrainError, match="AlreadyExists|already exists"):
        cluster.start(serve_config(), api, poll_s=POLL)
    assert fake.names("deployments", NS) == [NAME], "start deleted an object it had not created"
    assert not [r for r in fake.requests if r.method == "DELETE"]


def test_stop_deletes_only_the_objects_of_its_run(fake, api, tmp_path):
    ready_after(fake, 0.0)
    cluster.start(serve_config(), api, poll_s=POLL)
    fake.add_pod(NS, NAME, log="vLLM API server version 0.32.0\nApplication startup complete.\n")
    other = serve_config(run_id="other-run")
    fake.add("deployments", NS, cluster.deployment_manifest(other, HUB_MODEL))
    fake.add("services", NS, cluster.service_manifest("other-run"))
    hand_made = cluster.deployment_manifest(serve_config(), HUB_MODEL)
    hand_made["metadata"] = {"name": "hand-made", "labels": {"app": "vllm"}}
    fake.add("deployments", NS, hand_made)
    fake.add("services", NS, {"metadata": {"name": "hand-made"}, "spec": {"ports": [{"port": 80}]}})
    not_ours = json.loads(json.dumps(hand_made))
    not_ours["metadata"] = {"name": "same-run-not-managed", "labels": {"spectrain.dev/run-id": RUN}}
    fake.add("deployments", NS, not_ours)
    fake.add("deployments", "elsewhere", cluster.deployment_manifest(serve_config(), HUB_MODEL))

    log_copy = tmp_path / "artifact" / "server.log"
    result = cluster.stop(RUN, NS, api, log_copy)

    assert result == {"stopped": True, "deleted": [f"deployment/{NAME}", f"service/{NAME}"]}
    assert fake.names("deployments", NS) == ["hand-made", "same-run-not-managed", "spectrain-vllm-other-run"]
    assert fake.names("services", NS) == ["hand-made", "spectrain-vllm-other-run"]
    assert fake.names("deployments", "elsewhere") == [NAME]
    assert all(r.path.endswith(f"/{NAME}") for r in fake.requests if r.method == "DELETE")
    assert "Application startup complete." in log_copy.read_text()

    assert cluster.stop(RUN, NS, api) == {"stopped": False, "deleted": []}


def test_stop_is_harmless_when_nothing_exists(fake, api, tmp_path):
    assert cluster.stop("never-started", NS, api, tmp_path / "log") == {"stopped": False, "deleted": []}
    assert not [r for r in fake.requests if r.method == "DELETE"]
    assert not (tmp_path / "log").exists()


def test_a_bad_run_id_is_sanitized_to_valid_distinct_names_and_labels(fake, api):
    bad = "Run_ID/with spaces & Ünicode " + "x" * 100
    name, label = cluster.resource_name(bad), cluster.run_label(bad)
    assert DNS_1035.match(name) and len(name) <= 63 and name.startswith("spectrain-vllm-run-id-with-spaces")
    assert LABEL_VALUE.match(label) and len(label) <= 63
    assert cluster.resource_name(bad) == name  # stop() finds what start() created
    assert cluster.resource_name(bad + "y") != name and cluster.run_label(bad + "y") != label
    assert cluster.resource_name("ABC") != cluster.resource_name("abc")  # lowercasing keeps ids apart
    assert cluster.resource_name(RUN) == NAME and cluster.run_label(RUN) == RUN  # KFP ids stay readable

    ready_after(fake, 0.0)
    assert cluster.start(serve_config(run_id=bad), api, poll_s=POLL)["name"] == name
    assert fake.get("deployments", NS, name)["metadata"]["labels"]["spectrain.dev/run-id"] == label
    assert cluster.stop(bad, NS, api)["deleted"] == [f"deployment/{name}", f"service/{name}"]


def test_model_paths_must_be_on_the_model_cache_pvc(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SpectrainError, match="not on the model cache PVC"):
        cluster.model_reference(str(tmp_path))
    assert cluster.model_reference(HUB_MODEL) == HUB_MODEL


@pytest.mark.parametrize(
    "values, where",
    [
        ({"gpus": 1, "tensor_parallel_size": 2}, "serve.gpus"),
        ({"replicas": 0}, "serve.replicas"),
        ({"tolerations": ["nvidia.com/gpu"]}, "serve.tolerations"),
        ({"node_selector": {"gpu": 1}}, "serve.node_selector"),
        ({"run_id": "///"}, "serve.run_id"),
    ],
)
def test_cluster_settings_are_validated(values, where):
    with pytest.raises(SpectrainError, match=re.escape(where)):
        serve_config(**values)


def test_unknown_modes_name_all_three():
    for cls in (ServeConfig, StopServerConfig):
        with pytest.raises(SpectrainError, match="local, external, cluster"):
            configs.from_dict(cls, {"mode": "kubernetes"})


def test_server_wiring_stops_by_mode_and_cleans_up_when_the_endpoint_check_fails(fake, api, monkeypatch, tmp_path):
    monkeypatch.setattr(cluster, "connect", lambda: api)

    def unreachable(url, key, timeout_s, *rest):  # stands in for /v1/models through the Service
        assert url == f"http://{NAME}.{NS}.svc.cluster.local:8000/v1"
        raise SpectrainError(f"{url} refused the API key (HTTP 401)")

    monkeypatch.setattr(server.vllm, "wait_until_ready", unreachable)
    ready_after(fake, 0.0)
    with pytest.raises(SpectrainError, match="refused the API key"):
        server.run(serve_config())
    assert fake.names("deployments", NS) == [] and fake.names("services", NS) == []

    fake.add("deployments", NS, cluster.deployment_manifest(serve_config(), HUB_MODEL))
    result = server.stop(StopServerConfig(run_id=RUN, mode="cluster", namespace=NS))
    assert result == {"stopped": True, "deleted": [f"deployment/{NAME}"]}
    # The exit handler's stop after the one that followed regeneration: nothing left, and a log artifact saying so.
    log = tmp_path / "server_log"
    assert server.stop(StopServerConfig(run_id=RUN, mode="cluster", namespace=NS, log_copy=str(log)))["deleted"] == []
    assert f"no cluster vLLM server of run '{RUN}' was running" in log.read_text()
