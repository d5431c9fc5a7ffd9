"""Chat models for `explain`: an OpenAI-compatible endpoint (a careful HTTP client) or a local one.

`ChatEndpoint` talks to `/chat/completions` with httpx, chosen over the `openai` client because
httpx is already a dependency (no new package), is synchronous and small, and lets us set what a
careful client needs per request: connect/read/write timeouts, a streamed body with a size cap,
and redirects handled by hand. The rules: the URL comes only from the caller (`--endpoint`),
never from a file or an answer; a redirect is followed only within the same origin (scheme, host,
port) and never carries the key elsewhere; the whole request has a wall-clock deadline (a server
that drips a byte every few seconds is cut off); the answer must be UTF-8 JSON in the
chat-completions shape, else a named `EndpointAnswerError` that says what came back (HTML from a
proxy or login page, bytes that are not UTF-8, a body over the cap).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

from scope.errors import EndpointAnswerError, EndpointConfigError, ExplainError

#: largest answer body read (a chat completion of a few hundred tokens is a few kB)
MAX_ANSWER_BYTES = 4 * 1024 * 1024
#: same-origin redirects followed at most
MAX_REDIRECTS = 3


class ChatModel(Protocol):
    name: str

    def complete(self, messages: list[dict[str, str]]) -> str: ...


def check_endpoint(endpoint: str) -> str:
    """`endpoint` if it is a plain http(s) base URL; else an `EndpointConfigError`."""
    text = str(endpoint)
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in text):
        raise EndpointConfigError(
            f"--endpoint {text!r} holds whitespace or control characters (CR/LF would split the "
            "HTTP request); give a plain URL such as http://127.0.0.1:8000/v1")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EndpointConfigError(f"--endpoint {text!r} is not an http(s) URL with a host; give "
                                  "e.g. http://127.0.0.1:8000/v1")
    if parts.username or parts.password:
        raise EndpointConfigError(f"--endpoint {parts.hostname}: credentials in the URL are "
                                  "refused; put the key in $OPENAI_API_KEY")
    if parts.query or parts.fragment:
        raise EndpointConfigError(f"--endpoint {text!r}: give the base URL without ?query or "
                                  "#fragment")
    return text.rstrip("/")


def _origin(url: str) -> tuple[str, str, int | None]:
    p = urlsplit(url)
    port = p.port or {"http": 80, "https": 443}.get(p.scheme)
    return p.scheme, (p.hostname or "").lower(), port


@dataclass
class ChatEndpoint:
    """An OpenAI-compatible `/chat/completions` endpoint (API key from $OPENAI_API_KEY).

    Attributes:
        endpoint: base URL, e.g. http://127.0.0.1:8000/v1 (validated on creation).
        model: the model name the server knows.
        api_key: sent as `Authorization: Bearer`, to this origin only (default: $OPENAI_API_KEY).
        connect_timeout: seconds to open the connection.
        timeout: seconds for the whole request, answer included (a dripping server is cut off).
        max_tokens: answer length asked for.
        max_bytes: largest answer body accepted.
    """

    endpoint: str
    model: str
    api_key: str | None = None
    connect_timeout: float = 10.0
    timeout: float = 120.0
    max_tokens: int = 120
    max_bytes: int = MAX_ANSWER_BYTES
    _client: object = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.endpoint = check_endpoint(self.endpoint)
        if not (self.timeout > 0 and self.connect_timeout > 0 and self.max_bytes > 0):
            raise EndpointConfigError("timeouts and max_bytes must be positive")

    @property
    def name(self) -> str:
        return self.model

    @property
    def url(self) -> str:
        return self.endpoint + "/chat/completions"

    def complete(self, messages: list[dict[str, str]]) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0.0,
                           "max_tokens": self.max_tokens}).encode()
        raw = self._post_with_deadline(body)
        return _chat_content(raw, self.url)

    # -- transport ---------------------------------------------------------------------------

    def _post_with_deadline(self, body: bytes) -> bytes:
        """POST in a worker thread and wait at most `timeout` seconds for the whole answer:
        httpx's timeouts bound each socket read, not a server that sends a byte now and then."""
        box: dict = {}

        def work() -> None:
            try:
                box["raw"] = self._post(body, time.monotonic() + self.timeout)
            except BaseException as exc:  # handed to the caller's thread
                box["exc"] = exc

        t = threading.Thread(target=work, name="scope-chat", daemon=True)
        t.start()
        t.join(self.timeout + 1.0)
        if t.is_alive():
            raise EndpointAnswerError(
                f"{self.url} did not finish answering within {self.timeout:g} s (a stalled or "
                "dripping server); check the server or raise the timeout")
        if "exc" in box:
            raise box["exc"]
        return box["raw"]

    def _post(self, body: bytes, deadline: float) -> bytes:
        import httpx

        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = self.api_key or os.environ.get("OPENAI_API_KEY")
        timeout = httpx.Timeout(min(self.timeout, 60.0), connect=self.connect_timeout)
        url, origin = self.url, _origin(self.url)
        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            for _ in range(MAX_REDIRECTS + 1):
                h = dict(headers)
                if key and _origin(url) == origin:
                    h["Authorization"] = f"Bearer {key}"
                try:
                    with client.stream("POST", url, content=body, headers=h) as r:
                        if r.is_redirect:
                            url = self._redirect(r, url, origin)
                            continue
                        data = self._read(r, deadline)
                except httpx.TimeoutException as exc:
                    raise EndpointAnswerError(f"{url} timed out ({type(exc).__name__}); check "
                                              "the server or raise the timeout") from None
                except httpx.HTTPError as exc:
                    raise ExplainError(f"cannot reach a chat endpoint at {url} ({exc}); start "
                                       "the server (vLLM, llama.cpp, Ollama) or fix --endpoint"
                                       ) from None
                if r.status_code >= 400:
                    raise ExplainError(f"{url} answered HTTP {r.status_code}: "
                                       f"{_snippet(data)}; check --endpoint, --model and "
                                       "$OPENAI_API_KEY")
                _refuse_html(r.headers.get("content-type", ""), data, url)
                return data
        raise EndpointAnswerError(f"{self.url}: more than {MAX_REDIRECTS} redirects; give the "
                                  "final URL as --endpoint")

    def _redirect(self, r, url: str, origin) -> str:
        from urllib.parse import urljoin

        target = urljoin(url, r.headers.get("location", ""))
        if _origin(target) != origin or r.status_code not in (307, 308):
            raise EndpointAnswerError(
                f"{url} redirected (HTTP {r.status_code}) to {_origin(target)[1] or target!r}; "
                "scope follows only same-origin 307/308 redirects and never sends the key to "
                "another host: give the final URL as --endpoint")
        return target

    def _read(self, r, deadline: float) -> bytes:
        chunks, size = [], 0
        for chunk in r.iter_raw():
            size += len(chunk)
            if size > self.max_bytes:
                raise EndpointAnswerError(f"{self.url} answered more than {self.max_bytes:,} "
                                          "bytes; not a chat completion")
            if time.monotonic() > deadline:
                raise EndpointAnswerError(f"{self.url} did not finish answering within "
                                          f"{self.timeout:g} s (a dripping server)")
            chunks.append(chunk)
        data = b"".join(chunks)
        if r.headers.get("content-encoding", "identity") not in ("identity", ""):
            raise EndpointAnswerError(f"{self.url} answered with content-encoding "
                                      f"{r.headers['content-encoding']!r}; scope asks for plain "
                                      "JSON")
        return data


def _snippet(data: bytes, n: int = 120) -> str:
    text = data[:n].decode("utf-8", "replace")
    return repr(re.sub(r"\s+", " ", text))


def _refuse_html(content_type: str, data: bytes, url: str) -> None:
    head = data.lstrip()[:64].lower()
    if "html" in content_type.lower() or head.startswith((b"<!doctype", b"<html", b"<")):
        raise EndpointAnswerError(
            f"{url} answered HTML, not a chat completion (a proxy, login or error page?): "
            f"{_snippet(data)}; check --endpoint")


def _chat_content(raw: bytes, url: str) -> str:
    """The assistant's text in a chat-completions answer; a named error for anything else."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EndpointAnswerError(f"{url} answered bytes that are not UTF-8 (at byte "
                                  f"{exc.start}); not a chat completion") from None
    try:
        reply = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise EndpointAnswerError(f"{url} answered something that is not JSON ({exc}): "
                                  f"{_snippet(raw)}") from None
    try:
        content = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise EndpointAnswerError(f"{url} did not answer in the chat-completions format "
                                  f"(choices[0].message.content): {_snippet(raw)}") from None
    if content is not None and not isinstance(content, str):
        raise EndpointAnswerError(f"{url}: message.content is {type(content).__name__}, not text")
    return content or ""


class LocalChatModel:
    """A local transformers chat model directory (greedy decoding)."""

    def __init__(self, path: str, max_new_tokens: int = 120) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = os.path.basename(os.path.normpath(path))
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path)
        self.max_new_tokens = max_new_tokens

    def complete(self, messages: list[dict[str, str]]) -> str:
        import torch

        ids = self.tok.apply_chat_template(messages, add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = self.model.generate(**ids, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
