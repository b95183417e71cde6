"""Helpers for the project's stand-in HTTP servers in tests (fake KFP and Kubernetes APIs, flaky endpoints)."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any


def send_json(handler: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
    """Answer with ``payload`` as JSON (a str goes out as text/plain)."""
    text = isinstance(payload, str)
    data = payload.encode() if text else json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "text/plain" if text else "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
