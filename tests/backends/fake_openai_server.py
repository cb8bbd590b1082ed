"""A local OpenAI-compatible HTTP server for tests and benchmarks (127.0.0.1, no network).

The "model" is a deterministic bigram model over a GPT-style regex tokenizer: the logits at a
position are a seeded random vector over a virtual vocabulary of ``VOCAB`` ids, seeded by the
previous token; a token's id is a hash of its text. Everything is therefore reproducible and the
exact full-vocabulary log-probs (at any temperature) are available to tests through
:meth:`FakeModel.logprob` and :func:`echo_tokens` to check the client against known truth.

The tokenizer merges one leading punctuation/space character with the following letters, like the
cl100k / Llama 3 pre-tokenizer (``"?Hello"`` is one token): the token-merge case of teacher forcing.

Endpoints: ``POST /v1/chat/completions`` (generation, with token log-probs and top-k; a reply is
cut at ``max_tokens`` tokens with ``finish_reason: "length"``), ``POST /v1/completions``
(``echo=True, max_tokens=0`` only: prompt log-probs, top-k, text offsets), ``GET /v1/models``.
Chat messages are written with the Llama 3 template (its own copy).

Quirks of real servers, each switched on by a constructor argument (off by default; the default
server answers exactly like OpenAI's legacy completions API):

* ``bos="<|begin_of_text|>"``: the echo starts with a BOS token the client never sent, and the
  offsets count its text (vLLM: offsets are cumulative decoded-token lengths starting at BOS).
* ``offsets="bytes"`` (UTF-8 byte offsets) or ``offsets="decoded"`` (cumulative lengths of the
  decoded token texts, vLLM's way); default ``"chars"`` (character offsets into the sent text).
* ``split_utf8=True``: a token holding a multi-byte character is split inside that character and
  each piece is decoded alone, so its text holds U+FFFD replacement characters (byte-level BPE
  decoded token by token, as vLLM does); decoded-length offsets then drift.
* ``top_extra=True``: ``top_logprobs`` holds the k best alternatives *plus* the scored token when it
  is not among them (vLLM; Fireworks documents "up to logprobs+1" entries).
* ``echo_noise=sd``: every request perturbs the logits with N(0, sd) noise (non-deterministic
  batched inference: identical requests return different log-probs).
* ``chat_eot_entry=True``: chat log-probs end with the end-of-turn entry when the reply ended
  (vLLM; OpenAI omits it).
* ``echo_shape="together"``: the echoed log-probs come under the top-level ``prompt[0].logprobs``
  (tokens and token_logprobs only) and ``choices[0].logprobs`` is empty (Together's reply shape);
  ``"ignored"``: the server ignores ``echo`` and returns the log-probs of generated tokens only;
  ``"empty"``: ``choices[0].logprobs`` is null.
* ``reject_echo=True``: ``echo`` is refused with HTTP 400 "Only no echo is supported" (llama.cpp).
* ``omit_usage=True``: no ``usage`` block in any reply.
* ``fault_rates={"truncated": 0.05, "drop": 0.05}``: random faults per request (seeded).

Faults, per request: a scripted queue (``server.script.append("429")``) consumed in arrival order,
markers in the request text (``FAULT:500``) applied every time, and ``fault_rates``. Fault names:
``429`` (with ``Retry-After: server.retry_after``), ``429ms`` (with ``retry-after-ms:
server.retry_after_ms``), ``408``, ``409``, ``500``, ``503``, ``400``, ``400ctx``, ``401``, ``403``,
``404``, ``timeout`` (answers after ``server.hang`` s), ``drop`` (closes the connection without
answering), ``cut`` (sends half the body, then closes the connection), ``truncated`` / ``malformed``
(200 with a JSON body cut in half, complete as an HTTP message), ``badshape`` (200, JSON without
choices), ``finish_error`` (200 whose choice has ``finish_reason: "error"`` and no content).

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
LLAMA3_BOS = "<|begin_of_text|>"
ONLY_NO_ECHO = "Only no echo is supported"  # llama.cpp server's message


def tokenize(text: str) -> list[tuple[str, int]]:
    """Tokens with their character offsets."""
    return [(m.group(0), m.start()) for m in TOKEN_RE.finditer(text)]


def pieces(text: str, split_utf8: bool = False) -> list[tuple[str, str, int, int]]:
    """``(key, shown, char_offset, byte_offset)`` for every token of ``text``.

    ``key`` identifies the token for the model; ``shown`` is its text as a server returns it. With
    ``split_utf8`` a token holding a multi-byte character is split after the first byte of that
    character and each piece is decoded alone (``errors="replace"``), as a byte-level BPE
    tokenizer decoded token by token shows it.
    """
    out: list[tuple[str, str, int, int]] = []
    for tok, off in tokenize(text):
        byte_off = len(text[:off].encode("utf-8"))
        raw = tok.encode("utf-8")
        first_wide = next((i for i, ch in enumerate(tok) if ord(ch) > 127), None)
        if not split_utf8 or first_wide is None:
            out.append((tok, tok, off, byte_off))
            continue
        cut = len(tok[:first_wide].encode("utf-8")) + 1  # inside the multi-byte character
        a, b = raw[:cut], raw[cut:]
        out.append(("\x00" + a.hex(), a.decode("utf-8", "replace"), off, byte_off))
        out.append(("\x00" + b.hex(), b.decode("utf-8", "replace"), off + first_wide, byte_off + cut))
    return out


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

    def distribution(self, prev: str, temperature: float = 1.0, noise: np.ndarray | None = None) -> np.ndarray:
        """Full log-softmax(z / T) over the virtual vocabulary after token ``prev``.

        ``noise`` is added to the logits first (a non-deterministic server).
        """
        if noise is None:
            return self._distribution(prev, float(temperature))[0]
        z = (self._logits(prev) + noise) / float(temperature)
        return z - np.logaddexp.reduce(z)

    def logprob(self, prev: str, token: str, temperature: float = 1.0) -> float:
        return float(self.distribution(prev, temperature)[self.token_id(token)])

    def top(self, prev: str, token: str, k: int, temperature: float = 1.0, extra: bool = False,
            noise: np.ndarray | None = None, shown: str | None = None) -> dict[str, float]:
        """Top-k alternatives; the scored token appears under its own text, others as ``<vN>``.

        With ``extra`` the scored token is added when it is not among the k best (k+1 entries).
        """
        dist = self.distribution(prev, temperature, noise)
        order = np.argsort(-dist)
        own = self.token_id(token)
        name = token if shown is None else shown
        out: dict[str, float] = {}
        for idx in order[:k]:
            out[name if idx == own else f"<v{idx}>"] = float(dist[idx])
        if extra and name not in out:
            out[name] = float(dist[own])
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
        """Deterministic 'sampled' reply text (before any cut at ``max_tokens`` tokens)."""
        rng = np.random.default_rng(zlib.crc32(f"{prompt}\x00{system}\x00{temperature}\x00{seed}".encode()))
        n = int(rng.integers(3, 12))
        words = [WORDS[int(i)] for i in rng.integers(0, len(WORDS), n)][: max(1, max_tokens)]
        return (words[0].capitalize() + "".join(" " + w for w in words[1:]) + ".") if words else ""


def echo_tokens(text: str, temperature: float = 1.0, bos: str | None = None,
                split_utf8: bool = False) -> list[tuple[str, str, float | None]]:
    """What the fake server's echo scores for ``text``: ``(key, shown, log-prob)`` per token.

    The BOS token (when the server adds one) and the first token of a text have no log-prob.
    """
    model = FakeModel()
    toks = ([(bos, bos, 0, 0)] if bos else []) + pieces(text, split_utf8)
    return [(k, shown, None if i == 0 else model.logprob(toks[i - 1][0], k, temperature))
            for i, (k, shown, _, _) in enumerate(toks)]


def exact_response_logprob(prefix: str, response: str, end: str = LLAMA3_EOT, temperature: float = 1.0,
                           bos: str | None = None, split_utf8: bool = False) -> float:
    """Exact log P(response + end | prefix) on the fake model: difference of two texts' totals."""
    full = echo_tokens(prefix + response + end, temperature, bos, split_utf8)
    head = echo_tokens(prefix, temperature, bos, split_utf8)
    return sum(lp for *_, lp in full if lp is not None) - sum(lp for *_, lp in head if lp is not None)


def render_llama3(messages: list[dict[str, str]]) -> str:
    parts = []
    for m in messages:
        fmt = LLAMA3_SYSTEM if m["role"] == "system" else LLAMA3_USER
        parts.append(fmt.format(m["content"].strip()))  # Llama 3's template trims every message
    return "".join(parts) + LLAMA3_ASSISTANT



class FakeOpenAIServer:
    """Threaded fake server; use as a context manager. ``url`` is the API root (``.../v1``).

    See the module docstring for the quirks each argument switches on.
    """

    def __init__(
        self,
        latency: float = 0.0,
        api_key: str | None = None,
        honour_temperature: bool = False,
        retry_after: float | None = 0.05,
        retry_after_ms: float = 50.0,
        hang: float = 2.0,
        port: int = 0,
        bos: str | None = None,
        offsets: str = "chars",
        split_utf8: bool = False,
        top_extra: bool = False,
        echo_noise: float = 0.0,
        chat_eot_entry: bool = False,
        echo_shape: str = "openai",
        reject_echo: bool = False,
        omit_usage: bool = False,
        fault_rates: dict[str, float] | None = None,
        seed: int = 0,
    ) -> None:
        if offsets not in {"chars", "bytes", "decoded"}:
            raise ValueError(f"offsets must be chars, bytes or decoded, not {offsets!r}")
        if echo_shape not in {"openai", "together", "ignored", "empty"}:
            raise ValueError(f"unknown echo_shape {echo_shape!r}")
        self.model = FakeModel()
        self.latency = latency
        self.api_key = api_key
        self.honour_temperature = honour_temperature
        self.retry_after = retry_after
        self.retry_after_ms = retry_after_ms
        self.hang = hang
        self.bos = bos
        self.offsets = offsets
        self.split_utf8 = split_utf8
        self.top_extra = top_extra
        self.echo_noise = echo_noise
        self.chat_eot_entry = chat_eot_entry
        self.echo_shape = echo_shape
        self.reject_echo = reject_echo
        self.omit_usage = omit_usage
        self.fault_rates = dict(fault_rates or {})
        self._rng = np.random.default_rng(seed)
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
            for name, rate in self.fault_rates.items():
                if self._rng.random() < rate:
                    return name
        match = re.search(r"FAULT:([a-z0-9_]+)", text)
        return match.group(1) if match else None

    def counts(self, path: str | None = None) -> Counter:
        """How many times each distinct request body was seen."""
        with self._lock:
            return Counter(
                json.dumps(e["body"], sort_keys=True) for e in self.log if path is None or e["path"] == path
            )

    def _noise(self) -> np.ndarray | None:
        if not self.echo_noise:
            return None
        with self._lock:
            return self._rng.normal(0.0, self.echo_noise, VOCAB)

    def _usage(self, n_prompt: int, n_completion: int) -> dict[str, Any]:
        if self.omit_usage:
            return {}
        return {"usage": {"prompt_tokens": n_prompt, "completion_tokens": n_completion,
                          "total_tokens": n_prompt + n_completion}}

    # -- endpoint logic
    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body["messages"]
        system = next((m["content"] for m in messages if m["role"] == "system"), "")
        user = next(m["content"] for m in messages if m["role"] == "user")
        temperature = float(body.get("temperature", 1.0))
        if temperature == 0.0:  # judge: answer with a deterministic score derived from the text
            score = (zlib.crc32(user.encode()) % 1000) / 1000
            text = f'{{"score": {score}, "reason": "deterministic"}}'
            structured = (body.get("response_format") or {}).get("type") == "json_schema"
            if "JUDGE:prose" in user and not structured:  # structured output forces the schema
                text = f"Sure. ```\nScore: {score}\n``` The response is decent."
            elif "JUDGE:refuse" in user and not structured:
                text = "I cannot evaluate this."
            n_prompt = len(tokenize(system + user))
            return self._chat_response(body["model"], text, None, n_prompt, len(tokenize(text)), "stop")
        prefix = render_llama3(messages)
        max_tokens = int(body.get("max_tokens", 256))
        text = self.model.reply(user, system, temperature, int(body.get("seed", 0)), max_tokens)
        k = int(body.get("top_logprobs") or 0)
        toks = tokenize(prefix + text + LLAMA3_EOT)
        first = next(i for i, (_, off) in enumerate(toks) if off >= len(prefix))
        reply = toks[first:-1]  # the reply's tokens, end of turn excluded
        finish = "stop"
        if len(reply) > max_tokens:  # cut at max_tokens tokens: no end of turn was produced
            reply, finish = reply[:max_tokens], "length"
            text = "".join(t for t, _ in reply)
        scored = reply + ([toks[-1]] if finish == "stop" and self.chat_eot_entry else [])
        content = []
        for j, (tok, _) in enumerate(scored):
            prev = toks[first + j - 1][0]
            lp = self.model.logprob(prev, tok)
            top = self.model.top(prev, tok, k) if k else {}
            content.append({"token": tok, "logprob": lp,
                            "top_logprobs": [{"token": t, "logprob": v} for t, v in top.items()]})
        logprobs = {"content": content} if body.get("logprobs") else None
        n_completion = len(reply) + (finish == "stop")
        return self._chat_response(body["model"], text, logprobs, len(tokenize(prefix)), n_completion, finish)

    def _chat_response(self, model: str, text: str, logprobs: Any, n_prompt: int, n_completion: int,
                       finish: str) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": logprobs, "finish_reason": finish}],
            **self._usage(n_prompt, n_completion),
        }

    def completions(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if body.get("echo") and self.reject_echo:
            return 400, {"error": {"code": 400, "message": ONLY_NO_ECHO, "type": "invalid_request_error"}}
        if not body.get("echo") or int(body.get("max_tokens", 16)) != 0:
            return 400, {"error": {"message": "this fake server only supports echo=True with max_tokens=0"}}
        text = body["prompt"]
        temperature = float(body.get("temperature", 1.0)) if self.honour_temperature else 1.0
        k = int(body.get("logprobs") or 0)
        toks = ([(self.bos, self.bos, 0, 0)] if self.bos else []) + pieces(text, self.split_utf8)
        tokens, values, tops, offsets = [], [], [], []
        decoded = 0
        for i, (key, shown, char_off, byte_off) in enumerate(toks):
            tokens.append(shown)
            if i == 0:
                values.append(None)
                tops.append(None)
            else:
                noise = self._noise()
                prev = toks[i - 1][0]
                dist = self.model.distribution(prev, temperature, noise)
                values.append(float(dist[self.model.token_id(key)]))
                tops.append(self.model.top(prev, key, k, temperature, self.top_extra, noise, shown))
            if self.offsets == "decoded":
                offsets.append(decoded)
            elif self.offsets == "bytes":
                offsets.append(byte_off + (len(self.bos.encode()) if self.bos and i else 0))
            else:
                offsets.append(char_off + (len(self.bos) if self.bos and i else 0))
            decoded += len(shown)
        block = {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}
        choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": "length", "logprobs": block}
        extra: dict[str, Any] = {}
        if self.echo_shape == "together":
            choice.update(text="", logprobs={"tokens": [], "token_logprobs": []})
            extra["prompt"] = [{"text": text, "logprobs": {"tokens": tokens, "token_logprobs": values}}]
        elif self.echo_shape == "ignored":  # the log-probs of three generated tokens, not of the prompt
            words = ["The", " answer", " is"]
            gen_values = [self.model.logprob(w0, w1) for w0, w1 in zip([toks[-1][0], *words], words)]
            choice.update(text="".join(words), logprobs={
                "tokens": words, "token_logprobs": gen_values, "top_logprobs": [{w: v} for w, v in zip(words, gen_values)],
                "text_offset": [0, 3, 10]})
        elif self.echo_shape == "empty":
            choice["logprobs"] = None
        return 200, {"id": "cmpl-fake", "object": "text_completion", "model": body["model"],
                     "choices": [choice], **extra, **self._usage(len(toks), 0)}


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

    def _answer(self, server: FakeOpenAIServer, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        if path == "/v1/chat/completions":
            return 200, server.chat(body)
        if path == "/v1/completions":
            return server.completions(body)
        return 404, {"error": {"message": f"no route {path}"}}

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
        elif fault == "429ms":
            return self._json(429, {"error": {"message": "rate limited"}},
                              {"retry-after-ms": str(server.retry_after_ms)})
        elif fault in {"408", "409", "500", "503"}:
            return self._json(int(fault), {"error": {"message": f"transient fault {fault}"}})
        elif fault in {"400", "401", "403", "404"}:
            return self._json(int(fault), {"error": {"message": f"fault {fault}"}})
        elif fault == "400ctx":
            return self._json(400, {"error": {"message": "prompt exceeds the maximum context length"}})
        elif fault == "badshape":
            return self._json(200, {"object": "chat.completion", "nothing": True})
        status, answer = self._answer(server, path, body)
        if fault in {"truncated", "malformed"} and status == 200:
            payload = json.dumps(answer).encode()
            return self._send(200, payload[: len(payload) // 2])
        if fault == "cut" and status == 200:
            payload = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return None
        if fault == "finish_error" and status == 200:
            for choice in answer.get("choices", []):
                choice["finish_reason"] = "error"
                if "message" in choice:
                    choice["message"]["content"] = ""
        return self._json(status, answer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--fault-rate", action="append", default=[], metavar="NAME=RATE",
                        help="random fault per request, e.g. truncated=0.05 (repeatable)")
    args = parser.parse_args()
    rates = {name: float(rate) for name, rate in (item.split("=", 1) for item in args.fault_rate)}
    server = FakeOpenAIServer(latency=args.latency, port=args.port, fault_rates=rates).start()
    print(f"PORT {server._httpd.server_address[1]}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
