"""Helpers for the project's stand-in HTTP servers in tests (fake KFP and Kubernetes APIs, flaky endpoints)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


REPLY = {
    "id": "x",
    "object": "chat.completion",
    "created": 0,
    "model": "base",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


class FlakyServer:
    """A stand-in OpenAI chat endpoint, for what a real vLLM cannot do on cue: fail.

    Fails the first attempts of each prompt as scripted ('429', '503', 'slow'), then answers "ok";
    records every attempt as (prompt, time).
    """

    def __init__(self, script: dict[str, list[str]]):
        self.script, self.attempts = script, list[tuple[str, float]]()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # /v1/models
                send_json(self, 200, {"object": "list", "data": [{"id": "base", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                outer.attempts.append((prompt, time.monotonic()))
                failures = outer.script.get(prompt, [])
                failure = failures.pop(0) if failures else None
                if failure == "slow":
                    time.sleep(3)  # longer than the client's timeout
                    return
                status, payload = (int(failure), {"error": {"message": failure}}) if failure else (200, REPLY)
                send_json(self, status, payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def times(self, prompt: str) -> list[float]:
        return [t for p, t in self.attempts if p == prompt]
