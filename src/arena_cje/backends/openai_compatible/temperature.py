"""Log-probs at a policy's temperature T from the T=1 top-k log-probs a server echoes.

Temperature. Servers return echo log-probs at T=1 whatever temperature is sent (vLLM does). A
policy at temperature T samples from softmax(z/T), so its log-prob of token i is

    log p_T(i) = l_i / T - log sum_j exp(l_j / T),        l_j = log p_1(j)  (T=1 log-probs).

Only the top-k l_j (plus the scored token's) are returned. Let K be those tokens,
S = sum_{j in K} exp(l_j/T), R = 1 - sum_{j in K} exp(l_j) the T=1 mass of the n = V - |K|
unseen tokens, each at most c = the smallest probability among the returned *alternatives* (the
scored token's own entry excluded: vLLM adds it, and Fireworks documents "up to logprobs+1"
entries, so when it is not among the top k its probability is below the k-th and is no cap). For
beta = 1/T the unseen tokens contribute U = sum_tail p_j^beta, which lies between the
"concentrated" value R c^(beta-1) (as many tokens as possible at c) and the "spread" value
R^beta n^(1-beta) (n equal tokens); which of the two is smaller depends on whether beta > 1. Hence

    log Z in [log(S + U_lo), log(S + U_hi)]

and we report the midpoint with half-width (log(S+U_hi) - log(S+U_lo)) / 2 per token;
``TeacherForced.tail_mass_bound`` is the sum of the half-widths over the response's tokens, a
guaranteed bound on |estimate - exact| given exact top-k log-probs and the vocabulary size. See
docs/api_backend.md for typical sizes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def rescale_logprob(
    logprob: float,
    token: str,
    top: Mapping[str, float] | None,
    temperature: float,
    vocab_size: int,
    complete: bool = True,
) -> tuple[float, float]:
    """Temperature-scaled log-prob of one token from T=1 top-k log-probs, with an error bound.

    Implements log p_T(i) = l_i/T - log Z_T with log Z_T bracketed as in the module docstring:
    U_conc = R c^(beta-1), U_spread = R^beta n^(1-beta), U_lo = min, U_hi = max,
    estimate = l_i/T - (log(S+U_lo) + log(S+U_hi))/2, half-width = (log(S+U_hi) - log(S+U_lo))/2.
    The cap c is the smallest probability among the alternatives other than the scored token: a
    server may add the scored token's entry to the top k (k+1 entries), and when it is not among
    the k best its probability is no upper bound for the unseen tokens.

    Args:
        logprob: l_i, the token's log-prob at T=1.
        token: The token's text (to merge it into the top-k set).
        top: Top-k tokens -> T=1 log-probs at this position (possibly with the scored token added).
        temperature: Policy temperature T > 0.
        vocab_size: V, the model's vocabulary size (bounds the number of unseen tokens).
        complete: ``False`` when ``top`` lost entries: servers key it by decoded token text, so
            tokens with the same text (vLLM shows every piece of a split multi-byte character as
            ``""``) collapse into one entry. An unseen token may then be one of the k best, so
            the cap falls back to R, the whole unseen mass (no unseen token exceeds it): the
            bound stays valid and widens.

    Returns:
        ``(estimate, half_width)``; ``(logprob, 0.0)`` when T == 1.
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0 to score log-probs (T=0 is greedy: log-probs are 0 or -inf)")
    if temperature == 1.0:
        return logprob, 0.0
    beta = 1.0 / temperature
    top = dict(top or {})
    alternatives = [v for t, v in top.items() if t != token or abs(v - logprob) > 1e-9]
    # Every unseen token is below the k-th best alternative; the scored token's own entry is no
    # cap (when it is not in the top k it lies below the k-th). With no alternative shown, the
    # scored token is the best one (or nothing is known: cap 1).
    cap = math.exp(min(alternatives)) if alternatives else (math.exp(logprob) if top else 1.0)
    # An entry under the scored token's text with another value is another token of that text.
    known = alternatives + [logprob]
    seen_mass = sum(math.exp(v) for v in known)
    tail = max(0.0, 1.0 - seen_mass)
    if not complete:
        cap = max(cap, tail)
    n_tail = max(1, int(vocab_size) - len(known))
    s_known = sum(math.exp(beta * v) for v in known)
    if tail > 0.0:
        concentrated = tail * cap ** (beta - 1.0)
        spread = tail**beta * n_tail ** (1.0 - beta)
        u_lo, u_hi = min(concentrated, spread), max(concentrated, spread)
    else:
        u_lo = u_hi = 0.0
    log_lo, log_hi = math.log(s_known + u_lo), math.log(s_known + u_hi)
    return beta * logprob - 0.5 * (log_lo + log_hi), 0.5 * (log_hi - log_lo)


def _top_complete(top: Mapping[str, Any] | None, k: int) -> bool:
    """Does a top-k map keep all k entries? Servers key it by decoded text, so tokens that decode
    to the same text (``""`` or U+FFFD for pieces of a multi-byte character) collapse."""
    if not top:
        return True  # nothing shown: rescale_logprob already caps at 1
    return len(top) >= k and not any(key == "" or "\ufffd" in key for key in top)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _within_position_slope(x_tops: Sequence[Any], y_tops: Sequence[Any]) -> float | None:
    """Least-squares slope of y on x over the top-k entries both echoes show, centred per position.

    ``None`` when fewer than 2 entries per position or no spread (e.g. no top-k returned).
    """
    sxy = sxx = 0.0
    for xs, ys in zip(x_tops, y_tops):
        if not isinstance(xs, Mapping) or not isinstance(ys, Mapping):
            continue
        keys = [k for k in xs if k in ys and _finite(xs[k]) and _finite(ys[k])]
        if len(keys) < 2:
            continue
        x = np.array([xs[k] for k in keys], dtype=float)
        y = np.array([ys[k] for k in keys], dtype=float)
        x, y = x - x.mean(), y - y.mean()
        sxy += float(x @ y)
        sxx += float(x @ x)
    return sxy / sxx if sxx > 0 else None
