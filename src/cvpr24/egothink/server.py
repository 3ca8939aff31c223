"""A minimal OpenAI-compatible ``/v1/chat/completions`` server on 127.0.0.1.

:func:`serve_local_judge` puts :class:`~cvpr24.egothink.local_judge.LocalJudge` behind it, so
the whole pipeline (HTTP client, retries, parsing) runs offline and in CI. The same
:class:`ChatServer` with another ``respond`` function is the stub used by the tests and the
benchmark (scripted errors, injected latency). It binds loopback only, never a public address.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: ``respond(body) -> str`` (the reply text) or ``(status, text_or_json_body)``.
Responder = Callable[[dict], "str | tuple[int, str | dict]"]


def completion(text: str, model: str) -> dict:
    """An OpenAI chat-completion response body holding ``text``."""
    return {"id": f"chatcmpl-{time.time_ns()}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}


class ChatServer:
    """Serve ``respond`` as a chat-completions endpoint on ``127.0.0.1:port`` (0 = any free port).

    Use as a context manager; ``url`` is the ``/v1`` base URL. Every request body is kept in
    ``requests`` (for tests that check bodies field by field).
    """

    def __init__(self, respond: Responder, port: int = 0, latency_s: float = 0.0, model: str = "stub"):
        self.respond, self.latency_s, self.model = respond, latency_s, model
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, status: int, payload: str | dict) -> None:
                data = (json.dumps(payload) if isinstance(payload, dict) else payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers.get("Content-Length", 0))
                try:
                    body = json.loads(self.rfile.read(n) or b"{}")
                except json.JSONDecodeError:
                    self._send(400, {"error": {"message": "invalid JSON body"}})
                    return
                if not self.path.split("?")[0].rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"unknown path {self.path}"}})
                    return
                with server._lock:
                    server.requests.append(body)
                if server.latency_s:
                    time.sleep(server.latency_s)
                try:
                    out = server.respond(body)
                except ValueError as e:
                    self._send(400, {"error": {"message": str(e)}})
                    return
                status, payload = (200, out) if isinstance(out, str) else out
                if status == 200 and isinstance(payload, str):
                    payload = completion(payload, body.get("model", server.model))
                elif isinstance(payload, str):
                    payload = {"error": {"message": payload}}
                self._send(status, payload)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ChatServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def serve_forever(self) -> None:
        try:
            self._httpd.serve_forever()
        finally:
            self._httpd.server_close()


def local_judge_responder(judge=None) -> Responder:
    """``respond`` backed by a LocalJudge: the grading prompt in, its judgment text out."""
    from cvpr24.egothink.local_judge import LocalJudge

    judge = judge or LocalJudge()

    def respond(body: dict) -> str:
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise ValueError("body must hold a 'messages' list")
        return judge.complete(messages)

    return respond


def serve_local_judge(port: int = 8765, judge=None) -> ChatServer:
    """A (not yet started) server answering grading prompts with LocalJudge on 127.0.0.1."""
    return ChatServer(local_judge_responder(judge), port=port, model="local-judge")
