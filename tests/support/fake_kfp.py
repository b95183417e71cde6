"""FAKE Kubeflow Pipelines API server, for tests only.

A real KFP API server needs a Kubernetes cluster, MySQL and Argo, none of which can run here, so this
module stands in for one: a stdlib `http.server` on 127.0.0.1 (a free port, in a thread) that speaks just
enough of the KFP v2beta1 REST API (JSON field names as kfp_server_api sends and parses them) for
`spectrain submit / schedule / runs` driven by a real `kfp.Client`:

  GET    /apis/v2beta1/healthz
  POST   /apis/v2beta1/experiments            GET /apis/v2beta1/experiments        GET /apis/v2beta1/experiments/{id}
  POST   /apis/v2beta1/runs                   GET /apis/v2beta1/runs
  POST   /apis/v2beta1/recurringruns          GET /apis/v2beta1/recurringruns
  GET    /apis/v2beta1/recurringruns/{id}     DELETE /apis/v2beta1/recurringruns/{id}
  POST   /apis/v2beta1/recurringruns/{id}:enable          POST /apis/v2beta1/recurringruns/{id}:disable

Objects live in memory. List filters support only `display_name EQUALS`, sorting only `created_at [desc]`,
and there are no page tokens: anything else is answered 400 rather than silently ignored. Every request is
recorded (method, path, query, JSON body, Authorization header) for tests to assert on.
"""

from __future__ import annotations

import datetime
import itertools
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from podsim.http import Request, send_json

API = "/apis/v2beta1"
COLLECTIONS = {"experiments": "experiment_id", "runs": "run_id", "recurringruns": "recurring_run_id"}
# The list field of each response; ListRecurringRunsResponse's proto field is literally `recurringRuns`.
LIST_KEYS = {"experiments": "experiments", "runs": "runs", "recurringruns": "recurringRuns"}
EPOCH = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class FakeKfpServer:
    """In-memory fake KFP v2beta1 API server; use as a context manager, or start() / stop()."""

    def __init__(self, multi_user: bool = False, release: str = "2.17.0"):
        self.multi_user = multi_user
        self.release = release  # healthz's tag_name, as the real server reports its build
        self.requests: list[Request] = []
        self.objects: dict[str, dict[str, dict]] = {name: {} for name in COLLECTIONS}
        self._clock = itertools.count(1)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-kfp", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeKfpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> FakeKfpServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- what tests look at ---

    def calls(self, method: str | None = None, path: str | None = None) -> list[Request]:
        """Recorded requests, optionally only those with this method and/or path (exact, without query)."""
        return [r for r in self.requests if (method is None or r.method == method) and (path is None or r.path == path)]

    def writes(self) -> list[Request]:
        """Requests that change state (everything but GET)."""
        return [r for r in self.requests if r.method != "GET"]

    @property
    def experiments(self) -> list[dict]:
        return list(self.objects["experiments"].values())

    @property
    def runs(self) -> list[dict]:
        return list(self.objects["runs"].values())

    @property
    def recurring_runs(self) -> list[dict]:
        return list(self.objects["recurringruns"].values())

    # --- the API ---

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        if not path.startswith(API + "/"):
            raise ApiError(404, f"fake KFP: no route {method} {path}")
        parts = path[len(API) + 1 :].split("/")
        if parts == ["healthz"] and method == "GET":
            return 200, {"multi_user": self.multi_user, "pipeline_store": "database", "tag_name": self.release}
        collection = parts[0]
        if collection not in COLLECTIONS or len(parts) > 2:
            raise ApiError(404, f"fake KFP: no route {method} {path}")
        if len(parts) == 1:
            if method == "POST":
                return 200, self._create(collection, body)
            if method == "GET":
                return 200, self._list(collection, query)
        else:
            object_id, _, action = parts[1].partition(":")
            stored = self._get(collection, object_id)
            if method == "GET" and not action:
                return 200, stored
            if method == "DELETE" and not action:
                del self.objects[collection][object_id]
                return 200, {}
            if method == "POST" and collection == "recurringruns" and action in ("enable", "disable"):
                stored["mode"] = action.upper()
                stored["status"] = action.upper() + "D"
                return 200, {}
        raise ApiError(404, f"fake KFP: no route {method} {path}")

    def _get(self, collection: str, object_id: str) -> dict:
        try:
            return self.objects[collection][object_id]
        except KeyError:
            raise ApiError(404, f"{collection[:-1]} {object_id} not found") from None

    def _create(self, collection: str, body: Any) -> dict:
        if not isinstance(body, dict) or not body.get("display_name"):
            raise ApiError(400, f"{collection}: a JSON object with display_name is required")
        if collection != "experiments":
            self._get("experiments", body.get("experiment_id", ""))
            if not body.get("pipeline_spec") and not body.get("pipeline_version_reference"):
                raise ApiError(400, f"{collection}: pipeline_spec or pipeline_version_reference is required")
        now = (EPOCH + datetime.timedelta(seconds=next(self._clock))).isoformat().replace("+00:00", "Z")
        stored = dict(body, created_at=now)
        stored[COLLECTIONS[collection]] = str(uuid.uuid4())
        if collection == "experiments":
            stored["storage_state"] = "AVAILABLE"
        elif collection == "runs":
            stored.update(state="PENDING", storage_state="AVAILABLE")
        else:
            stored["mode"] = stored.get("mode") or "ENABLE"
            stored["status"] = stored["mode"] + "D"
            stored["max_concurrency"] = str(stored.get("max_concurrency", 1))  # int64: a JSON string
        self.objects[collection][stored[COLLECTIONS[collection]]] = stored
        return stored

    def _list(self, collection: str, query: dict[str, str]) -> dict:
        if query.get("page_token"):
            raise ApiError(400, "fake KFP: page tokens are not implemented")
        found = list(self.objects[collection].values())
        if collection != "experiments" and query.get("experiment_id"):
            found = [o for o in found if o.get("experiment_id") == query["experiment_id"]]
        for predicate in json.loads(query["filter"]).get("predicates", []) if query.get("filter") else []:
            value = predicate.get("string_value", predicate.get("stringValue"))
            if (
                predicate.get("key") != "display_name"
                or predicate.get("operation") not in ("EQUALS", 1)
                or value is None
            ):
                raise ApiError(400, f"fake KFP: unsupported filter predicate {predicate}")
            found = [o for o in found if o.get("display_name") == value]
        sort_by = query.get("sort_by", "")
        if sort_by not in ("", "created_at", "created_at asc", "created_at desc"):
            raise ApiError(400, f"fake KFP: unsupported sort_by {sort_by!r}")
        if sort_by.endswith("desc"):
            found.reverse()  # insertion order is creation order
        total = len(found)
        size = int(query.get("page_size") or 0)
        if size:
            found = found[:size]
        response: dict[str, Any] = {"total_size": total}
        if found:  # proto3 JSON leaves empty lists out
            response[LIST_KEYS[collection]] = found
        if size and total > size:
            response["next_page_token"] = "fake-more"
        return response

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except json.JSONDecodeError:
                    body = raw.decode(errors="replace")
                query = dict(parse_qsl(url.query, keep_blank_values=True))
                with fake._lock:
                    fake.requests.append(
                        Request(self.command, url.path, query, body, self.headers.get("Authorization"))
                    )
                    try:
                        status, payload = fake.handle(self.command, url.path, query, body)
                    except ApiError as exc:
                        status, payload = (
                            exc.status,
                            {"code": 3 if exc.status == 400 else 5, "message": str(exc), "details": []},
                        )
                send_json(self, status, payload)

            do_GET = do_POST = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
                pass

        return Handler
