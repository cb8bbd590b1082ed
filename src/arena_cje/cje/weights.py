"""Importance weights from teacher-forced log-probs and their SIMCal-W stabilisation.

Raw weights (computed in log space so nothing overflows):
    log w_i = logprob_target(A_i | X_i) - logprob_logging(A_i | X_i),
    w~_i = exp(log w_i - max_j log w_j) / mean_j exp(log w_j - max_j log w_j)   (Hajek: mean one).
Rows whose target or logging log-prob is missing are excluded and counted (``n_missing_logprob``).

SIMCal-W (CJE paper, arXiv 2512.11150, "SIMCal"): the oracle-free weights are projected onto
functions of the judge score S that are monotone, W^+ = iso_up(S -> w~) and W^- = iso_down(S -> w~);
PAV projections preserve the mean, so both stay mean one (and non-negative). With R_i the calibrated
reward, each candidate c in {raw, W^+, W^-} has IPS influence values phi_{c,i} = W_{c,i}(R_i - theta_c);
the projections are fitted out of fold (by prompt fold) to get honest phi's, and the stacking weights
beta = argmin_{beta in simplex} beta' Cov(phi) beta (scipy SLSQP) combine the in-sample candidates.
Finally a variance cap rho blends toward uniform: W = 1 + gamma (W_stack - 1) with
gamma = min(1, sqrt(rho / Var(W_stack))), so Var(W) <= rho and ESS/n >= 1/(1 + rho).

The diagnostics of these weights (ESS, Hill tail index, TTC, judge overlap): ``weight_diagnostics.py``.

Calibrated-IPS influence values (``estimators.ips.calibrated_ips``) need the projections themselves:
``SimcalResult.projections`` keeps the full-data monotone fits W^+ and W^-.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import isotonic_regression, minimize

# The diagnostics moved to ``weight_diagnostics.py``; the names tests and callers import from here stay
# importable from here.
from arena_cje.cje.weight_diagnostics import (  # noqa: F401
    WeightDiagnostics,
    ess_fraction,
    hill_tail_index,
    judge_overlap,
    target_typicality_coverage,
)


def hajek_weights(logprob_target: np.ndarray, logprob_base: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean-one weights on the rows with both log-probs.

    Returns:
        (mask of usable rows, log-ratios on those rows, mean-one weights on those rows).
    """
    mask = ~(np.isnan(logprob_target) | np.isnan(logprob_base))
    logw = logprob_target[mask] - logprob_base[mask]
    if logw.size == 0:
        return mask, logw, logw.copy()
    e = np.exp(logw - logw.max())
    return mask, logw, e / e.mean()


def simplex_min_variance(cov: np.ndarray) -> np.ndarray:
    """Minimum-variance stacking weights: argmin_{beta >= 0, sum beta = 1} beta' C beta, by scipy SLSQP.

    Used to stack influence functions (SIMCal's candidates here, ``estimators.stacked.stacked_dr``): with C
    the covariance of the candidates' influence values, beta' C beta is the variance of the stacked
    one. C is rescaled by its mean diagonal before optimising (the optimum does not change).
    """
    m = cov.shape[0]
    scale = float(np.trace(cov)) / m or 1.0
    c = cov / scale
    with _SLSQP_LOCK:  # the calibrated-IPS jackknife refits SIMCal on threads; SLSQP is not documented thread-safe
        res = minimize(
            lambda b: b @ c @ b,
            np.full(m, 1.0 / m),
            jac=lambda b: 2 * c @ b,
            bounds=[(0.0, 1.0)] * m,
            constraints=[{"type": "eq", "fun": lambda b: b.sum() - 1.0, "jac": lambda b: np.ones(m)}],
            method="SLSQP",
            options={"ftol": 1e-15, "maxiter": 500},  # candidates' variances differ in the 4th digit
        )
    b = np.clip(res.x, 0, None)
    return b / b.sum()


#: Serialises SLSQP (a 2-3 dimensional problem: the lock costs nothing measurable).
_SLSQP_LOCK = threading.Lock()


#: Judge scores closer than this are one tie group (sklearn ``IsotonicRegression``'s rule).
_TIE_EPS = float(np.finfo(np.float64).resolution)


def _block_knots(x: np.ndarray, fit: np.ndarray, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last point of each PAV block: the knots that define the piecewise-linear predictor.

    Interpolating on them equals interpolating on every point (the fit is constant inside a
    block), as sklearn's ``trim_duplicates`` does, and makes out-of-fold prediction cheap.
    """
    ends = np.stack([blocks[:-1], blocks[1:] - 1], axis=1).ravel()
    keep = np.ones(ends.size, dtype=bool)
    np.not_equal(ends[1:], ends[:-1], out=keep[1:])  # a one-point block is one knot
    ends = ends[keep]
    return x[ends], fit[ends]


class JudgeOrder:
    """Rows sorted once by judge score, with the tie groups sklearn's ``IsotonicRegression`` forms.

    Every SIMCal projection (full data, out of fold, and the calibrated-IPS jackknife's refits) is
    an isotonic regression on the same ordering index. Sorting once and fitting any subset by
    masking the sorted rows gives ``IsotonicRegression(out_of_bounds="clip", y_min=0)``'s fit and
    predictions (tied judge scores pooled into their mean, PAV, linear interpolation between
    knots, constant beyond them) without re-sorting or re-validating for each of the hundreds of
    fits a large run needs.

    Args:
        judge: Judge scores of the rows (the ordering index).
    """

    def __init__(self, judge: np.ndarray) -> None:
        judge = np.asarray(judge, dtype=float)
        self._set(judge, np.argsort(judge, kind="stable"))

    def _set(self, judge: np.ndarray, order: np.ndarray, x_sorted: np.ndarray | None = None) -> None:
        self.judge = judge
        self.order = order
        self.x_sorted = judge[order] if x_sorted is None else x_sorted
        new = np.ones(judge.size, dtype=bool)
        np.greater_equal(np.diff(self.x_sorted), _TIE_EPS, out=new[1:])
        self.has_ties = not bool(new.all())
        self.group_sorted = np.cumsum(new) - 1 if self.has_ties else None  # tie group of each sorted row

    def subset(self, keep: np.ndarray) -> "JudgeOrder":
        """The order of the rows ``keep`` (a boolean mask), without sorting again."""
        position = np.cumsum(keep) - 1
        sub = object.__new__(JudgeOrder)
        sub._set(self.judge[keep], position[self.order[keep[self.order]]])
        return sub

    def sorted_subset(self, keep_sorted: np.ndarray) -> "JudgeOrder":
        """The order of the rows ``keep_sorted`` (a boolean mask in SORTED order), indexed in sorted order.

        The subset's rows are numbered as they come in sorted order, so its ``order`` is the
        identity: callers that already hold their arrays in sorted order (the calibrated-IPS
        jackknife) select with ``keep_sorted`` and never gather or scatter again.
        """
        x = self.x_sorted[keep_sorted]
        sub = object.__new__(JudgeOrder)
        sub._set(x, np.arange(x.size), x_sorted=x)
        return sub

    def fit(self, y_sorted: np.ndarray, train_sorted: np.ndarray | None, increasing: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Isotonic fit of y on the judge score over the training rows, clipped at 0.

        Args:
            y_sorted: Targets in sorted order (``y[self.order]``).
            train_sorted: Boolean mask of training rows in sorted order (None: all rows).
            increasing: Direction of the fit.

        Returns:
            (knots x, fitted values at the knots, fitted value of every training row in sorted order).
        """
        x = self.x_sorted if train_sorted is None else self.x_sorted[train_sorted]
        y = y_sorted if train_sorted is None else y_sorted[train_sorted]
        g = None if not self.has_ties else (self.group_sorted if train_sorted is None else self.group_sorted[train_sorted])
        return self._fit_rows(x, y, g, increasing)

    @staticmethod
    def _fit_rows(x: np.ndarray, y: np.ndarray, g: np.ndarray | None, increasing: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``fit`` on already selected rows (``g``: their tie groups, None without ties)."""
        if g is None:
            res = isotonic_regression(y, increasing=increasing)
            fit = np.maximum(res.x, 0.0)
            knots, values = _block_knots(x, fit, res.blocks)
            return knots, values, fit
        first = np.ones(g.size, dtype=bool)
        np.not_equal(g[1:], g[:-1], out=first[1:])
        local = np.cumsum(first) - 1  # tie group among the training rows
        counts = np.bincount(local).astype(float)
        means = np.bincount(local, weights=y) / counts
        res = isotonic_regression(means, weights=counts, increasing=increasing)
        fit = np.maximum(res.x, 0.0)
        knots, values = _block_knots(x[first], fit, res.blocks)
        return knots, values, fit[local]

    def monotone(self, y_sorted: np.ndarray, increasing: bool) -> np.ndarray:
        """In-sample isotonic fit on all rows, in sorted order."""
        return self.fit(y_sorted, None, increasing)[2]

    def monotone_out_of_fold(self, y_sorted: np.ndarray, test_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Increasing and decreasing fits on the rows outside ``test_sorted``, predicted at its rows.

        Both directions share one selection of the training rows (sorted order in and out).
        """
        train = ~test_sorted
        x, y = self.x_sorted[train], y_sorted[train]
        g = self.group_sorted[train] if self.has_ties else None
        x_test = self.x_sorted[test_sorted]
        return tuple(np.interp(x_test, *self._fit_rows(x, y, g, inc)[:2]) for inc in (True, False))  # type: ignore[return-value]


#: SIMCal's stacking weights (raw, increasing, decreasing) when the candidates' covariance is not finite.
SIMCAL_FALLBACK_STACK = (0.0, 0.5, 0.5)


@dataclass
class SimcalResult:
    """Stabilised weights (mean one) and how they were built.

    Attributes:
        weights: W, mean one.
        stack_weights: beta per candidate (raw, increasing, decreasing).
        blend_gamma: gamma of the variance-cap blend (1 = no blend).
        var_before_blend: Var(W_stack).
        projections: The full-data monotone projections W^+ and W^- (``increasing``, ``decreasing``).
        fallback: Why beta is not the minimum-variance stack (empty when it is): the candidates'
            influence covariance was not finite, so beta = ``SIMCAL_FALLBACK_STACK``.
        order: The judge ordering the fit used (``JudgeOrder``; None for the jackknife's refits).
        oof_sorted: The out-of-fold fits (increasing, decreasing) of w on the judge score, in
            ``order``'s sorted order and on w's scale, with the folds whose fit they hold (the
            calibrated-IPS jackknife reuses the fold fits whose training rows a refit leaves intact).
    """

    weights: np.ndarray
    stack_weights: dict[str, float]
    blend_gamma: float
    var_before_blend: float
    projections: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    fallback: str = ""
    order: "JudgeOrder | None" = field(default=None, repr=False)
    oof_sorted: tuple[np.ndarray, np.ndarray, frozenset[int]] | None = field(default=None, repr=False)


def _mean_one(c: np.ndarray) -> np.ndarray:
    m = c.mean()
    return c / m if m > 0 else np.ones(c.size)


def simcal_weights(w: np.ndarray, judge: np.ndarray, reward: np.ndarray, folds: np.ndarray, var_cap: float | None,
                   order: JudgeOrder | None = None, keep_projections: bool = True) -> SimcalResult:
    """SIMCal-W stabilised weights (module docstring).

    Args:
        w: Mean-one raw weights.
        judge: Judge scores of the same rows (the ordering index).
        reward: Calibrated rewards (for the influence values used to stack).
        folds: Prompt folds of the rows (out-of-fold projections).
        var_cap: rho, or None for no blend.
        order: ``JudgeOrder(judge)`` when the caller already has it (refits on subsets reuse one sort).
        keep_projections: False when only the weights are needed (the jackknife's refits).
    """
    n = w.size
    order = JudgeOrder(judge) if order is None else order
    # Work in judge order (means, covariances and stacking do not depend on the row order); the
    # result is put back in the caller's order at the end.
    res = simcal_sorted(w[order.order], reward[order.order], folds[order.order], var_cap, order)
    back = np.empty(n, dtype=np.int64)
    back[order.order] = np.arange(n)
    res.weights = res.weights[back]
    res.projections = {k: v[back] for k, v in res.projections.items()} if keep_projections else {}
    res.order = order
    return res


def simcal_sorted(ws: np.ndarray, rs: np.ndarray, fs: np.ndarray, var_cap: float | None, order: JudgeOrder,
                  known_oof: dict[int, tuple[np.ndarray, np.ndarray]] | None = None) -> SimcalResult:
    """``simcal_weights`` on rows already in ``order``'s sorted order; the result stays in that order.

    Args:
        ws, rs, fs: Mean-one raw weights, calibrated rewards and prompt folds, in sorted order.
        var_cap: rho, or None for no blend.
        order: The rows' judge ordering (``JudgeOrder.sorted_subset`` for a subset of sorted rows).
        known_oof: fold k -> (increasing, decreasing) out-of-fold fits already known at fold k's
            rows (arrays over all rows, read at fold k's rows): a refit whose training rows for
            fold k are those of an earlier fit reuses that fit instead of refitting.
    """
    n = ws.size
    names = ["raw", "increasing", "decreasing"]
    full = [ws, order.monotone(ws, True), order.monotone(ws, False)]
    full = [_mean_one(c) for c in full]
    oof = [ws, np.empty(n), np.empty(n)]
    fitted: set[int] = set()
    for k in np.flatnonzero(np.bincount(fs)):  # the folds present (bincount: no sort)
        te = fs == k
        if n - te.sum() < 2:
            oof[1][te] = full[1][te]
            oof[2][te] = full[2][te]
            continue
        fitted.add(int(k))
        if known_oof is not None and int(k) in known_oof:
            up, down = known_oof[int(k)]
            oof[1][te], oof[2][te] = up[te], down[te]
            continue
        oof[1][te], oof[2][te] = order.monotone_out_of_fold(ws, te)
    phis = []
    for c in oof:
        c = _mean_one(c)
        theta = np.mean(c * rs)
        phis.append(c * rs - theta * c)
    cov = np.cov(np.vstack(phis))
    fallback = ""
    if np.all(np.isfinite(cov)):
        beta = simplex_min_variance(np.atleast_2d(cov))
    else:  # e.g. a non-finite reward: no variance to minimise, so a fixed stack (reported, not silent)
        beta = np.array(SIMCAL_FALLBACK_STACK)
        fallback = (f"SIMCal: the covariance of its candidates' influence values is not finite; fixed stacking "
                    f"weights (raw, increasing, decreasing) = {SIMCAL_FALLBACK_STACK} used instead of the "
                    "minimum-variance stack")
    stacked = sum(b * c for b, c in zip(beta, full, strict=True))
    stacked = stacked / stacked.mean()
    v = float(np.var(stacked))
    gamma = 1.0
    if var_cap is not None and v > var_cap:
        gamma = float(np.sqrt(var_cap / v))
    return SimcalResult(weights=1.0 + gamma * (stacked - 1.0), stack_weights=dict(zip(names, map(float, beta), strict=True)),
                        blend_gamma=gamma, var_before_blend=v, projections={"increasing": full[1], "decreasing": full[2]},
                        fallback=fallback, oof_sorted=(oof[1], oof[2], frozenset(fitted)))

