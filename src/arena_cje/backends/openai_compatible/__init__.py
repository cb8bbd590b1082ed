"""Backend for OpenAI-compatible HTTP APIs (Fireworks, vLLM, Together, ...).

One concept per module:

* :mod:`.backend`: :class:`~arena_cje.backends.openai_compatible.backend.OpenAICompatibleBackend`
  (generation, teacher forcing and judging over HTTP: the request bodies, the replies read, the
  keys of the durable request record).
* :mod:`.client`: the request layer: pooled session, rate limit, retries with backoff, and the
  classification of the server's answer (retryable fault, configuration error, item rejection).
* :mod:`.batch`: the batch engine: items on a thread pool, each recorded as it finishes, within
  the budget; a configuration or budget error stops the batch.
* :mod:`.cost`: prices, the tokens of a reply (or the pre-request estimate when it has none).
* :mod:`.forcing`: teacher forcing by echo (one or two echoes, the id echo, the rescaled sum).
* :mod:`.self_check`: :func:`~arena_cje.backends.openai_compatible.self_check.run_self_check`
  (``OpenAICompatibleBackend.self_check``) and its report
  :class:`~arena_cje.backends.openai_compatible.self_check.CheckReport`.
* :mod:`.echo`: locating the response's tokens in a server's echo by their text, and reading the
  echoed log-probs from the reply's shapes (byte-level and SentencePiece pieces decoded).
* :mod:`.temperature`: the log-prob at temperature T from T=1 top-k log-probs, with its tail-mass
  bound (the formulas for S, R and the bound are in its docstring).
* :mod:`.errors`: the errors, which of them are retried, and the server's ``Retry-After``.
* :mod:`.access`: the API key, the rate limiter and the budget cap.

This package re-exports the public names, so ``arena_cje.backends.openai_compatible`` is what the
backend registry, the docs and the configuration name. Measured figures: ``docs/api_backend.md``.
"""

from arena_cje.backends.openai_compatible.access import resolve_api_key
from arena_cje.backends.openai_compatible.backend import DEFAULT_STORE_PATH, JUDGE_SCHEMA, OpenAICompatibleBackend
from arena_cje.backends.openai_compatible.echo import echo_text_start, locate_span, spells, token_text_variants
from arena_cje.backends.openai_compatible.errors import (
    RETRYABLE_STATUSES,
    BudgetExceededError,
    ConfigurationError,
    FinishReasonError,
    MalformedResponseError,
    RetryableHTTPError,
    TruncatedBodyError,
    parse_retry_after,
    retry_after_seconds,
)
from arena_cje.backends.openai_compatible.self_check import CheckReport
from arena_cje.backends.openai_compatible.temperature import rescale_logprob

__all__ = [
    "DEFAULT_STORE_PATH",
    "JUDGE_SCHEMA",
    "RETRYABLE_STATUSES",
    "BudgetExceededError",
    "CheckReport",
    "ConfigurationError",
    "FinishReasonError",
    "MalformedResponseError",
    "OpenAICompatibleBackend",
    "RetryableHTTPError",
    "TruncatedBodyError",
    "echo_text_start",
    "locate_span",
    "parse_retry_after",
    "rescale_logprob",
    "resolve_api_key",
    "retry_after_seconds",
    "spells",
    "token_text_variants",
]
