"""What a request costs: prices per model, the tokens of a reply, and the pre-request estimate.

Token counts come from the reply's ``usage``; a provider that omits it is charged the
tokenizer-free pre-request estimate (about 1 token per 2 characters + ``max_tokens``;
``usage["usage_estimated"] = 1``), so the budget cap (:class:`~.access._Budget`) still holds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from arena_cje.backends.openai_compatible.access import _Budget
from arena_cje.backends.openai_compatible.errors import ConfigurationError

logger = logging.getLogger(__name__)


class CostMeter:
    """Prices, the spend so far and the budget cap of one backend.

    Args:
        prices: ``{model: {prompt: usd_per_1k, completion: usd_per_1k}}``; key ``default`` applies
            to unlisted models.
        budget_usd: Spend cap (``None``: no cap).
        spent_usd: Spend already recorded (the request store's total).
    """

    def __init__(self, prices: Mapping[str, Mapping[str, float]] | None, budget_usd: float | None,
                 spent_usd: float) -> None:
        self.prices = {k: dict(v) for k, v in (prices or {}).items()}
        self.budget = _Budget(budget_usd, spent_usd)
        self._warned_usage = False

    def price(self, model: str) -> tuple[float, float]:
        """USD per 1k prompt and completion tokens of ``model``.

        Raises:
            ConfigurationError: no price for ``model`` while a budget cap needs one.
        """
        price = self.prices.get(model, self.prices.get("default"))
        if price is None:
            if self.budget.cap is not None:
                raise ConfigurationError(f"no price for model {model!r} in backend.openai_compatible.prices (needed by budget_usd)")
            return 0.0, 0.0
        return float(price.get("prompt", 0.0)), float(price.get("completion", 0.0))

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """USD of so many tokens of ``model``."""
        p, c = self.price(model)
        return prompt_tokens / 1000.0 * p + completion_tokens / 1000.0 * c

    @staticmethod
    def estimate_tokens(n_chars: int) -> int:
        """Upper estimate of the tokens of ``n_chars`` characters of text."""
        # ~1 token per 2 characters is above every BPE tokenizer's average for text.
        return n_chars // 2 + 16

    def estimate(self, model: str, n_chars: int, max_completion: int, n_calls: int = 1) -> float:
        """Upper estimate of the cost of ``n_calls`` requests of ``n_chars`` characters each."""
        return n_calls * self.cost(model, self.estimate_tokens(n_chars), max_completion)

    def account(self, model: str, data: Mapping[str, Any], n_chars: int, max_completion: int,
                usage: dict[str, float]) -> tuple[int, int, float]:
        """Tokens and cost of one reply; the pre-request estimate when the reply has no ``usage``.

        Adds ``prompt_tokens``, ``completion_tokens``, ``cost_usd`` (and ``usage_estimated`` when
        estimated) to ``usage``; returns ``(prompt_tokens, completion_tokens, cost)``.
        """
        counted = reply_tokens(data)
        if counted is None:
            pt, ct = self.estimate_tokens(n_chars), int(max_completion)
            usage["usage_estimated"] = 1.0
            if not self._warned_usage:
                self._warned_usage = True
                logger.warning("the server's replies carry no token usage: cost is counted from the "
                               "pre-request estimate (about 1 token per 2 characters + max_tokens)")
        else:
            pt, ct = counted
        cost = self.cost(model, pt, ct)
        usage.update(prompt_tokens=usage.get("prompt_tokens", 0.0) + pt,
                     completion_tokens=usage.get("completion_tokens", 0.0) + ct,
                     cost_usd=usage.get("cost_usd", 0.0) + cost)
        return pt, ct, cost


def reply_tokens(data: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(prompt_tokens, completion_tokens)`` from the reply's ``usage``; ``None`` when absent."""
    usage = data.get("usage")
    if not isinstance(usage, Mapping) or usage.get("prompt_tokens") is None:
        return None
    try:
        return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (TypeError, ValueError):
        return None
