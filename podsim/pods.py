"""Pod boundaries on one machine (`python -m podsim run`): every step runs as a Kubernetes pod would.

A SIMULATION of one Kubernetes node, built from Linux network namespaces (`ip netns`; root only), so that a
pipeline that only works because its steps share a machine fails here, not first on a cluster:

- Every kfp.local task runs in a pod: a fresh network namespace with its own loopback and one veth on the
  ``spectrain0`` bridge, where this machine answers at HOST_ADDRESS. A pod reaches what listens there (on that
  address or 0.0.0.0: MLflow or S3 servers, the simulated Kubernetes API) and other pods' addresses; not this
  machine's 127.0.0.1, not another pod's loopback, nothing beyond the bridge (no default route, no DNS server).
  The artifact store is the shared filesystem, as kfp.local has it.
- Its own HOME and TMPDIR, deleted with it; the model cache PVC (a directory here) mounted at /models in its
  own mount namespace, with the caches the images point there (paths.IMAGE_CACHE_ENV). The mount point /models
  is created on this machine if it is missing, and stays empty there.
- When the task returns, every process left in its namespace is stopped and the namespace deleted: a server
  a step starts and leaves running ends with the step, as it would with its pod.
- SimulatedCluster (serve_mode 'cluster'): the Kubernetes API is podsim.fake_kube's server on
  HOST_ADDRESS, which here also runs each Deployment's container command as a pod of its own (the image's
  environment is the virtualenv of its family, .venvs/<family>), marks a replica ready when its readiness
  probe answers, and resolves a Service's DNS names to its pods' addresses through every pod's /etc/hosts
  (as a headless Service would: no ClusterIP, no kube-proxy). Steps reach it through a kubeconfig
  (KUBECONFIG), not a service account; every pod gets VLLM_API_KEY, as the Secret spectrain-vllm holds it.

The node is this machine's CPU: a container asking for GPUs runs without them, with the node_env given (for
vLLM: the CPU settings local mode uses, spectrain.vllm.cpu_settings).

- NetworkPolicies (ingress, by pod labels): a pod that no policy selecting another pod admits cannot connect to
  that pod at all (a `prohibit` route to its address in the source pod's namespace: connect() fails at once).
  Task pods carry KFP's `pipeline/runid` label, Deployment pods their template's labels. Ports, namespace
  selectors with labels and ipBlocks are not simulated (an admitted pod reaches every port); the host, where
  MLflow, S3 and the kubelet's probes are, is not a pod and is never refused.
- Each pod's environment holds, of the variables a cluster hands out through Secrets and ConfigMaps (S3 keys and
  endpoint, MLflow URL and token, HF_TOKEN), only those the compiled pipeline gives its step (granted_variables):
  a step that needs a credential it is not given fails here as on a cluster.

Not simulated: CPU, memory and GPU requests and limits, the memory-backed /dev/shm, image contents, container
restarts, RBAC, node selection and tolerations, KFP's launcher moving artifacts to the pipeline root's S3 (here
kfp.local's shared filesystem is the store, so the kfp-launcher ConfigMap is not read).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets as tokens
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from spectrain import paths, secrets
from spectrain.errors import SpectrainError

BRIDGE = "spectrain0"
NETWORK = ipaddress.ip_network("10.213.0.0/24")
HOST_ADDRESS = str(NETWORK.network_address + 1)
SCRATCH = Path(tempfile.gettempdir()) / "spectrain-pods"  # each pod's HOME and TMPDIR, deleted with it
STATE = Path("/run/spectrain-pods")  # address leases (one file per pod address) and the lock guarding them
CLUSTER_NAMESPACE = "spectrain"  # the Kubernetes namespace of the simulated cluster
GRACE_S = 10.0  # SIGTERM, then SIGKILL: a pod's terminationGracePeriodSeconds
MOUNT_PVC = 'mount --bind "$0" "$1" && shift && exec "$@"'  # sh -c SCRIPT PVC /models ARGV...


def _ip(*args: str) -> str:
    completed = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise SpectrainError(
            f"`ip {' '.join(args)}` failed: {completed.stderr.strip()}",
            where="python -m podsim run",
            fix="pod boundaries need root and iproute2 with network namespace support (`ip netns add` must work)",
        )
    return completed.stdout


NEEDS = "run as root on Linux with iproute2, or use spectrain run (steps side by side on this machine)"


def unavailable() -> str | None:
    """Why pods cannot be made on this machine, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (this process runs as uid %d)" % os.geteuid()
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    return None


class Pod:
    """One pod: a network namespace with an address on the bridge, a scratch directory and the PVC mount."""

    def __init__(self, network: PodNetwork, name: str, address: str, labels: dict[str, str] | None = None) -> None:
        self.network, self.name, self.address = network, name, address
        self.labels = dict(labels or {})
        self.refused: set[str] = set()  # addresses this pod may not connect to (NetworkPolicies)
        self.netns = f"spectrain-{address.replace('.', '-')}"
        self.scratch = SCRATCH / self.netns  # short: vLLM binds IPC sockets under TMPDIR (107-byte paths)
        self.etc = Path("/etc/netns") / self.netns  # `ip netns exec` mounts these files over /etc's
        self.env = {
            "HOME": str(self.scratch / "home"),
            "TMPDIR": str(self.scratch / "tmp"),
            "POD_NAME": name,
            "POD_IP": address,
            **paths.IMAGE_CACHE_ENV,
        }

    def create(self) -> None:
        host_side = f"sp{self.address.split('.')[-1]}h"  # interface names: 15 characters at most
        # An earlier pod of this address whose namespace is gone can leave its veth behind: the kernel frees a
        # deleted namespace, and the veth in it, asynchronously (or not while a process still holds it), though
        # the lease went with the mount. Removing one end of a veth pair removes both; it may vanish meanwhile.
        subprocess.run(["ip", "link", "del", host_side], capture_output=True, check=False)
        _ip("netns", "add", self.netns)
        _ip("link", "add", host_side, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        _ip("link", "set", host_side, "master", BRIDGE, "up")
        _ip("-n", self.netns, "addr", "add", f"{self.address}/{NETWORK.prefixlen}", "dev", "eth0")
        _ip("-n", self.netns, "link", "set", "eth0", "up")
        _ip("-n", self.netns, "link", "set", "lo", "up")
        self.etc.mkdir(parents=True, exist_ok=True)
        # No DNS server in the pod: names not in its hosts file fail at once instead of timing out.
        (self.etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        self.write_hosts(self.network.names())
        for directory in ("home", "tmp"):
            (self.scratch / directory).mkdir(parents=True, exist_ok=True)

    def write_hosts(self, names: dict[str, str]) -> None:
        """This pod's /etc/hosts, rewritten in place (the namespace's bind mount keeps the same file)."""
        lines = ["127.0.0.1 localhost", f"{self.address} {self.name}", f"{HOST_ADDRESS} host.spectrain.internal"]
        lines += [f"{address} {name}" for name, address in sorted(names.items())]
        with open(self.etc / "hosts", "a+") as handle:
            handle.seek(0)
            handle.truncate()
            handle.write("\n".join(lines) + "\n")

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the pod: its network namespace, with the PVC mounted at /models."""
        pvc = [str(self.network.pvc), paths.PVC_MODEL_CACHE]
        return ["ip", "netns", "exec", self.netns, "sh", "-c", MOUNT_PVC, *pvc, *argv]

    def pids(self) -> list[int]:
        try:
            return [int(pid) for pid in _ip("netns", "pids", self.netns).split()]
        except SpectrainError:
            return []

    def delete(self, grace_s: float = GRACE_S) -> list[int]:
        """Stop every process in the pod (SIGTERM, SIGKILL after ``grace_s``), then remove the pod; returns the pids."""
        found = self.pids()
        for pid in found:
            _kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in self.pids():
            _kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(SpectrainError):
            _ip("netns", "delete", self.netns)  # takes its end of the veth pair, and so the host's, with it
        shutil.rmtree(self.etc, ignore_errors=True)
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.network.release(self)
        return found


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


class PodNetwork:
    """The bridge and the pods of one run; ``root`` holds the run's pod files (kubeconfig), ``pvc`` is the model
    cache mounted in every pod."""

    def __init__(
        self, root: Path, pvc: Path, env: dict[str, str] | None = None, policies: list[dict] | None = None
    ) -> None:
        self.root, self.pvc = root, pvc
        self.env = dict(env or {})  # what every pod gets besides its own (KUBECONFIG, secrets)
        self.policies = [p for p in policies or [] if p.get("kind") == "NetworkPolicy"]
        self.pods: list[Pod] = []
        self._names: dict[str, str] = {}
        self._lock = threading.RLock()

    # -- lifecycle ------------------------------------------------------------------------------------

    def __enter__(self) -> PodNetwork:
        if problem := unavailable():
            raise SpectrainError(f"cannot create pods: {problem}", where="python -m podsim run", fix=NEEDS)
        self.pvc.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        Path(paths.PVC_MODEL_CACHE).mkdir(exist_ok=True)  # the mount point; pods mount the PVC over it
        with self._leases():
            if BRIDGE not in _ip("-o", "link", "show"):
                _ip("link", "add", BRIDGE, "type", "bridge")
            if f"{HOST_ADDRESS}/" not in _ip("-o", "-4", "addr", "show", "dev", BRIDGE):
                _ip("addr", "add", f"{HOST_ADDRESS}/{NETWORK.prefixlen}", "dev", BRIDGE)
            _ip("link", "set", BRIDGE, "up")
        return self

    def __exit__(self, *_: object) -> None:
        for pod in list(self.pods):
            pod.delete(grace_s=2.0)
        with self._leases() as leases:
            if not any(leases.iterdir()):  # no other run has pods: leave the machine as it was
                with contextlib.suppress(SpectrainError):
                    _ip("link", "delete", BRIDGE)

    @contextlib.contextmanager
    def _leases(self) -> Iterator[Path]:
        """The lease directory, locked against other runs on this machine."""
        leases = STATE / "leases"
        leases.mkdir(parents=True, exist_ok=True)
        with open(STATE / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield leases

    # -- pods -----------------------------------------------------------------------------------------

    def create_pod(self, name: str, labels: dict[str, str] | None = None) -> Pod:
        with self._leases() as leases:
            existing = set(_ip("netns", "list").split())
            for lease in leases.iterdir():  # left by a run that was killed: its namespace is gone
                if lease.read_text() not in existing:
                    lease.unlink()
            taken = {lease.name for lease in leases.iterdir()} | {HOST_ADDRESS}
            address = next((str(a) for a in NETWORK.hosts() if str(a) not in taken), None)
            if address is None:
                raise SpectrainError(f"no free pod address left in {NETWORK}", where="python -m podsim run")
            pod = Pod(self, re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:40] or "pod", address, labels)
            (leases / address).write_text(pod.netns)
        with self._lock:
            self.pods.append(pod)
        try:
            pod.create()
            self.enforce_policies()
        except BaseException:
            pod.delete(grace_s=0)
            raise
        return pod

    def release(self, pod: Pod) -> None:
        with self._lock:
            if pod in self.pods:
                self.pods.remove(pod)
        with self._leases() as leases:
            (leases / pod.address).unlink(missing_ok=True)
        self.enforce_policies()  # the address may go to a pod the policies treat otherwise

    # -- NetworkPolicies ------------------------------------------------------------------------------

    def admits(self, source: Pod, target: Pod) -> bool:
        """Whether the NetworkPolicies let ``source`` connect to ``target`` (ingress only; see the module doc)."""
        selecting = [
            policy
            for policy in self.policies
            if "Ingress" in policy["spec"].get("policyTypes", ["Ingress"])
            and selects(policy["spec"].get("podSelector", {}), target.labels)
        ]
        if not selecting:
            return True  # a pod no policy selects accepts everything
        for policy in selecting:
            for rule in policy["spec"].get("ingress") or []:
                peers = rule.get("from")
                if not peers:
                    return True  # a rule without `from` admits every source
                for peer in peers:
                    if "ipBlock" in peer or peer.get("namespaceSelector", {}) != {}:
                        continue  # not simulated: only pods of this one namespace, by their labels
                    if selects(peer.get("podSelector", {}), source.labels):
                        return True
        return False

    def enforce_policies(self) -> None:
        """Each pod's `prohibit` routes: to exactly the addresses of the pods the policies do not admit it to. (One
        thread at a time: the simulated cluster creates pods from its API server's thread.)"""
        with self._lock:
            for source in self.pods:
                refused = {t.address for t in self.pods if t is not source and not self.admits(source, t)}
                for address in refused - source.refused:
                    with contextlib.suppress(SpectrainError):  # a pod being deleted meanwhile
                        _ip("-n", source.netns, "route", "replace", "prohibit", f"{address}/32")
                for address in source.refused - refused:
                    with contextlib.suppress(SpectrainError):
                        _ip("-n", source.netns, "route", "del", "prohibit", f"{address}/32")
                source.refused = refused

    @contextlib.contextmanager
    def pod(self, name: str, labels: dict[str, str] | None = None) -> Iterator[Pod]:
        pod = self.create_pod(name, labels)
        try:
            yield pod
        finally:
            pod.delete()

    # -- names (the simulated cluster DNS) ------------------------------------------------------------

    def names(self) -> dict[str, str]:
        with self._lock:
            return dict(self._names)

    def set_names(self, names: dict[str, str]) -> None:
        """Resolve ``names`` (DNS name -> address) in every pod, present and future."""
        with self._lock:
            self._names = dict(names)
            for pod in self.pods:
                pod.write_hosts(self._names)


def selects(selector: dict, labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector (matchLabels, matchExpressions) selects ``labels``; {} selects all."""
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        matched = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }.get(operator)
        if matched is None:
            raise SpectrainError(f"unknown label selector operator {operator!r}", where=f"matchExpressions: {key}")
        if not matched:
            return False
    return True


# -- kfp.local tasks as pods -----------------------------------------------------------------------------


def task_name(full_command: list[str]) -> str:
    """The component function a kfp.local task runs (its executor's --function_to_execute)."""
    if "--function_to_execute" in full_command:
        return full_command[full_command.index("--function_to_execute") + 1].replace("_", "-")
    return "task"


def granted_variables(platform_spec: dict) -> dict[str, set[str]]:
    """Component name -> the environment variables its pod gets from Secrets and ConfigMaps, read from a compiled
    pipeline's platform spec (kfp-kubernetes' secretAsEnv / configMapAsEnv of each executor)."""
    executors = platform_spec.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
    granted: dict[str, set[str]] = {}
    for label, config in executors.items():
        name = re.sub(r"-\d+$", "", label.removeprefix("exec-"))  # exec-stop-server-2: the same component
        for use in [*config.get("secretAsEnv", []), *config.get("configMapAsEnv", [])]:
            granted.setdefault(name, set()).update(k["envVar"] for k in use.get("keyToEnv", []))
        granted.setdefault(name, set())
    return granted


def withheld_variables(name: str, granted: dict[str, set[str]] | None) -> set[str]:
    """The variables a cluster gives only through Secrets and ConfigMaps (any of ``granted``'s) that the pod of
    component ``name`` is not given, so a step that needs a credential the compiled pipeline does not hand it fails
    here too. ``granted`` None: none."""
    if granted is None:
        return set()
    return set().union(*granted.values()) - granted.get(name, set())


def pod_environment(name: str, environment: dict[str, str], granted: dict[str, set[str]] | None) -> dict[str, str]:
    """``environment`` without what the pod of component ``name`` is not given (:func:`withheld_variables`)."""
    withheld = withheld_variables(name, granted)
    return {key: value for key, value in environment.items() if key not in withheld}


@contextlib.contextmanager
def kfp_tasks_in_pods(
    network: PodNetwork, granted: dict[str, set[str]] | None = None, run_id: str = "local"
) -> Iterator[None]:
    """Run every kfp.local SubprocessRunner task as a pod of ``network``.

    kfp.local starts each task's command through ``subprocess_task_handler.run_local_subprocess`` (kfp 2.17,
    pinned; tests/test_pods.py checks the seam is still there): this swaps it for one that runs the command
    in a fresh pod and deletes the pod, and whatever the task left running in it, when the command returns
    (when it raises, as on Ctrl-C, the pod is left to PodNetwork's exit). ``granted``
    (:func:`granted_variables`): each pod gets only its own Secrets' and ConfigMaps' variables. Each pod is labelled
    `pipeline/runid: run_id`, as KFP labels a run's pods (kubeflow/pipelines' API server serves a run's logs only
    from pods whose pipeline/runid label is that run's: backend/src/apiserver, TestReadRunLog_PodNotFromRun).
    """
    from kfp.local import subprocess_task_handler as handler

    original = handler.run_local_subprocess

    def run_in_pod(full_command: list[str], env_vars: dict[str, str] | None = None) -> int:
        name = task_name(full_command)
        pod = network.create_pod(name, labels={"pipeline/runid": run_id})
        env = {**pod_environment(name, {**os.environ, **(env_vars or {})}, granted), **network.env, **pod.env}
        # kfp.local lays env_vars over this process's own environment: unset the withheld inside the pod too
        unset = [f"--unset={variable}" for variable in sorted(withheld_variables(name, granted))]
        command = ["env", *unset, *full_command] if unset else full_command
        return_code = original(full_command=pod.command(command), env_vars=env)
        pod.delete()
        return return_code

    handler.run_local_subprocess = run_in_pod
    try:
        yield
    finally:
        handler.run_local_subprocess = original


# -- the simulated Kubernetes API and what it runs -----------------------------------------------------------


class SimulatedCluster:
    """A Kubernetes API (podsim.fake_kube) whose Deployments run as pods of ``network`` (see the module doc).

    ``image_path(image)``: the PATH standing in for a container image (its family's virtualenv).
    """

    def __init__(
        self, network: PodNetwork, image_path: Callable[[str], str], api_key: str = "", node_env: dict | None = None
    ) -> None:
        from podsim.fake_kube import FakeKube

        self.network, self.image_path = network, image_path
        self.node_env = dict(node_env or {})  # what this machine, as the node, gives every container
        self.api = FakeKube(host=HOST_ADDRESS)
        self.api.on_deployment_created = self._deployment_created
        self.api.on_service_created = lambda namespace, name: self._refresh_names()
        self.api.on_deleted = self._deleted
        self.api.pod_log = self._pod_log  # type: ignore[method-assign]
        self.secrets = {secrets.VLLM: {"VLLM_API_KEY": api_key or tokens.token_urlsafe(24)}}
        # (namespace, deployment) -> its replicas: (pod name, pod, container process, container log)
        self.running: dict[tuple[str, str], list[tuple[str, Pod, subprocess.Popen, Path]]] = {}
        self._lock = threading.RLock()

    def __enter__(self) -> SimulatedCluster:
        self.api.__enter__()
        kubeconfig = self.network.root / "kubeconfig.json"
        kubeconfig.write_text(json.dumps(self.kubeconfig()))
        self.network.env.update(KUBECONFIG=str(kubeconfig), **self.secrets[secrets.VLLM])
        return self

    def __exit__(self, *exc: object) -> None:
        for namespace, name in list(self.running):
            self._stop(namespace, name)
        self.api.__exit__(*exc)

    def kubeconfig(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "simulated", "cluster": {"server": self.api.host}}],
            "users": [{"name": "simulated", "user": {"token": "simulated"}}],
            "contexts": [
                {
                    "name": "simulated",
                    "context": {"cluster": "simulated", "user": "simulated", "namespace": CLUSTER_NAMESPACE},
                }
            ],
            "current-context": "simulated",
        }

    # -- Deployments run as pods ------------------------------------------------------------------------

    def _deployment_created(self, namespace: str, name: str) -> None:
        deployment = self.api.get("deployments", namespace, name) or {}
        template = deployment["spec"]["template"]
        with self._lock:
            started = self.running.setdefault((namespace, name), [])
        for replica in range(deployment["spec"].get("replicas", 1)):
            pod_name = f"{name}-{replica}"[:63]
            container = template["spec"]["containers"][0]
            obj = self.api.add(
                "pods",
                namespace,
                {
                    "metadata": {"name": pod_name, "labels": dict(template["metadata"]["labels"])},
                    "spec": template["spec"],
                    "status": {"phase": "Pending", "conditions": []},
                },
            )
            env, missing = self._container_env(container)
            if missing:  # what the kubelet reports for a Secret that does not exist
                self._set_waiting(obj, container, "CreateContainerConfigError", f'secret "{missing}" not found')
                continue
            try:
                path = f"{self.image_path(container['image'])}:{os.environ.get('PATH', '')}"
            except SpectrainError as exc:  # the kubelet's word for an image it cannot use
                self._set_waiting(obj, container, "InvalidImageName", exc.what)
                continue
            pod = self.network.create_pod(pod_name, labels=dict(template["metadata"].get("labels") or {}))
            log = pod.scratch / "container.log"
            with open(log, "wb") as handle:
                process = subprocess.Popen(
                    pod.command([*container.get("command", []), *container.get("args", [])]),
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    env={**pod.env, **self.node_env, "PATH": path, **env},
                    start_new_session=True,
                )
            with self._lock:
                started.append((pod_name, pod, process, log))
            with self.api._lock:
                obj["status"].update(
                    phase="Running",
                    podIP=pod.address,
                    containerStatuses=[_container_status(container, running=True, ready=False)],
                )
            threading.Thread(
                target=self._probe, args=(namespace, name, obj, container, pod, process), daemon=True
            ).start()
        self._refresh_names()

    def _container_env(self, container: dict[str, Any]) -> tuple[dict[str, str], str]:
        env: dict[str, str] = {}
        for variable in container.get("env", []):
            if "value" in variable:
                env[variable["name"]] = variable["value"]
                continue
            ref = variable["valueFrom"]["secretKeyRef"]
            value = self.secrets.get(ref["name"], {}).get(ref["key"])
            if value is not None:
                env[variable["name"]] = value
            elif not ref.get("optional"):
                return env, ref["name"]
        return env, ""

    def _probe(self, namespace: str, name: str, obj: dict, container: dict, pod: Pod, process: subprocess.Popen):
        """Poll the readiness probe until it answers (the replica is then ready) or the container exits."""
        probe = container["readinessProbe"]["httpGet"]
        port = probe["port"]
        if isinstance(port, str):
            port = next(p["containerPort"] for p in container["ports"] if p["name"] == port)
        url = f"http://{pod.address}:{port}{probe['path']}"
        while process.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            time.sleep(1.0)
        with self.api._lock:
            if process.poll() is not None:
                message = f"container exited with code {process.returncode} (the simulation does not restart it)"
                self._set_waiting(obj, container, "CrashLoopBackOff", message)
                return
            obj["status"]["containerStatuses"] = [_container_status(container, running=True, ready=True)]
            obj["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
            deployment = self.api.get("deployments", namespace, name)
            if deployment is not None:
                ready = (deployment["status"].get("readyReplicas") or 0) + 1
                deployment["status"].update(readyReplicas=ready, availableReplicas=ready, updatedReplicas=ready)

    def _set_waiting(self, obj: dict, container: dict, reason: str, message: str) -> None:
        with self.api._lock:
            status = _container_status(container, running=False, ready=False)
            status["state"] = {"waiting": {"reason": reason, "message": message}}
            obj["status"].update(phase="Running" if reason == "CrashLoopBackOff" else "Pending")
            obj["status"]["containerStatuses"] = [status]

    def _deleted(self, kind: str, namespace: str, name: str) -> None:
        if kind == "deployments":
            self._stop(namespace, name)
        self._refresh_names()

    def _stop(self, namespace: str, name: str) -> None:
        with self._lock:
            started = self.running.pop((namespace, name), [])
        for _, pod, process, _ in started:
            pod.delete()
            process.wait()

    def _pod_log(self, namespace: str, name: str) -> str:
        with self._lock:
            logs = [
                log
                for (ns, _), pods in self.running.items()
                for pod_name, _, _, log in pods
                if (ns, pod_name) == (namespace, name)
            ]
        return logs[0].read_text(errors="replace") if logs and logs[0].exists() else ""

    # -- Services: names in every pod's /etc/hosts ---------------------------------------------------------

    def _refresh_names(self) -> None:
        """Every Service's DNS names -> the address of its first running pod (a headless Service)."""
        from podsim.fake_kube import matches

        names: dict[str, str] = {}
        with self.api._lock:
            for (kind, namespace), services in list(self.api.objects.items()):
                if kind != "services":
                    continue
                pods = self.api.objects.get(("pods", namespace), {}).values()
                for name, service in services.items():
                    selector = ",".join(f"{k}={v}" for k, v in service["spec"]["selector"].items())
                    addresses = [
                        p["status"]["podIP"]
                        for p in pods
                        if p["status"].get("podIP") and matches(selector, p["metadata"]["labels"])
                    ]
                    if addresses:
                        for dns in (f"{name}.{namespace}.svc.cluster.local", f"{name}.{namespace}.svc"):
                            names[dns] = addresses[0]
        self.network.set_names(names)


def _container_status(container: dict[str, Any], *, running: bool, ready: bool) -> dict[str, Any]:
    return {
        "name": container["name"],
        "image": container["image"],
        "imageID": "",
        "ready": ready,
        "restartCount": 0,
        "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}} if running else {},
    }
