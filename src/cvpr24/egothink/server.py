"""A minimal OpenAI-compatible ``/v1/chat/completions`` server on 127.0.0.1.

:func:`serve_local_judge` puts :class:`~cvpr24.egothink.local_judge.LocalJudge` behind it, so
the whole pipeline (HTTP client, retries, parsing) runs offline and in CI. The same
:class:`ChatServer` with another ``respond`` function is the stub used by the tests and the
benchmark (scripted errors, injected latency). It binds loopback only, never a public address.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: ``respond(body) -> str`` (the reply text) or ``(status, text_or_json_body)``.
Responder = Callable[[dict], "str | tuple[int, str | dict]"]


class RequestError(ValueError):
    """A bad request: answered with status 400 and an OpenAI-style error body naming ``param``."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None) -> dict:
    """The error object OpenAI's API returns (and its clients parse)."""
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def completion(text: str, model: str) -> dict:
    """An OpenAI chat-completion response body holding ``text``."""
    return {"id": f"chatcmpl-{time.time_ns()}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}


def completion_stream(text: str, model: str) -> bytes:
    """The same reply as server-sent events of ``chat.completion.chunk`` objects: the role,
    the whole text as one delta, the finish reason, then ``[DONE]``."""
    base = {"id": f"chatcmpl-{time.time_ns()}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": model}
    deltas = ({"role": "assistant", "content": ""}, {"content": text}, {})
    chunks = [{**base, "choices": [{"index": 0, "delta": d, "finish_reason": None if d else "stop"}]}
              for d in deltas]
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks).encode() + b"data: [DONE]\n\n"


def message_text(content, where: str = "content") -> str:
    """The text of a chat message's ``content``: a string, or a list of parts whose ``text``
    parts are joined (as the OpenAI API accepts). Anything else is a :class:`RequestError`."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        texts = []
        for k, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise RequestError(f"{where}[{k}] must be a text part {{'type': 'text', 'text': ...}}; "
                                   "the local judge reads text only", f"{where}[{k}]")
            texts.append(part["text"])
        return "".join(texts)
    if content is None:
        raise RequestError(f"{where} is missing: every message needs a string or a list of text parts", where)
    raise RequestError(f"{where} must be a string or a non-empty list of text parts, got {type(content).__name__}",
                       where)


def chat_messages(body: dict) -> list[dict]:
    """``body["messages"]`` checked and normalised to ``[{"role": str, "content": str}]``."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list of chat messages", "messages")
    out = []
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise RequestError(f"messages[{k}] must be an object with a 'role'", f"messages[{k}]")
        out.append({"role": m["role"], "content": message_text(m.get("content"), f"messages[{k}].content")})
    return out


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

            def _send(self, status: int, payload: str | dict | bytes,
                      content_type: str = "application/json") -> None:
                data = payload if isinstance(payload, bytes) else (
                    json.dumps(payload) if isinstance(payload, dict) else payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                else:
                    self._send(404, error_body(f"unknown path {self.path}", "not_found_error"))

            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers.get("Content-Length", 0) or 0)
                try:
                    body = json.loads(self.rfile.read(n) or b"{}")
                except (json.JSONDecodeError, UnicodeDecodeError):
                    self._send(400, error_body("the request body is not valid JSON"))
                    return
                if not self.path.split("?")[0].rstrip("/").endswith("/chat/completions"):
                    self._send(404, error_body(f"unknown path {self.path}", "not_found_error"))
                    return
                if not isinstance(body, dict):
                    self._send(400, error_body("the request body must be a JSON object"))
                    return
                with server._lock:
                    server.requests.append(body)
                if server.latency_s:
                    time.sleep(server.latency_s)
                try:
                    out = server.respond(body)
                except RequestError as e:
                    self._send(400, error_body(str(e), param=e.param))
                    return
                except ValueError as e:
                    self._send(400, error_body(str(e)))
                    return
                except Exception as e:  # a bug in respond: an error reply, not a dropped connection
                    self._send(500, error_body(f"{type(e).__name__}: {e}", "server_error"))
                    return
                status, payload = (200, out) if isinstance(out, str) else out
                model = body.get("model") if isinstance(body.get("model"), str) else server.model
                if status == 200 and isinstance(payload, str) and body.get("stream") is True:
                    self._send(200, completion_stream(payload, model), "text/event-stream")
                    return
                if status == 200 and isinstance(payload, str):
                    payload = completion(payload, model)
                elif isinstance(payload, str):
                    payload = error_body(payload, "server_error" if status >= 500 else "invalid_request_error")
                self._send(status, payload)

        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an integer in [0, 65535], got {port!r}")
        self._httpd = _QuietServer(("127.0.0.1", port), Handler)  # OSError if the port is taken
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ChatServer:
        # a short poll interval: stop() returns within 50 ms instead of the default 0.5 s
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
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


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """A client that hangs up (timeouts, Ctrl-C) is routine, not a traceback on stderr."""
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


def local_judge_responder(judge=None) -> Responder:
    """``respond`` backed by a LocalJudge: the grading prompt in, its judgment text out.

    Messages may hold a string or a list of text parts (as the official ``openai`` client
    sends them); a missing content or a non-text part is a 400 naming the message."""
    from cvpr24.egothink.local_judge import LocalJudge

    judge = judge or LocalJudge()

    def respond(body: dict) -> str:
        return judge.complete(chat_messages(body))

    return respond


def serve_local_judge(port: int = 8765, judge=None) -> ChatServer:
    """A (not yet started) server answering grading prompts with LocalJudge on 127.0.0.1."""
    return ChatServer(local_judge_responder(judge), port=port, model="local-judge")
