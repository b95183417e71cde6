"""A FAKE Kubernetes API server: the API of the pod simulation (podsim.pods), and the cluster serve mode's tests'.

It stands in for a Kubernetes API that cannot run here: real HTTP (stdlib http.server on 127.0.0.1 or the
address given, a free port, a thread), so the official `kubernetes` client does its real serialization, URL building and error
handling, but the server side is only this file. Behaviour of the cluster mode is verified against this
fake alone, never against a real API server, kubelet or scheduler.

It implements only what components/serve/cluster.py calls, namespaced:
  apps/v1 deployments: create, get, list, delete;  v1 services: create, get, list, delete;
  v1 pods: list, get, log (text);  v1 events: list.
Lists honour `labelSelector` (k=v, k==v, k!=v, k, !k; comma = and) and `fieldSelector`
(involvedObject.name=..., metadata.name=...). Objects live in memory; every request is recorded.
Nothing runs pods here: a test seeds them with add_pod() and marks Deployments ready with mark_ready();
podsim.pods.SimulatedCluster runs them through the hooks (on_deployment_created, on_service_created,
on_deleted) and pod_log(). Deleting a Deployment also deletes pods carrying its selector's labels (what
garbage collection would do).
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit

from kubernetes import client

from podsim.http import Request, send_json


PATH = re.compile(
    r"^/(?:api/v1|apis/apps/v1)/namespaces/(?P<ns>[^/]+)/(?P<kind>deployments|services|pods|events)"
    r"(?:/(?P<name>[^/]+)(?P<log>/log)?)?$"
)
GROUP_OF = {"deployments": "/apis/apps/v1", "services": "/api/v1", "pods": "/api/v1", "events": "/api/v1"}
KIND_OF = {"deployments": "Deployment", "services": "Service", "pods": "Pod", "events": "Event"}


def matches(selector: str, labels: dict[str, str]) -> bool:
    """Kubernetes equality-based label selector semantics (what kubectl -l accepts, minus set syntax)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def field_matches(selector: str, obj: dict[str, Any]) -> bool:
    for term in filter(None, selector.split(",")):
        path, value = term.split("=", 1)
        node: Any = obj
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node != value:
            return False
    return True


class FakeKube:
    """The fake API server; use as a context manager, then ``api_client()`` for kubernetes client APIs."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.objects: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self.logs: dict[tuple[str, str], str] = {}
        self.requests: list[Request] = []
        self.unhandled: list[Request] = []
        # Called outside the lock after a change is stored, with (namespace, name); on_deleted also gets the kind.
        self.on_deployment_created: Callable[[str, str], None] | None = None
        self.on_service_created: Callable[[str, str], None] | None = None
        self.on_deleted: Callable[[str, str, str], None] | None = None
        self._lock = threading.RLock()
        self._clock = itertools.count(1)
        self._server = ThreadingHTTPServer((host, 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # -- lifecycle ------------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        address, port = self._server.server_address[:2]
        return f"http://{address!s}:{port}"

    def __enter__(self) -> FakeKube:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def api_client(self) -> client.ApiClient:
        return client.ApiClient(client.Configuration(host=self.host))

    # -- what a test does to the "cluster" -----------------------------------------------------------

    def _timestamp(self) -> str:
        """Strictly increasing, one second per call."""
        tick = next(self._clock)
        return f"2026-01-01T{tick // 3600 % 24:02d}:{tick // 60 % 60:02d}:{tick % 60:02d}Z"

    def add(self, kind: str, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Store ``obj`` as if created (metadata filled in); 409-free, for seeding."""
        with self._lock:
            obj = json.loads(json.dumps(obj))
            meta = obj.setdefault("metadata", {})
            meta.update(
                namespace=namespace,
                uid=str(uuid.uuid4()),
                resourceVersion=str(next(self._clock)),
                creationTimestamp=meta.get("creationTimestamp") or self._timestamp(),
            )
            obj.setdefault("kind", KIND_OF[kind])
            if kind == "deployments":
                obj["status"] = {"replicas": obj["spec"].get("replicas", 1), "observedGeneration": 1}
            self.objects.setdefault((kind, namespace), {})[meta["name"]] = obj
            return obj

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self.objects.get((kind, namespace), {}).get(name)

    def names(self, kind: str, namespace: str) -> list[str]:
        with self._lock:
            return sorted(self.objects.get((kind, namespace), {}))

    def mark_ready(self, namespace: str, name: str) -> None:
        """Every replica of Deployment ``name`` reports ready."""
        with self._lock:
            deployment = self.objects[("deployments", namespace)][name]
            replicas = deployment["spec"].get("replicas", 1)
            deployment["status"].update(readyReplicas=replicas, availableReplicas=replicas, updatedReplicas=replicas)

    def add_pod(
        self,
        namespace: str,
        deployment: str,
        *,
        waiting: tuple[str, str] | None = None,
        unschedulable: str = "",
        events: tuple[tuple[str, str], ...] = (),
        log: str = "",
    ) -> str:
        """A pod of ``deployment`` (its template labels): a waiting container (reason, message) and/or an
        Unschedulable scheduling condition, with Events (reason, message) about it and a log; returns its name."""
        with self._lock:
            template = self.objects[("deployments", namespace)][deployment]["spec"]["template"]
            name = f"{deployment}-5d8f7c9b6-{len(self.objects.get(('pods', namespace), {})):05d}"
            container = template["spec"]["containers"][0]
            status: dict[str, Any] = {"phase": "Pending", "conditions": []}
            if waiting:
                status["phase"] = "Running"
                status["containerStatuses"] = [
                    {
                        "name": container["name"],
                        "image": container["image"],
                        "imageID": "",
                        "ready": False,
                        "restartCount": 4,
                        "state": {"waiting": {"reason": waiting[0], "message": waiting[1]}},
                    }
                ]
            if unschedulable:
                status["conditions"].append(
                    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable}
                )
            self.add(
                "pods",
                namespace,
                {
                    "metadata": {"name": name, "labels": dict(template["metadata"]["labels"])},
                    "spec": template["spec"],
                    "status": status,
                },
            )
            for reason, message in events:
                self.add_event(namespace, "Pod", name, reason, message)
            self.logs[(namespace, name)] = log
            return name

    def pod_log(self, namespace: str, name: str) -> str:
        """The log of pod ``name`` (what a test set with add_pod)."""
        return self.logs.get((namespace, name), "")

    def add_event(self, namespace: str, kind: str, name: str, reason: str, message: str) -> None:
        stamp = self._timestamp()
        self.add(
            "events",
            namespace,
            {
                "metadata": {"name": f"{name}.{uuid.uuid4().hex[:16]}"},
                "reason": reason,
                "message": message,
                "type": "Warning",
                "count": 1,
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "involvedObject": {"kind": kind, "name": name, "namespace": namespace, "apiVersion": "v1"},
            },
        )

    # -- the HTTP side ----------------------------------------------------------------------------------

    def _handle(self, method: str, raw_path: str, body: Any) -> tuple[int, Any]:
        split = urlsplit(raw_path)
        query = dict(parse_qsl(split.query))
        request = Request(method, split.path, query, body)
        callback: Callable[[], None] | None = None
        with self._lock:
            self.requests.append(request)
            route = PATH.match(split.path)
            if route is None or GROUP_OF[route["kind"]] != split.path.split("/namespaces/")[0]:
                self.unhandled.append(request)
                return status(404, "NotFound", f"fake: no such endpoint {split.path}")
            kind, namespace, name = route["kind"], route["ns"], route["name"]
            store = self.objects.setdefault((kind, namespace), {})
            if route["log"]:
                if method != "GET" or kind != "pods" or name not in store:
                    return status(404, "NotFound", f'pods "{name}" not found')
                lines = self.pod_log(namespace, name).splitlines(keepends=True)
                return 200, "".join(lines[-int(query["tailLines"]) :] if "tailLines" in query else lines)
            if method == "POST" and name is None and kind in ("deployments", "services"):
                if body["metadata"]["name"] in store:
                    return status(409, "AlreadyExists", f'{kind} "{body["metadata"]["name"]}" already exists')
                created = self.add(kind, namespace, body)
                reply: tuple[int, Any] = (201, created)
                hook = self.on_deployment_created if kind == "deployments" else self.on_service_created
                if hook:
                    callback = functools.partial(hook, namespace, created["metadata"]["name"])
            elif method == "GET" and name is None:
                items = [
                    o
                    for o in store.values()
                    if matches(query.get("labelSelector", ""), o["metadata"].get("labels") or {})
                    and field_matches(query.get("fieldSelector", ""), o)
                ]
                return 200, {
                    "kind": f"{KIND_OF[kind]}List",
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": "1"},
                    "items": items,
                }
            elif method == "GET":
                return (200, store[name]) if name in store else status(404, "NotFound", f'{kind} "{name}" not found')
            elif method == "DELETE" and kind in ("deployments", "services"):
                if name not in store:
                    return status(404, "NotFound", f'{kind} "{name}" not found')
                removed = store.pop(name)
                if kind == "deployments":  # garbage collection of its pods
                    pods = self.objects.get(("pods", namespace), {})
                    selector = ",".join(f"{k}={v}" for k, v in removed["spec"]["selector"]["matchLabels"].items())
                    for pod in [p for p, o in pods.items() if matches(selector, o["metadata"]["labels"])]:
                        del pods[pod]
                if self.on_deleted:
                    callback = functools.partial(self.on_deleted, kind, namespace, name)
                reply = status(200, "", "", success=True)
            else:
                self.unhandled.append(request)
                return status(405, "MethodNotAllowed", f"fake: {method} {split.path} not implemented")
        if callback:  # outside the lock: it may call mark_ready from another thread later
            callback()
        return reply

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                code, payload = fake._handle(self.command, self.path, json.loads(raw) if raw else None)
                send_json(self, code, payload)

            do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

            def log_message(self, *_: object) -> None:
                pass

        return Handler


def status(code: int, reason: str, message: str, success: bool = False) -> tuple[int, dict[str, Any]]:
    """A metav1.Status body, as the API server answers errors (and deletions)."""
    return code, {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if success else "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
