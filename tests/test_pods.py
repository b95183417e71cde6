"""Pod boundaries on one machine (podsim/pods.py, a SIMULATION of a Kubernetes node with network namespaces).

These tests need root and `ip netns`: where namespaces cannot be made they FAIL, saying so, rather than skip,
because the end-to-end pod-boundary run depends on them.
"""

from __future__ import annotations

import http.server
import inspect
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from kubernetes import client

from podsim import pods
from spectrain.errors import SpectrainError
from tests.support.standin import with_standin_vllm

PYTHON = sys.executable
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def namespaces_work():
    problem = pods.unavailable()
    assert problem is None, f"pod boundaries cannot be tested here: {problem} (CI must run as root with iproute2)"


@pytest.fixture
def network(tmp_path):
    (tmp_path / "pvc").mkdir()
    (tmp_path / "pvc" / "on-the-pvc").write_text("shared")
    with pods.PodNetwork(tmp_path / "pods", pvc=tmp_path / "pvc") as network_:
        yield network_
    assert not network_.pods
    assert pods.BRIDGE not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout


def serve_http(host: str) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer((host, 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def in_pod(pod: pods.Pod, code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        pod.command([PYTHON, "-c", code]),
        capture_output=True,
        text=True,
        env={**os.environ, **pod.env},
        timeout=60,
        **kwargs,
    )


FETCH = """
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=3)
    print("reached")
except Exception as exc:
    print("unreachable:", exc)
"""


def fetch_from(pod: pods.Pod, url: str) -> str:
    result = subprocess.run(
        pod.command([PYTHON, "-c", FETCH, url]),
        capture_output=True,
        text=True,
        env={**os.environ, **pod.env},
        timeout=60,
    )
    return result.stdout.strip()


def test_a_pod_reaches_this_machine_only_through_the_bridge_and_never_another_pods_loopback(network):
    loopback_only, everywhere = serve_http("127.0.0.1"), serve_http("0.0.0.0")
    try:
        with network.pod("serve") as first, network.pod("regenerate") as second:
            assert first.address != second.address
            assert fetch_from(first, f"http://{pods.HOST_ADDRESS}:{everywhere.server_address[1]}/") == "reached"
            assert fetch_from(first, f"http://host.spectrain.internal:{everywhere.server_address[1]}/") == "reached"
            assert fetch_from(first, f"http://127.0.0.1:{loopback_only.server_address[1]}/").startswith("unreachable")

            # A server on the first pod's loopback: reachable in that pod only; its address is not.
            server = subprocess.Popen(
                first.command([PYTHON, "-m", "http.server", "8000", "--bind", "127.0.0.1"]),
                env={**os.environ, **first.env},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 20
            while fetch_from(first, "http://127.0.0.1:8000/") != "reached":
                assert time.monotonic() < deadline, "the server in the first pod never answered"
                time.sleep(0.3)
            assert fetch_from(second, "http://127.0.0.1:8000/").startswith("unreachable")
            assert fetch_from(second, f"http://{first.address}:8000/").startswith("unreachable")
            assert fetch_from(second, "http://example.com/").startswith("unreachable")  # no route, no DNS
            network.set_names({"vllm.spectrain.svc.cluster.local": first.address})
            resolved = in_pod(second, "import socket; print(socket.gethostbyname('vllm.spectrain.svc.cluster.local'))")
            assert resolved.stdout.strip() == first.address  # names set after the pod started reach it too
    finally:
        loopback_only.shutdown(), everywhere.shutdown()
    assert server.wait(timeout=20) is not None  # the first pod's server ended with its pod


def test_the_network_policies_of_the_manifests_let_only_the_runs_pods_reach_its_vllm_pod(tmp_path):
    """manifests/base/network-policies.yaml, as `python -m podsim run` enforces them: the vLLM pod (the labels the
    serve step gives it) admits the pods of pipeline runs (KFP's pipeline/runid label) and no other pod, and the
    rule follows the pods, not their addresses: a refused pod's address, reused by a run's pod, reaches it."""
    from podsim.__main__ import network_policies
    from spectrain.components.serve import cluster

    (tmp_path / "pvc").mkdir()
    with pods.PodNetwork(tmp_path / "pods", pvc=tmp_path / "pvc", policies=network_policies()) as network:
        with network.pod("spectrain-vllm-run1-0", labels=cluster.labels("run1")) as vllm_pod:
            server = subprocess.Popen(
                vllm_pod.command([PYTHON, "-m", "http.server", "8000"]),
                env={**os.environ, **vllm_pod.env},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            url = f"http://{vllm_pod.address}:8000/"
            with network.pod("regenerate", labels={"pipeline/runid": "run1"}) as step:
                deadline = time.monotonic() + 20
                while fetch_from(step, url) != "reached":
                    assert time.monotonic() < deadline, "the run's pod never reached the vLLM pod"
                    time.sleep(0.3)
                with network.pod("some-other-app", labels={"app": "curious"}) as other:
                    refused = fetch_from(other, url)
                    assert refused.startswith("unreachable") and "ermission denied" in refused, refused
                    refused_address = other.address
                with network.pod("evaluate", labels={"pipeline/runid": "run1"}) as later:
                    assert later.address == refused_address  # the refused pod's address, now a run's pod's
                    assert fetch_from(later, url) == "reached"
                assert fetch_from(step, url) == "reached"
        assert server.wait(timeout=20) is not None


def test_a_veth_left_by_an_earlier_pod_of_the_same_address_does_not_stop_a_new_pod(network):
    """A pod whose namespace is gone can leave its host-side veth for a while: the kernel frees a deleted namespace
    asynchronously, or not while a process holds it (seen once after the Ctrl-C test in a suite run: the next pod
    of that address failed with `RTNETLINK answers: File exists`)."""
    first = network.create_pod("first")
    address = first.address
    host_side = f"sp{address.split('.')[-1]}h"
    subprocess.run(["ip", "netns", "add", "spectrain-lingering"], check=True)
    try:  # the leftover: a veth of that name whose peer is in another, still living namespace
        first.delete(grace_s=0)
        subprocess.run(["ip", "link", "del", host_side], capture_output=True)  # if the kernel has not yet
        subprocess.run(
            ["ip", "link", "add", host_side, "type", "veth", "peer", "name", "eth0", "netns", "spectrain-lingering"],
            check=True,
        )
        second = network.create_pod("second")
        assert second.address == address  # the freed address, and its interface name, reused
        assert subprocess.run(["ip", "-n", second.netns, "link", "show", "eth0"], capture_output=True).returncode == 0
        second.delete(grace_s=0)
    finally:
        subprocess.run(["ip", "netns", "del", "spectrain-lingering"], check=False)


def test_a_pod_has_its_own_scratch_and_the_model_cache_at_models_and_ends_its_processes(network, tmp_path):
    with network.pod("train") as pod:
        shown = in_pod(
            pod,
            "import os, pathlib, tempfile; print(os.environ['HOME'], tempfile.gettempdir(), "
            "os.environ['HF_HOME'], pathlib.Path('/models/on-the-pvc').read_text()); "
            "pathlib.Path('/models/written-in-a-pod').write_text('x')",
        )
        home, tmp, hf_home, content = shown.stdout.split()
        assert home.startswith(str(pod.scratch)) and tmp.startswith(str(pod.scratch)) and home != tmp
        assert hf_home == "/models/huggingface" and content == "shared"
        left = subprocess.Popen(pod.command(["sleep", "300"]), env={**os.environ, **pod.env})
        assert left.pid in pod.pids() or any(pod.pids())
        scratch = pod.scratch
    assert left.wait(timeout=20) is not None  # stopped with the pod
    assert (tmp_path / "pvc" / "written-in-a-pod").read_text() == "x"  # the PVC outlives pods
    assert not scratch.exists()
    assert not (Path("/models") / "on-the-pvc").exists()  # mounted in the pod's namespace only


def test_kfp_local_still_starts_every_task_through_the_function_pods_replace():
    """podsim.pods.kfp_tasks_in_pods swaps kfp.local's one place where a task's command starts (kfp 2.17)."""
    from kfp.local import subprocess_task_handler as handler

    assert "return_code = run_local_subprocess(" in inspect.getsource(handler.SubprocessTaskHandler.run)
    assert list(inspect.signature(handler.run_local_subprocess).parameters) == ["full_command", "env_vars"]


def test_a_pod_gets_only_the_secrets_and_config_its_step_is_given_in_the_compiled_pipeline(
    network, tmp_path, monkeypatch
):
    """On a cluster a step sees the S3 keys, MLflow URL or HF token only through the Secrets and ConfigMaps its
    executor lists; here too, so a step that needs one it is not given fails in the simulation first."""
    from podsim.__main__ import platform_spec

    granted = pods.granted_variables(platform_spec())
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_URI"} <= granted["register"]
    assert granted["export"] == set() and granted["stop-server"] == set()  # the launcher moves their artifacts
    environment = {"AWS_SECRET_ACCESS_KEY": "s3cret", "MLFLOW_TRACKING_URI": "http://mlflow", "PATH": "/bin"}
    assert pods.pod_environment("export", environment, granted) == {"PATH": "/bin"}
    assert pods.pod_environment("register", environment, granted) == environment
    assert pods.pod_environment("export", environment, None) == environment

    # and in a pod started the way kfp.local starts a task (which lays its variables over this process's own)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cret")
    out = tmp_path / "env.json"
    script = f"import json, os; json.dump(dict(os.environ), open({str(out)!r}, 'w'))"
    with pods.kfp_tasks_in_pods(network, granted):
        from kfp.local import subprocess_task_handler as handler

        command = [PYTHON, "-c", script, "--function_to_execute", "export"]
        assert handler.run_local_subprocess(full_command=command, env_vars={"AWS_ACCESS_KEY_ID": "key"}) == 0
    seen = json.loads(out.read_text())
    assert "AWS_ACCESS_KEY_ID" not in seen and "AWS_SECRET_ACCESS_KEY" not in seen and "HOME" in seen


# -- the simulated cluster: Deployments run as pods -------------------------------------------------------


def deployment(name: str, command: list[str], env: list[dict] | None = None) -> dict:
    labels = {"app": name}
    probe = {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1}
    container = {
        "name": "main",
        "image": "ghcr.io/spectrain/spectrain-serve:test",
        "command": command,
        "ports": [{"name": "http", "containerPort": 8000}],
        "env": env or [],
        "readinessProbe": probe,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
    }


def wait_for(predicate, seconds: float = 30.0):
    deadline = time.monotonic() + seconds
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
    return value


@pytest.fixture
def cluster(network, tmp_path):
    bin_dir = Path(PYTHON).parent

    def image_path(image: str) -> str:
        if "spectrain-serve" not in image:
            raise SpectrainError(f"no such image {image}")
        return str(bin_dir)

    with pods.SimulatedCluster(network, image_path, api_key="the-key") as simulated:
        kubeconfig = json.loads(Path(network.env["KUBECONFIG"]).read_text())
        api_client = client.ApiClient(client.Configuration(host=kubeconfig["clusters"][0]["cluster"]["server"]))
        yield simulated, client.AppsV1Api(api_client), client.CoreV1Api(api_client)
        api_client.close()
    assert not simulated.running


def pod_of(core, name):
    return core.list_namespaced_pod(pods.CLUSTER_NAMESPACE, label_selector=f"app={name}").items[0]


def test_a_deployment_runs_as_a_pod_behind_its_service_name_and_ends_when_deleted(cluster, network):
    simulated, apps, core = cluster
    command = [
        "sh",
        "-c",
        'test "$VLLM_API_KEY" = the-key && echo key ok && exec python -m http.server 8000',
    ]
    env = [{"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "spectrain-vllm", "key": "VLLM_API_KEY"}}}]
    apps.create_namespaced_deployment(pods.CLUSTER_NAMESPACE, deployment("web", command, env))
    core.create_namespaced_service(
        pods.CLUSTER_NAMESPACE,
        {"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 8000}]}},
    )
    wait_for(lambda: apps.read_namespaced_deployment("web", pods.CLUSTER_NAMESPACE).status.ready_replicas == 1)
    pod = pod_of(core, "web")
    assert pod.status.container_statuses[0].ready and pod.status.pod_ip.startswith("10.213.0.")
    assert "key ok" in core.read_namespaced_pod_log(pod.metadata.name, pods.CLUSTER_NAMESPACE)
    with network.pod("regenerate") as client_pod:  # another step reaches it by its Service's name
        assert fetch_from(client_pod, "http://web.spectrain.svc.cluster.local:8000/") == "reached"
        (_, container_pod, process, _) = simulated.running[(pods.CLUSTER_NAMESPACE, "web")][0]
        apps.delete_namespaced_deployment("web", pods.CLUSTER_NAMESPACE)
        assert process.poll() is not None and container_pod not in network.pods
        assert fetch_from(client_pod, "http://web.spectrain.svc.cluster.local:8000/").startswith("unreachable")
    core.delete_namespaced_service("web", pods.CLUSTER_NAMESPACE)


def test_the_simulated_kubelet_reports_a_missing_secret_a_crash_and_an_unknown_image(cluster):
    simulated, apps, core = cluster
    missing = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "spectrain-hf", "key": "HF_TOKEN"}}}]
    apps.create_namespaced_deployment(pods.CLUSTER_NAMESPACE, deployment("nosecret", ["true"], missing))
    waiting = pod_of(core, "nosecret").status.container_statuses[0].state.waiting
    assert (waiting.reason, waiting.message) == ("CreateContainerConfigError", 'secret "spectrain-hf" not found')

    apps.create_namespaced_deployment(pods.CLUSTER_NAMESPACE, deployment("crash", ["sh", "-c", "echo boom; exit 3"]))
    state = wait_for(lambda: pod_of(core, "crash").status.container_statuses[0].state.waiting)
    assert state.reason == "CrashLoopBackOff" and "code 3" in state.message
    assert "boom" in core.read_namespaced_pod_log(pod_of(core, "crash").metadata.name, pods.CLUSTER_NAMESPACE)

    other = deployment("otherimage", ["true"])
    other["spec"]["template"]["spec"]["containers"][0]["image"] = "docker.io/library/nginx:1"
    apps.create_namespaced_deployment(pods.CLUSTER_NAMESPACE, other)
    assert pod_of(core, "otherimage").status.container_statuses[0].state.waiting.reason == "InvalidImageName"
    for name in ("nosecret", "crash", "otherimage"):
        apps.delete_namespaced_deployment(name, pods.CLUSTER_NAMESPACE)


def test_the_serve_image_gets_the_environment_podsim_is_told_to_add_and_nothing_unreadable(tmp_path, monkeypatch):
    """PODSIM_SERVE_IMAGE_ENV is how the suite's stand-in vLLM reaches the vLLM pod (tests/test_interrupt.py): the
    image's `vllm` runs with those assignments; anything but NAME=VALUE is refused before a pod exists."""
    from podsim.__main__ import image_environment

    monkeypatch.setenv("PODSIM_SERVE_IMAGE_ENV", "PYTHONPATH='/a dir' STANDIN_VLLM_REPLY_SECONDS=5")
    path = image_environment("registry.example/spectrain-serve:1", tmp_path)
    shim = (tmp_path / "serve" / "vllm").read_text()
    assert path.startswith(f"{tmp_path / 'serve'}:")
    assert "exec env 'PYTHONPATH=/a dir' STANDIN_VLLM_REPLY_SECONDS=5 " in shim, shim
    monkeypatch.setenv("PODSIM_SERVE_IMAGE_ENV", "PYTHONPATH")
    with pytest.raises(SpectrainError, match="'PYTHONPATH', not NAME=VALUE") as refused:
        image_environment("registry.example/spectrain-serve:1", tmp_path)
    assert refused.value.where == "PODSIM_SERVE_IMAGE_ENV"


def test_pods_cannot_be_made_without_root_and_say_so(tmp_path, monkeypatch):
    monkeypatch.setattr(pods.os, "geteuid", lambda: 1000)
    with pytest.raises(SpectrainError, match="network namespaces need root") as caught:
        pods.PodNetwork(tmp_path, pvc=tmp_path / "pvc").__enter__()
    assert caught.value.where == "python -m podsim run"


# -- the mistake pod boundaries exist to catch ------------------------------------------------------------


def step_in_pod(
    network: pods.PodNetwork, pod: pods.Pod, env: str, step: str, config: dict, tmp_path, standin_vllm: bool = False
):
    """`spectrain step STEP` in ``pod``, with the Python of the step's environment (and the stand-in vLLM)."""
    python = os.environ.get(f"SPECTRAIN_PYTHON_{env.upper()}") or str(ROOT / ".venvs" / env / "bin" / "python")
    path = tmp_path / f"{step}.json"
    path.write_text(json.dumps(config))
    command = [
        python,
        "-m",
        "spectrain.cli",
        "step",
        step,
        "--config",
        str(path),
        "--result",
        str(tmp_path / f"{step}-result.json"),
    ]
    environment = {**os.environ, **network.env, **pod.env, "SPECTRAIN_STATE_DIR": str(tmp_path / "servers")}
    return subprocess.run(
        pod.command(command),
        env=with_standin_vllm(environment) if standin_vllm else environment,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_the_old_local_default_fails_across_pods_with_a_message_that_names_the_cause(network, tmp_path):
    """serve_mode 'local' (the old compiled default): vLLM on the serve pod's loopback, gone with that pod. (The
    stand-in vLLM: where a server listens is the subject, not what it serves.)"""
    with network.pod("serve-base-model") as serve_pod:
        served = step_in_pod(
            network,
            serve_pod,
            "serve",
            "serve",
            {"run_id": "pods", "mode": "local", "max_model_len": 512, "kv_cache_gib": 1},
            tmp_path,
            standin_vllm=True,
        )
        assert served.returncode == 0, served.stdout[-3000:] + served.stderr[-3000:]
    endpoint = json.loads((tmp_path / "serve-result.json").read_text())["endpoint"]
    assert endpoint.startswith("http://127.0.0.1:")
    from spectrain.data import embedded_path

    with network.pod("regenerate") as regenerate_pod:
        config = {
            "dataset": str(embedded_path("train")),
            "output": str(tmp_path / "out.jsonl"),
            "endpoint": endpoint,
            "limit": 2,
        }
        regenerated = step_in_pod(network, regenerate_pod, "serve", "regenerate", config, tmp_path)
    assert regenerated.returncode == 2, regenerated.stdout[-3000:] + regenerated.stderr[-3000:]
    message = regenerated.stderr
    assert f"cannot reach {endpoint}" in message and "only reaches a server in this same pod or machine" in message
    assert "serve with serve_mode 'cluster'" in message and "Traceback" not in message


def test_label_selectors_match_as_kubernetes_matches_them():
    labels = {"app": "vllm", "tier": "serve"}
    assert pods.selects({}, labels) and pods.selects({}, {})  # {} selects every pod
    assert pods.selects({"matchLabels": {"app": "vllm"}}, labels)
    assert not pods.selects({"matchLabels": {"app": "vllm", "tier": "train"}}, labels)
    expressions = [
        ({"key": "tier", "operator": "In", "values": ["serve", "train"]}, True),
        ({"key": "tier", "operator": "NotIn", "values": ["serve"]}, False),
        ({"key": "zone", "operator": "NotIn", "values": ["a"]}, True),  # a missing key is not in any set
        ({"key": "app", "operator": "Exists"}, True),
        ({"key": "app", "operator": "DoesNotExist"}, False),
    ]
    for expression, expected in expressions:
        assert pods.selects({"matchExpressions": [expression]}, labels) is expected, expression
    with pytest.raises(SpectrainError, match="unknown label selector operator 'Gt'"):
        pods.selects({"matchExpressions": [{"key": "app", "operator": "Gt", "values": ["1"]}]}, labels)
