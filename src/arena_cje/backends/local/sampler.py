"""Exact sampling: each token drawn from the full ``softmax(z / T)``, its log-prob recorded.

No top-k, no top-p, no minimum length, no repetition penalty: a logits processor draws each row's
token with that row's own ``torch.Generator`` (seeded per item, so a response depends on its seed
and not on the batch it ran in) and records ``log_softmax(z / T)[token]``, end-of-turn included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from arena_cje.backends.local.scoring import left_pad


class RowSampler(LogitsProcessor):
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
class SampledRow:
    """One sampled response: ids without end-of-turn, the sampler's per-token log-probs.

    Attributes:
        ids: Response token ids (end-of-turn excluded).
        token_logprobs: ``log_softmax(z / T)[token]`` per step, end-of-turn included when ``ended``.
        ended: Whether the end-of-turn token was drawn (``False``: cut at ``max_new_tokens``).
    """

    ids: list[int]
    token_logprobs: list[float]
    ended: bool


@torch.inference_mode()
def sample_ids(
    model: Any,
    prompt_rows: list[list[int]],
    temperature: float,
    seeds: list[int],
    max_new_tokens: int,
    eot_id: int,
    pad_id: int,
) -> list[SampledRow]:
    """Sample one batch; each row stops at the end-of-turn token or ``max_new_tokens``."""
    ids, mask, _ = left_pad(prompt_rows, pad_id)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    sampler = RowSampler(temperature, generators)
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        min_new_tokens=0,
        eos_token_id=eot_id,
        pad_token_id=pad_id,
        bos_token_id=None,
    )
    out = model.generate(
        input_ids=ids, attention_mask=mask, generation_config=config, logits_processor=LogitsProcessorList([sampler])
    )
    new = out[:, ids.shape[1] :].tolist()
    step_lp = torch.stack(sampler.step_logprobs, dim=1).tolist() if sampler.step_logprobs else [[] for _ in new]
    results = []
    for row, lps in zip(new, step_lp, strict=True):
        end = row.index(eot_id) if eot_id in row else None
        if end is None:
            results.append(SampledRow(row, lps[: len(row)], ended=False))
        else:
            results.append(SampledRow(row[:end], lps[: end + 1], ended=True))
    return results
