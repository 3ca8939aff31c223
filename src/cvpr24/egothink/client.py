"""A small OpenAI-compatible chat-completions client with bounded, backed-off retries.

Works with OpenAI, Azure OpenAI (``api_version=`` adds the query parameter and the ``api-key``
header), vLLM, SGLang, Ollama and :func:`cvpr24.egothink.server.serve_local_judge`. The key is
read from an environment variable named by ``api_key_env``, never from a file. Retried: HTTP
408, 429 and 5xx, timeouts, connection errors and unreadable bodies; not retried: 401/403
(:class:`AuthenticationError`) and other 4xx (:class:`APIError`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from urllib.parse import urlparse

from cvpr24.common import optional_import

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0")
RETRY_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))


class APIError(RuntimeError):
    """A request failed for good (retries exhausted, or a non-retryable status)."""

    def __init__(self, message: str, status: int | None = None, attempts: int = 1):
        super().__init__(message)
        self.status = status
        self.attempts = attempts


class AuthenticationError(APIError):
    """401/403, or no API key where one is needed: retrying cannot help."""


def is_local(base_url: str) -> bool:
    """True for loopback servers, which need no API key."""
    return (urlparse(base_url).hostname or "") in LOCAL_HOSTS


def backoff_delay(attempt: int, backoff: tuple[float, float, float]) -> float:
    """Seconds to wait after failed attempt ``attempt`` (0-based): ``min(cap, initial * factor**attempt)``."""
    initial, factor, cap = backoff
    return min(cap, initial * factor ** attempt)


class ChatClient:
    """POST ``{base_url}/chat/completions`` and return the first choice's message content.

    Parameters
    ----------
    base_url : str
        E.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``.
    api_key_env : str
        Environment variable holding the key. Required unless the URL is on loopback.
    max_retry : int
        Attempts per request (each failed attempt is followed by a backoff sleep).
    backoff : (initial, factor, cap)
        Exponential backoff in seconds; a ``Retry-After`` header (seconds) is honoured up to ``cap``.
    sleep_after_success : float
        Pause after each success (the official code sleeps 10 s).
    timeout : float
        Seconds per attempt.
    api_version : str, optional
        Azure OpenAI ``api-version``; switches the key header to ``api-key``.
    sleep : callable
        Injected for tests; ``time.sleep`` by default.
    """

    def __init__(self, base_url: str, api_key_env: str = "OPENAI_API_KEY", *, max_retry: int = 16,
                 backoff: tuple[float, float, float] = (1.0, 2.0, 60.0), sleep_after_success: float = 0.0,
                 timeout: float = 120.0, api_version: str | None = None, max_connections: int = 32,
                 sleep: Callable[[float], None] = time.sleep):
        httpx = optional_import("httpx", "egothink")
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if max_retry < 1:
            raise ValueError(f"max_retry must be >= 1, got {max_retry!r}")
        key = os.environ.get(api_key_env, "") if api_key_env else ""
        if not key and not is_local(base_url):
            raise AuthenticationError(
                f"no API key: set the environment variable {api_key_env!r} (api_key_env) for "
                f"{base_url}; keys are never read from files")
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.max_retry = max_retry
        self.backoff = backoff
        self.sleep_after_success = sleep_after_success
        self.api_version = api_version
        self._sleep = sleep
        headers = {"Content-Type": "application/json"}
        if key:
            headers.update({"api-key": key} if api_version else {"Authorization": f"Bearer {key}"})
        self._http = httpx.Client(headers=headers, timeout=timeout,
                                  limits=httpx.Limits(max_connections=max_connections,
                                                      max_keepalive_connections=max_connections))
        self._httpx = httpx
        self._lock = threading.Lock()
        self.n_requests = 0  # HTTP attempts made, for reporting

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def chat(self, body: dict) -> str:
        """Send one chat-completions request (with retries); return the reply text."""
        url = f"{self.base_url}/chat/completions"
        params = {"api-version": self.api_version} if self.api_version else None
        last = ""
        for attempt in range(self.max_retry):
            with self._lock:
                self.n_requests += 1
            retry_after = None
            try:
                resp = self._http.post(url, json=body, params=params)
            except (self._httpx.TimeoutException, self._httpx.TransportError) as e:
                last = f"{type(e).__name__}: {e}"
            else:
                if resp.status_code in (401, 403):
                    raise AuthenticationError(
                        f"{url} answered {resp.status_code}: the key in ${self.api_key_env} "
                        f"(api_key_env) was refused: {resp.text[:200]}", resp.status_code, attempt + 1)
                if resp.status_code == 200:
                    try:
                        text = resp.json()["choices"][0]["message"]["content"]
                        if not isinstance(text, str):
                            raise TypeError("content is not a string")
                    except (ValueError, KeyError, IndexError, TypeError) as e:
                        last = f"unreadable response body ({e}): {resp.text[:200]}"
                    else:
                        if self.sleep_after_success:
                            self._sleep(self.sleep_after_success)
                        return text
                elif resp.status_code in RETRY_STATUS:
                    last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                    retry_after = _retry_after(resp.headers.get("retry-after"))
                else:
                    raise APIError(f"{url} answered {resp.status_code}: {resp.text[:300]}",
                                   resp.status_code, attempt + 1)
            if attempt + 1 < self.max_retry:
                delay = backoff_delay(attempt, self.backoff)
                if retry_after is not None:
                    delay = min(self.backoff[2], max(delay, retry_after))
                self._sleep(delay)
        raise APIError(f"{url}: gave up after {self.max_retry} attempts; last error: {last}",
                       None, self.max_retry)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
