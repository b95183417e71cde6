"""The plumbing of a stand-in JSON API served from a thread: the request it records and its JSON answer. The
simulated Kubernetes API uses it, and so do the tests' stand-ins (tests/support/servers.py, the stand-in vLLM,
tests/support/fake_kfp.py): standard library only, so that every environment can import it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any


@dataclass
class Request:
    """One request as a stand-in API server received it."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    authorization: str | None = None


def send_json(handler: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
    """Answer with ``payload`` as JSON (a str goes out as text/plain)."""
    text = isinstance(payload, str)
    data = payload.encode() if text else json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "text/plain" if text else "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
