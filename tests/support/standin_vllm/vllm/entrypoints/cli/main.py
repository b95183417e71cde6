"""`vllm serve` as the stand-in answers it (see the package's docstring)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from podsim.http import send_json  # (started in the project's root, as spectrain starts vLLM)

REPLY = "A stand-in reply."
# How long a generation takes (STANDIN_VLLM_REPLY_SECONDS, default 0: at once).
REPLY_SECONDS = float(os.environ.get("STANDIN_VLLM_REPLY_SECONDS", "0"))


def arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vllm")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve")
    serve.add_argument("model")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--served-model-name", default="")
    serve.add_argument("--max-model-len", type=int, default=2048)
    return parser.parse_known_args(argv)[0]  # the rest (dtype, seed, eager, speculative config) changes nothing here


def handler(name: str, max_model_len: int, api_key: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format, *args):  # noqa: A002  (the base class's parameter name)
            print(f"{self.command} {self.path} -> {args[1] if len(args) > 1 else ''}", flush=True)

        def answer(self, status: int, body: dict | str) -> None:
            send_json(self, status, body)

        def authorised(self) -> bool:
            if self.headers.get("Authorization") == f"Bearer {api_key}" or not api_key:
                return True
            self.answer(401, {"error": "Unauthorized"})
            return False

        def do_GET(self):  # noqa: N802  (http.server's name)
            if self.path == "/health":
                self.answer(200, {})
            elif self.path == "/metrics":
                self.answer(200, "")
            elif self.path == "/v1/models" and self.authorised():
                self.answer(
                    200, {"object": "list", "data": [{"id": name, "object": "model", "max_model_len": max_model_len}]}
                )
            elif self.path != "/v1/models":
                self.answer(404, {"error": "Not Found"})

        def do_POST(self):  # noqa: N802
            request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if not self.authorised():
                return
            time.sleep(REPLY_SECONDS)  # a test that kills a client or the server mid-run needs a run to last
            usage = {"prompt_tokens": 8, "completion_tokens": 4, "total_tokens": 12}
            if self.path == "/v1/chat/completions":
                message = {"role": "assistant", "content": REPLY}
                choice = {"index": 0, "message": message, "finish_reason": "stop"}
                self.answer(
                    200,
                    {"id": "standin", "object": "chat.completion", "model": name, "choices": [choice], "usage": usage},
                )
            elif self.path == "/v1/completions":
                choice = {"index": 0, "text": REPLY, "finish_reason": "stop"}
                self.answer(
                    200,
                    {"id": "standin", "object": "text_completion", "model": name, "choices": [choice], "usage": usage},
                )
            elif self.path == "/tokenize":
                tokens = list(range(len(json.dumps(request.get("messages") or request.get("prompt", "")).split())))
                self.answer(200, {"tokens": tokens, "count": len(tokens), "max_model_len": max_model_len})
            else:
                self.answer(404, {"error": "Not Found"})

    return Handler


def main() -> int:
    args = arguments(sys.argv[1:])
    # vLLM's API server runs its engine in a child process of the same session: so does the stand-in
    engine = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(60)"])
    name = args.served_model_name or args.model
    server = ThreadingHTTPServer(
        (args.host, args.port), handler(name, args.max_model_len, os.environ.get("VLLM_API_KEY", ""))
    )
    print(f"stand-in vLLM for {args.model} (engine pid {engine.pid})\nApplication startup complete.", flush=True)
    try:
        server.serve_forever()
    finally:
        engine.kill()
    return 0
