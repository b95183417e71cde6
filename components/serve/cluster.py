"""Cluster serve mode: vLLM as a Kubernetes Deployment + ClusterIP Service, created and deleted by run id.

The serve step runs in a pod; it creates both objects in its own namespace through the Kubernetes API,
waits until every replica is ready (failing fast, with the pods' events and log tail, on crash loops,
image pull errors, missing secrets or unschedulable pods) and deletes them again on failure. The exit
handler deletes exactly the objects labelled with the run id. API calls (all within manifests/base/rbac.yaml):
deployments create/get/list/delete, services create/list/delete, pods list, pods/log get, events list.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException

from spectrain.components.serve.config import ServeConfig
from spectrain import paths, secrets, vllm
from spectrain.errors import SpectrainError
from spectrain.models import EMBEDDED, resolve_base_model

PORT = 8000
MODEL_CACHE_PATH = paths.PVC_MODEL_CACHE  # where the pipeline mounts the model cache PVC in every step
GPU_RESOURCE = "nvidia.com/gpu"
API_KEY_SECRET, HF_SECRET = secrets.VLLM, secrets.HF  # VLLM_API_KEY required, HF_TOKEN optional
MANAGED_BY = {"app.kubernetes.io/managed-by": "spectrain"}
RUN_ID_LABEL = "spectrain.dev/run-id"
NAME_PREFIX = "spectrain-vllm-"
SERVICEACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# Container states that do not heal by waiting (ErrImagePull turns into ImagePullBackOff once it is final).
FATAL_WAITING = (
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
)
POLL_S = 5.0
LOG_LINES = 40  # shown, after the error lines found in the LOG_FETCHED before them
LOG_FETCHED = 2000
EVENTS_SHOWN = 15


class Api(NamedTuple):
    """The two API groups the serve step talks to (tests point both at a fake server)."""

    apps: client.AppsV1Api
    core: client.CoreV1Api


def connect() -> Api:
    """In-cluster credentials (the pod's service account), else the local kubeconfig."""
    try:
        kube_config.load_incluster_config()
    except kube_config.ConfigException:
        try:
            kube_config.load_kube_config()
        except (kube_config.ConfigException, OSError) as exc:
            raise SpectrainError(
                f"no Kubernetes credentials: not in a pod and no usable kubeconfig ({exc})",
                where="serve.mode",
                fix="run in the cluster, or set KUBECONFIG",
            ) from exc
    return Api(client.AppsV1Api(), client.CoreV1Api())


def own_namespace(configured: str = "") -> str:
    """``configured``, else the pod's namespace (service account file), else the kubeconfig context's."""
    if configured:
        return configured
    if SERVICEACCOUNT_NAMESPACE.is_file():
        return SERVICEACCOUNT_NAMESPACE.read_text().strip()
    try:
        _, active = kube_config.list_kube_config_contexts()
    except (kube_config.ConfigException, OSError) as exc:
        raise SpectrainError(
            "cannot tell which namespace to use", where="serve.namespace", fix="set namespace, or run in a pod"
        ) from exc
    return active.get("context", {}).get("namespace", "default")


# -- names and labels ---------------------------------------------------------------------------------


def _fit(cleaned: str, original: str, limit: int) -> str:
    """``cleaned`` if it is ``original`` and fits; else cut, with a digest of ``original`` so ids stay distinct."""
    if cleaned == original and len(cleaned) <= limit:
        return cleaned
    digest = hashlib.sha256(original.encode()).hexdigest()[:8]
    head = cleaned[: limit - len(digest) - 1].rstrip("-_.")
    return f"{head}-{digest}" if head else digest


def run_label(run_id: str) -> str:
    """``run_id`` as a valid label value (<= 63 chars of [A-Za-z0-9-_.], alphanumeric at both ends)."""
    return _fit(re.sub(r"[^A-Za-z0-9_.-]+", "-", run_id).strip("-_."), run_id, 63)


def resource_name(run_id: str) -> str:
    """``spectrain-vllm-<run id>`` as a valid DNS-1035 label (Service names): lowercase, <= 63 chars."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", run_id.lower()).strip("-")
    return NAME_PREFIX + _fit(cleaned, run_id, 63 - len(NAME_PREFIX))


def labels(run_id: str) -> dict[str, str]:
    return {**MANAGED_BY, RUN_ID_LABEL: run_label(run_id)}


def label_selector(run_id: str) -> str:
    return ",".join(f"{key}={value}" for key, value in labels(run_id).items())


# -- manifests ------------------------------------------------------------------------------------------


def model_reference(base_model: str) -> str:
    """What the vLLM pods load: a directory on the model cache PVC, or a hub id they download into it.

    The embedded model is converted here once, into the cache (SPECTRAIN_MODEL_CACHE=/models in the image).
    """
    if (
        base_model not in ("", EMBEDDED)
        and not base_model.startswith(("/", ".", "~"))
        and not Path(base_model).exists()
    ):
        return base_model  # a hub id: vLLM downloads it into HF_HOME on the PVC
    path = resolve_base_model(base_model)
    if not Path(path).is_relative_to(MODEL_CACHE_PATH):
        raise SpectrainError(
            f"{path} is not on the model cache PVC (mounted at {MODEL_CACHE_PATH}), so the vLLM pods cannot read it",
            where="serve.base_model",
            fix=f"copy the checkpoint under {MODEL_CACHE_PATH}, or pass a hub id",
        )
    return path


def deployment_manifest(config: ServeConfig, model: str) -> dict[str, Any]:
    """The vLLM Deployment: the same `vllm serve` arguments as local mode, bound to 0.0.0.0:8000."""
    name, pod_labels = resource_name(config.run_id), labels(config.run_id)

    def probe(period_s: int, failures: int) -> dict[str, Any]:
        # /health needs no API key (/v1/models does).
        return {"httpGet": {"path": "/health", "port": PORT}, "periodSeconds": period_s, "failureThreshold": failures}

    container = {
        "name": "vllm",
        "image": config.image,
        "command": ["vllm"],
        "args": dataclasses.replace(config, host="0.0.0.0").vllm_arguments(model, PORT, on_gpu=config.gpus > 0),
        "ports": [{"name": "http", "containerPort": PORT}],
        "env": [
            {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": API_KEY_SECRET, "key": "VLLM_API_KEY"}}},
            {
                "name": "HF_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": HF_SECRET, "key": "HF_TOKEN", "optional": True}},
            },
            {"name": "HF_HOME", "value": paths.IMAGE_CACHE_ENV["HF_HOME"]},
        ],
        "resources": {
            "requests": {"cpu": config.cpu, "memory": config.memory},
            "limits": {GPU_RESOURCE: config.gpus, "memory": config.memory},
        },
        "volumeMounts": [
            {"name": "model-cache", "mountPath": MODEL_CACHE_PATH},
            {"name": "shm", "mountPath": "/dev/shm"},
        ],
        # Loading (and downloading) may take the whole ready_timeout_s; liveness only counts after that.
        "startupProbe": probe(10, math.ceil(config.ready_timeout_s / 10) + 1),
        "readinessProbe": probe(5, 3),
        "livenessProbe": probe(15, 4),
    }
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": [
            {"name": "model-cache", "persistentVolumeClaim": {"claimName": config.model_cache_pvc}},
            {"name": "shm", "emptyDir": {"medium": "Memory"}},
        ],  # tensor parallelism shares memory here
        "automountServiceAccountToken": False,  # vLLM needs no Kubernetes API access
        # the serve image's user; fsGroup makes a volume that supports it (block storage) writable for it
        "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000, "runAsNonRoot": True},
        "enableServiceLinks": False,  # a Service named `vllm` would inject VLLM_PORT=tcp://..., which vLLM reads
    }
    if config.node_selector:
        pod_spec["nodeSelector"] = dict(config.node_selector)
    if config.tolerations:
        pod_spec["tolerations"] = list(config.tolerations)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": pod_labels},
        "spec": {
            "replicas": config.replicas,
            "selector": {"matchLabels": pod_labels},
            "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
        },
    }


def service_manifest(run_id: str) -> dict[str, Any]:
    """A ClusterIP Service on port 8000 in front of the run's vLLM pods."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": resource_name(run_id), "labels": labels(run_id)},
        "spec": {
            "type": "ClusterIP",
            "selector": labels(run_id),
            "ports": [{"name": "http", "port": PORT, "targetPort": "http"}],
        },
    }


# -- start, wait, stop ----------------------------------------------------------------------------------


def _api_error(exc: ApiException, doing: str, namespace: str) -> SpectrainError:
    fixes = {
        403: "apply manifests/base/rbac.yaml and run the pipeline as spectrain-pipeline-runner",
        409: "stop the old one: `spectrain step stop-server --mode cluster --run-id ...`",
    }
    return SpectrainError(
        f"Kubernetes refused to {doing} (HTTP {exc.status} {exc.reason}): {exc.body}",
        where=f"namespace {namespace}",
        fix=fixes.get(exc.status or 0),
    )


def _delete(api: Api, kind: str, name: str, namespace: str) -> bool:
    """Delete one object (its pods go with it); False if it was already gone."""
    remove: Callable[..., Any] = {
        "deployment": api.apps.delete_namespaced_deployment,
        "service": api.core.delete_namespaced_service,
    }[kind]
    try:
        remove(name, namespace, propagation_policy="Background")
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise _api_error(exc, f"delete {kind} {name}", namespace) from exc


def start(config: ServeConfig, api: Api, *, poll_s: float = POLL_S) -> dict[str, Any]:
    """Create the run's Deployment and Service, wait until every replica is ready; delete both on failure."""
    started = time.monotonic()
    namespace, name = own_namespace(config.namespace), resource_name(config.run_id)
    model = model_reference(config.base_model)
    created: list[str] = []
    try:
        for kind, create, body in (
            ("deployment", api.apps.create_namespaced_deployment, deployment_manifest(config, model)),
            ("service", api.core.create_namespaced_service, service_manifest(config.run_id)),
        ):
            try:
                create(namespace, body)
            except ApiException as exc:
                raise _api_error(exc, f"create {kind} {name}", namespace) from exc
            created.append(kind)
        print(
            f"[serve] created deployment and service {namespace}/{name} ({config.replicas} x {config.gpus} GPU, "
            f"{config.image}); waiting up to {config.ready_timeout_s:.0f} s",
            flush=True,
        )
        wait_until_ready(api, namespace, config, poll_s)
    except BaseException:
        for kind in reversed(created):
            try:
                _delete(api, kind, name, namespace)
            except Exception as cleanup:  # never hide the original failure
                print(f"[serve] could not delete {kind} {namespace}/{name}: {cleanup}", flush=True)
        raise
    return {
        "endpoint": f"http://{name}.{namespace}.svc.cluster.local:{PORT}/v1",
        "model": config.served_model_name,
        "pid": 0,
        "log": "",
        "namespace": namespace,
        "name": name,
        "seconds": time.monotonic() - started,
    }


def wait_until_ready(api: Api, namespace: str, config: ServeConfig, poll_s: float = POLL_S) -> None:
    """Poll until readyReplicas == replicas; raise with events and a log tail on a fatal state or timeout."""
    name = resource_name(config.run_id)
    deadline = time.monotonic() + config.ready_timeout_s
    while True:
        try:
            status = api.apps.read_namespaced_deployment(name, namespace).status
            if status and (status.ready_replicas or 0) >= config.replicas:
                return
            pods = api.core.list_namespaced_pod(namespace, label_selector=label_selector(config.run_id)).items
            problems = [(pod, pod_problem(api, namespace, pod)) for pod in pods]
        except ApiException as exc:
            raise _api_error(exc, f"read deployment {name} or its pods", namespace) from exc
        culprit, problem = next(((p, text) for p, text in problems if text), (pods[0] if pods else None, None))
        problem = problem or replica_failure(status)
        if problem is None and time.monotonic() >= deadline:
            ready = (status.ready_replicas or 0) if status else 0
            problem = f"not ready after {config.ready_timeout_s:.0f} s ({ready}/{config.replicas} replicas ready)"
        if problem:
            report = diagnostics(api, namespace, name, pods, culprit)
            raise SpectrainError(
                f"vLLM is not serving: {problem}\n{report}",
                where=f"deployment {namespace}/{name}",
                fix="read the events and log above (image? GPUs and node selector? secret "
                f"{API_KEY_SECRET}? model path? memory?); raise ready_timeout_s if it was "
                "only slow",
            )
        time.sleep(poll_s)


def pod_problem(api: Api, namespace: str, pod: client.V1Pod) -> str | None:
    """Why ``pod`` will not become ready by waiting, or None."""
    status, name = pod.status, pod.metadata.name
    if status is None:
        return None
    if status.phase == "Failed":
        return f"pod {name} failed: {status.reason or ''} {status.message or ''}".rstrip()
    for container in (status.init_container_statuses or []) + (status.container_statuses or []):
        waiting = container.state.waiting if container.state else None
        if waiting and waiting.reason in FATAL_WAITING:
            return f"pod {name}, container {container.name}: {waiting.reason}: {waiting.message or ''}".rstrip(": ")
    for condition in status.conditions or []:
        if condition.type == "PodScheduled" and condition.status == "False" and condition.reason == "Unschedulable":
            if any(e.reason == "TriggeredScaleUp" for e in events(api, namespace, name)):
                return None  # the cluster autoscaler is adding a node: wait for it
            return f"pod {name} cannot be scheduled: {condition.message or ''}"
    return None


def replica_failure(status: client.V1DeploymentStatus | None) -> str | None:
    """The Deployment cannot create pods at all (quota, admission webhook, ...)."""
    for condition in (status.conditions or []) if status else []:
        if condition.type == "ReplicaFailure" and condition.status == "True":
            return f"pods cannot be created: {condition.reason}: {condition.message}"
    return None


def events(api: Api, namespace: str, object_name: str) -> list[client.CoreV1Event]:
    found = api.core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={object_name}").items

    def when(event: client.CoreV1Event) -> float:
        moment = event.last_timestamp or event.event_time or event.metadata.creation_timestamp
        return moment.timestamp() if moment else 0.0

    return sorted(found, key=when)


def pod_log(api: Api, namespace: str, pod: str, lines: int | None = None) -> str:
    """The pod's log (its last ``lines``); of its previous container if the current one has none (crash loops)."""
    text = ""
    for previous in (False, True):
        try:
            text = api.core.read_namespaced_pod_log(pod, namespace, tail_lines=lines, previous=previous)
        except ApiException as exc:
            text = f"(no log: HTTP {exc.status} {exc.reason})"
            continue
        if text.strip():
            return text.rstrip()
    return text or "(empty log)"


def diagnostics(api: Api, namespace: str, name: str, pods: list[client.V1Pod], culprit: client.V1Pod | None) -> str:
    """Recent events of the Deployment and its pods, and the log tail of the failing (else first) pod."""
    try:
        found = [e for n in [name] + [p.metadata.name for p in pods[:3]] for e in events(api, namespace, n)]
        lines = [
            f"  {e.involved_object.kind}/{e.involved_object.name} {e.reason}: {e.message}"
            for e in found[-EVENTS_SHOWN:]
        ]
    except ApiException as exc:
        lines = [f"  (cannot list events: HTTP {exc.status} {exc.reason})"]
    text = "recent events:\n" + ("\n".join(lines) or "  (none)")
    if culprit is not None:
        tail = vllm.log_excerpt(pod_log(api, namespace, culprit.metadata.name, LOG_FETCHED), LOG_LINES)
        text += f"\nlog tail of pod {culprit.metadata.name}:\n" + "\n".join(f"  {line}" for line in tail.splitlines())
    return text


def stop(run_id: str, namespace: str, api: Api, log_copy: str | Path | None = None) -> dict[str, Any]:
    """Delete the Deployment and Service labelled with ``run_id`` and managed by spectrain; nothing else.

    With ``log_copy``, first save the logs of the run's vLLM pods there. Harmless when nothing exists.
    """
    selector, wanted = label_selector(run_id), labels(run_id)

    def ours(items: list[Any]) -> list[str]:  # re-checked: never trust a selector alone with deletions
        return [i.metadata.name for i in items if wanted.items() <= (i.metadata.labels or {}).items()]

    try:
        deployments = ours(api.apps.list_namespaced_deployment(namespace, label_selector=selector).items)
        services = ours(api.core.list_namespaced_service(namespace, label_selector=selector).items)
        if log_copy and deployments:
            pods = ours(api.core.list_namespaced_pod(namespace, label_selector=selector).items)
            Path(log_copy).parent.mkdir(parents=True, exist_ok=True)
            Path(log_copy).write_text("".join(f"==> pod {p} <==\n{pod_log(api, namespace, p)}\n" for p in pods))
    except ApiException as exc:
        raise _api_error(exc, f"list the objects of run {run_id}", namespace) from exc
    deleted = [
        f"{kind}/{n}"
        for kind, names in (("deployment", deployments), ("service", services))
        for n in names
        if _delete(api, kind, n, namespace)
    ]
    print(
        f"[stop-server] run '{run_id}' in {namespace}: "
        + (f"deleted {', '.join(deleted)}" if deleted else "nothing to delete"),
        flush=True,
    )
    return {"stopped": bool(deleted), "deleted": deleted}
