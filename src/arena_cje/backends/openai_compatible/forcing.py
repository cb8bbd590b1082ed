"""Teacher forcing by echo: the log-prob of a given reply from a server's echoed completion.

The conversation, written with the model family's chat template, is sent to ``/completions``
with ``echo=True``, ``max_tokens=0`` and ``logprobs=k``; the reply's tokens are located in the
echo by their text (:mod:`.echo`) and their log-probs summed, rescaled from T=1 to the policy's
temperature with an error bound (:mod:`.temperature`) unless the server applies the temperature
itself. When the prompt/reply boundary falls inside a token, the reply's log-prob is the
difference of two echoes (the full text and the text before the reply) over the tokens after
their common prefix. With ``echo_token_ids`` a row whose top-k lost entries to tokens of the same
text gets a second echo keyed by token id, for the exact rescaling.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from arena_cje.backends.base import PolicySpec
from arena_cje.backends.openai_compatible.client import HTTPClient
from arena_cje.backends.openai_compatible.cost import CostMeter
from arena_cje.backends.openai_compatible.echo import _common_prefix, _Echo, _parse_echo, locate_span
from arena_cje.backends.openai_compatible.errors import MalformedResponseError
from arena_cje.backends.openai_compatible.temperature import _top_complete, rescale_logprob
from arena_cje.backends.templates import ChatTemplate


@dataclass
class EchoScorer:
    """Scores replies by echo for one backend (its request layer, cost meter and template).

    Attributes:
        client: The request layer.
        meter: Counts the tokens and cost of each echo.
        template: The model family's chat template.
        with_bos: Write the template's BOS marker into the text.
        top_k: Alternatives requested per position.
        vocab_size: Model vocabulary size (the rescaling bound).
        echo_applies_temperature: The server returns echo log-probs at the sent temperature.
        echo_token_ids: The server can key echo log-probs by token id.
    """

    client: HTTPClient
    meter: CostMeter
    template: ChatTemplate
    with_bos: bool
    top_k: int
    vocab_size: int
    echo_applies_temperature: bool
    echo_token_ids: bool

    def echo(self, text: str, policy: PolicySpec, usage: dict[str, float]) -> tuple[_Echo, int, int, float]:
        """One echo call of ``text``; returns the verified echo, tokens counted and cost.

        Raises:
            MalformedResponseError: the reply holds no echoed log-probs, or they do not spell ``text``.
        """
        body = {
            "model": policy.model,
            "prompt": text,
            "echo": True,
            "max_tokens": 0,
            "logprobs": max(1, self.top_k),
            "temperature": policy.temperature,
            "top_p": 1.0,
        }
        data, attempts = self.client.post("/completions", body)
        usage["attempts"] = usage.get("attempts", 0.0) + attempts
        pt, ct, cost = self.meter.account(policy.model, data, len(text), 0, usage)
        return _parse_echo(data, text), pt, ct, cost

    def scored(self, echo: _Echo, start: int, temperature: float) -> tuple[float, float, list[float]]:
        """Sum of (rescaled) log-probs of tokens ``start..end``; returns (sum, bound, raw per-token)."""
        tokens, values, tops = echo.tokens, echo.values, echo.tops
        rescale = temperature != 1.0 and not self.echo_applies_temperature
        total, bound, raw = 0.0, 0.0, []
        if start >= len(tokens):
            raise ValueError("nothing to score: the span holds no token")
        for i in range(start, len(tokens)):
            value = values[i]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"token {i} ({tokens[i]!r}) has no finite log-prob: {value!r}")
            raw.append(float(value))
            if rescale:
                top = tops[i] if i < len(tops) and isinstance(tops[i], Mapping) else None
                name = echo.raw[i] if echo.raw else tokens[i]
                estimate, half = rescale_logprob(float(value), name, top, temperature, self.vocab_size,
                                                 complete=_top_complete(top, self.top_k))
                total, bound = total + estimate, bound + half
            else:
                total += float(value)
        return total, bound, raw

    def forced(self, prompt: str, response: str, policy: PolicySpec, ended: bool,
                usage: dict[str, float]) -> tuple[float, float, int, list[float], int, int, float]:
        """Teacher-force one reply: ``(logprob, bound, n_tokens, raw per-token, pt, ct, cost)``.

        Raises:
            ValueError: nothing to score or a token without a finite log-prob.
            MalformedResponseError: the echo is missing or does not spell the text sent.
        """
        full, start, _ = self.template.render(prompt, response, policy.system_prompt, self.with_bos, ended)
        if start == len(full):
            raise ValueError("nothing to score: empty response cut at max_tokens (no end of turn)")
        echo, pt, ct, cost = self.echo(full, policy, usage)
        first = locate_span(echo.tokens, full, start, echo.first)
        if first is not None:
            usage["two_call"] = 0.0
            if self._needs_id_echo(echo, first, policy.temperature):
                echo, pt2, ct2, cost2 = self._id_echo(full, policy, usage, echo)
                pt, ct, cost = pt + pt2, ct + ct2, cost + cost2
            logprob, bound, raw = self.scored(echo, first, policy.temperature)
            return logprob, bound, len(echo.tokens) - first, raw, pt, ct, cost
        # The boundary falls inside a token: difference of the two texts' totals over the tokens
        # after their common prefix (identical contexts give identical log-probs).
        usage["two_call"] = 1.0
        head, pt2, ct2, cost2 = self.echo(full[:start], policy, usage)
        # The first token of a text has no log-prob; after a server-added BOS it has one.
        common = max(echo.first, 1, _common_prefix(echo, head))
        total_full, bound_full, raw = self.scored(echo, common, policy.temperature)
        total_head, bound_head, _ = (0.0, 0.0, []) if common >= len(head.tokens) else self.scored(head, common, policy.temperature)
        return (total_full - total_head, bound_full + bound_head, len(echo.tokens) - common, raw,
                pt + pt2, ct + ct2, cost + cost2)

    def _needs_id_echo(self, echo: _Echo, first: int, temperature: float) -> bool:
        """Is a second echo keyed by token ids worth sending (``echo_token_ids`` and lossy top-k)?"""
        if not self.echo_token_ids or temperature == 1.0 or self.echo_applies_temperature:
            return False
        return any(not _top_complete(top if isinstance(top, Mapping) else None, self.top_k) for top in echo.tops[first:])

    def _id_echo(self, text: str, policy: PolicySpec, usage: dict[str, float], text_echo: _Echo) -> tuple[_Echo, int, int, float]:
        """The same echo with tokens and top-k keyed by token id (vLLM's ``return_tokens_as_token_ids``).

        Positions come from the text echo (already verified to spell the text); the id echo must
        have as many tokens and the same log-probs, otherwise it is not the same tokenisation.

        Raises:
            MalformedResponseError: the id echo does not line up with the text echo.
        """
        body = {"model": policy.model, "prompt": text, "echo": True, "max_tokens": 0, "logprobs": max(1, self.top_k),
                "temperature": policy.temperature, "top_p": 1.0, "return_tokens_as_token_ids": True}
        data, attempts = self.client.post("/completions", body)
        usage["attempts"] = usage.get("attempts", 0.0) + attempts
        usage["id_echo"] = 1.0
        pt, ct, cost = self.meter.account(policy.model, data, len(text), 0, usage)
        try:
            block = data["choices"][0]["logprobs"]
            ids, values, tops = block["tokens"], block["token_logprobs"], block["top_logprobs"]
        except (KeyError, IndexError, TypeError) as exc:
            raise MalformedResponseError(f"echo with token ids: no logprobs block ({type(exc).__name__})") from None
        same = len(ids) == len(text_echo.tokens) and all(
            (a is None and b is None) or (a is not None and b is not None and abs(a - b) <= 1e-6)
            for a, b in zip(values, text_echo.values)
        )
        if not same:
            raise MalformedResponseError("echo with token ids does not line up with the text echo (different tokenisation)")
        return _Echo(text_echo.tokens, list(values), list(tops), text_echo.first, list(ids)), pt, ct, cost
