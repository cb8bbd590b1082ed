"""A local OpenAI-compatible HTTP server for tests and benchmarks (127.0.0.1, no network).

The "model" is a deterministic bigram model over a GPT-style regex tokenizer: the logits at a
position are a seeded random vector over a virtual vocabulary of ``VOCAB`` ids, seeded by the
previous token; a token's id is a hash of its text. Everything is therefore reproducible and the
exact full-vocabulary log-probs (at any temperature) are available to tests through
:meth:`FakeModel.logprob` to check the client against known truth.

The tokenizer merges one leading punctuation/space character with the following letters, like the
cl100k / Llama 3 pre-tokenizer (``"?Hello"`` is one token): the token-merge case of teacher forcing.

Endpoints: ``POST /v1/chat/completions`` (generation, with token log-probs and top-k), ``POST
/v1/completions`` (``echo=True, max_tokens=0`` only: prompt log-probs, top-k, text offsets),
``GET /v1/models``. Chat messages are written with the Llama 3 template (its own copy).

Faults, per request: a scripted queue (``server.script.append("429")``) consumed in arrival order,
and markers in the request text (``FAULT:500``) applied every time. Fault names: ``429`` (with
``Retry-After: server.retry_after``), ``500``, ``503``, ``400``, ``400ctx``, ``401``, ``403``,
``404``, ``timeout`` (answers after ``server.hang`` s), ``drop`` (closes the connection without
answering), ``malformed`` (200 with a broken JSON body), ``badshape`` (200, JSON without choices).

Run standalone (for benchmarks): ``python fake_openai_server.py --latency 0.2`` prints ``PORT <n>``.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import threading
import time
import zlib
from collections import Counter, deque
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

VOCAB = 256
TOKEN_RE = re.compile(
    r"<\|[a-z_]+\|>"              # special tokens
    r"|[^\r\n\sA-Za-z0-9<]?[A-Za-z]+"  # optional punctuation merged with letters ("?Hello")
    r"| [A-Za-z]+"               # space + word
    r"|[0-9]{1,3}"
    r"| ?[^\sA-Za-z0-9<]+"        # punctuation runs (never eat a special token)
    r"|\s*[\r\n]+"                # newlines
    r"|\s+(?!\S)|\s+"             # other whitespace
    r"|.",
    re.S,
)
WORDS = (
    "the answer is simple and clear because each step follows from data we have here "
    "first consider how model output changes when you ask again about time place value"
).split()

LLAMA3_SYSTEM = "<|start_header_id|>system<|end_header_id|>\n\n{}<|eot_id|>"
LLAMA3_USER = "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
LLAMA3_ASSISTANT = "<|start_header_id|>assistant<|end_header_id|>\n\n"
LLAMA3_EOT = "<|eot_id|>"


def tokenize(text: str) -> list[tuple[str, int]]:
    """Tokens with their character offsets."""
    return [(m.group(0), m.start()) for m in TOKEN_RE.finditer(text)]


class FakeModel:
    """Deterministic bigram language model with exact log-probs at any temperature."""

    @staticmethod
    @lru_cache(maxsize=65536)
    def _logits(prev: str) -> np.ndarray:
        rng = np.random.default_rng(zlib.crc32(prev.encode("utf-8")))
        return rng.normal(0.0, 2.5, VOCAB)

    @staticmethod
    def token_id(token: str) -> int:
        return zlib.crc32(b"id" + token.encode("utf-8")) % VOCAB

    @staticmethod
    @lru_cache(maxsize=65536)
    def _distribution(prev: str, temperature: float) -> tuple[np.ndarray, np.ndarray]:
        z = FakeModel._logits(prev) / temperature
        dist = z - np.logaddexp.reduce(z)
        return dist, np.argsort(-dist)

    def distribution(self, prev: str, temperature: float = 1.0) -> np.ndarray:
        """Full log-softmax(z / T) over the virtual vocabulary after token ``prev``."""
        return self._distribution(prev, float(temperature))[0]

    def logprob(self, prev: str, token: str, temperature: float = 1.0) -> float:
        return float(self.distribution(prev, temperature)[self.token_id(token)])

    def top(self, prev: str, token: str, k: int, temperature: float = 1.0) -> dict[str, float]:
        """Top-k alternatives; the scored token appears under its own text, others as ``<vN>``."""
        dist, order = self._distribution(prev, float(temperature))
        own = self.token_id(token)
        out: dict[str, float] = {}
        for idx in order[:k]:
            out[token if idx == own else f"<v{idx}>"] = float(dist[idx])
        return out

    def text_logprobs(self, text: str, temperature: float = 1.0) -> list[tuple[str, int, float | None]]:
        """(token, offset, log-prob) for every token of ``text``; the first has ``None``."""
        toks = tokenize(text)
        out: list[tuple[str, int, float | None]] = []
        for i, (tok, off) in enumerate(toks):
            out.append((tok, off, None if i == 0 else self.logprob(toks[i - 1][0], tok, temperature)))
        return out

    @staticmethod
    def reply(prompt: str, system: str, temperature: float, seed: int, max_tokens: int) -> str:
        """Deterministic 'sampled' reply text."""
        rng = np.random.default_rng(zlib.crc32(f"{prompt}\x00{system}\x00{temperature}\x00{seed}".encode()))
        n = int(rng.integers(3, 12))
        words = [WORDS[int(i)] for i in rng.integers(0, len(WORDS), n)][: max(1, max_tokens)]
        return (words[0].capitalize() + "".join(" " + w for w in words[1:]) + ".") if words else ""


def render_llama3(messages: list[dict[str, str]]) -> str:
    parts = []
    for m in messages:
        fmt = LLAMA3_SYSTEM if m["role"] == "system" else LLAMA3_USER
        parts.append(fmt.format(m["content"]))
    return "".join(parts) + LLAMA3_ASSISTANT


class FakeOpenAIServer:
    """Threaded fake server; use as a context manager. ``url`` is the API root (``.../v1``)."""

    def __init__(
        self,
        latency: float = 0.0,
        api_key: str | None = None,
        honour_temperature: bool = False,
        retry_after: float | None = 0.05,
        hang: float = 2.0,
        port: int = 0,
    ) -> None:
        self.model = FakeModel()
        self.latency = latency
        self.api_key = api_key
        self.honour_temperature = honour_temperature
        self.retry_after = retry_after
        self.hang = hang
        self.script: deque[str] = deque()
        self.log: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", port), _Handler)
        self._httpd.owner = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> "FakeOpenAIServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- bookkeeping
    def record(self, path: str, body: Any, fault: str | None, client_port: int | None = None) -> None:
        with self._lock:
            self.log.append({"path": path, "body": body, "fault": fault, "time": time.monotonic(),
                             "client_port": client_port})

    def next_fault(self, text: str) -> str | None:
        with self._lock:
            if self.script:
                return self.script.popleft()
        match = re.search(r"FAULT:([a-z0-9]+)", text)
        return match.group(1) if match else None

    def counts(self, path: str | None = None) -> Counter:
        """How many times each distinct request body was seen."""
        with self._lock:
            return Counter(
                json.dumps(e["body"], sort_keys=True) for e in self.log if path is None or e["path"] == path
            )

    # -- endpoint logic
    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body["messages"]
        system = next((m["content"] for m in messages if m["role"] == "system"), "")
        user = next(m["content"] for m in messages if m["role"] == "user")
        temperature = float(body.get("temperature", 1.0))
        if temperature == 0.0:  # judge: answer with a deterministic score derived from the text
            score = (zlib.crc32(user.encode()) % 1000) / 1000
            text = f'{{"score": {score}, "reason": "deterministic"}}'
            if "JUDGE:prose" in user:
                text = f"Sure. ```\nScore: {score}\n``` The response is decent."
            elif "JUDGE:refuse" in user:
                text = "I cannot evaluate this."
            n_prompt = len(tokenize(system + user))
            return _chat_response(body["model"], text, None, n_prompt, len(tokenize(text)))
        prefix = render_llama3(messages)
        text = self.model.reply(user, system, temperature, int(body.get("seed", 0)), int(body.get("max_tokens", 256)))
        k = int(body.get("top_logprobs") or 0)
        content = []
        toks = tokenize(prefix + text + LLAMA3_EOT)
        for i, (tok, off) in enumerate(toks):
            if off < len(prefix) or tok == LLAMA3_EOT:
                continue
            lp = self.model.logprob(toks[i - 1][0], tok)
            top = self.model.top(toks[i - 1][0], tok, k) if k else {}
            content.append({"token": tok, "logprob": lp,
                            "top_logprobs": [{"token": t, "logprob": v} for t, v in top.items()]})
        logprobs = {"content": content} if body.get("logprobs") else None
        return _chat_response(body["model"], text, logprobs, len(tokenize(prefix)), len(content) + 1)

    def completions(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if not body.get("echo") or int(body.get("max_tokens", 16)) != 0:
            return 400, {"error": {"message": "this fake server only supports echo=True with max_tokens=0"}}
        text = body["prompt"]
        temperature = float(body.get("temperature", 1.0)) if self.honour_temperature else 1.0
        k = int(body.get("logprobs") or 0)
        toks = tokenize(text)
        scored = self.model.text_logprobs(text, temperature)
        tops = [None] + [self.model.top(toks[i - 1][0], toks[i][0], k, temperature) for i in range(1, len(toks))]
        choice = {
            "index": 0,
            "text": text,
            "finish_reason": "length",
            "logprobs": {
                "tokens": [t for t, _, _ in scored],
                "token_logprobs": [lp for _, _, lp in scored],
                "top_logprobs": tops,
                "text_offset": [o for _, o, _ in scored],
            },
        }
        usage = {"prompt_tokens": len(toks), "completion_tokens": 0, "total_tokens": len(toks)}
        return 200, {"id": "cmpl-fake", "object": "text_completion", "model": body["model"],
                     "choices": [choice], "usage": usage}


def _chat_response(model: str, text: str, logprobs: Any, n_prompt: int, n_completion: int) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "logprobs": logprobs, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_completion,
                  "total_tokens": n_prompt + n_completion},
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    owner: FakeOpenAIServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client's connection reuse is exercised
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid 40 ms delayed-ACK stalls

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def do_GET(self) -> None:  # noqa: N802
        if self.path.rstrip("/") == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": "fake-llm", "object": "model"}]})
        else:
            self._json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:  # noqa: N802
        server: FakeOpenAIServer = self.server.owner  # type: ignore[attr-defined]
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.loads(raw)
        path = self.path.rstrip("/")
        text = json.dumps(body)
        fault = server.next_fault(text)
        server.record(path, body, fault, self.client_address[1])
        if server.latency:
            time.sleep(server.latency)
        if server.api_key is not None and self.headers.get("Authorization") != f"Bearer {server.api_key}":
            return self._json(401, {"error": {"message": "Invalid API key provided"}})
        if fault == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return None
        if fault == "timeout":
            time.sleep(server.hang)
        elif fault == "429":
            headers = {} if server.retry_after is None else {"Retry-After": str(server.retry_after)}
            return self._json(429, {"error": {"message": "rate limited"}}, headers)
        elif fault in {"500", "503"}:
            return self._json(int(fault), {"error": {"message": "internal error"}})
        elif fault in {"400", "401", "403", "404"}:
            return self._json(int(fault), {"error": {"message": f"fault {fault}"}})
        elif fault == "400ctx":
            return self._json(400, {"error": {"message": "prompt exceeds the maximum context length"}})
        elif fault == "malformed":
            return self._send(200, b'{"choices": [ {"message": ')
        elif fault == "badshape":
            return self._json(200, {"object": "chat.completion", "nothing": True})
        if path == "/v1/chat/completions":
            return self._json(200, server.chat(body))
        if path == "/v1/completions":
            return self._json(*server.completions(body))
        return self._json(404, {"error": {"message": f"no route {path}"}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = FakeOpenAIServer(latency=args.latency, port=args.port).start()
    print(f"PORT {server._httpd.server_address[1]}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
