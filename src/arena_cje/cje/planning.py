"""Evaluation planner: a variance model fitted to a pilot, a cost model, the allocation and the MDE.

Question: with a budget B, how many prompts n, calibration (oracle) labels m of the logging
policy's responses and probe labels p per target policy minimise the CI half-width of one
comparison (a policy's level, or the difference of two policies), and what is the smallest effect
that budget can detect?

**Variance model** (per comparison and estimator, fitted to a pilot): :mod:`arena_cje.cje.variance_model`
(its docstring has the formulas; its names are re-exported here).

**Cost model** (``CostModel``): cost(n, m, p) = fixed + n * prompt_cost + (m + p * n_probe_policies)
* votes_per_label * label_price, where prompt_cost is the API cost of one prompt (generation of every
policy, teacher forcing, judging), e.g. from ``dry_run.plan_run`` (``CostModel.from_dry_run``).

**Allocation** (``plan_evaluation``): minimise the predicted half-width over (n, m, p) subject to
cost <= budget, min_labels <= m <= n - 1 (one label per logged prompt; m = n is full
coverage, where the reported interval drops the OUA part), min_probe <= p <= n, by
``scipy.optimize.minimize`` (SLSQP) on the continuous relaxation from several starts, then rounded down.

**Minimum detectable effect** (``minimum_detectable_effect``): the true difference a two-sided level-
alpha t test detects with the given power at the best allocation of the budget:
MDE = (t_{1-alpha/2, df} + t_{power, df}) * SE.

Pure numpy/scipy/pandas; no Kedro.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats

# The variance model's names are re-exported: the CLI, the report, the tests and users import them
# from ``planning``.
from arena_cje.cje.variance_model import (  # noqa: F401
    RESIDUAL_ESTIMATORS,
    Comparison,
    VarianceModel,
    VarianceTerms,
    fit_variance_model,
    pilot_results,
    refold,
    satterthwaite,
)


@dataclass(frozen=True)
class CostModel:
    """What a run costs (module docstring).

    Attributes:
        prompt_cost: API cost of one prompt: generation of every policy, teacher forcing, judging.
        label_price: Price of one vote.
        votes_per_label: Votes per labelled item.
        n_probe_policies: Policies that get p probe labels each.
        fixed_cost: Costs that do not scale (set-up, gold items, ...).
    """

    prompt_cost: float
    label_price: float
    votes_per_label: int = 1
    n_probe_policies: int = 0
    fixed_cost: float = 0.0

    def __post_init__(self) -> None:
        if self.prompt_cost < 0 or self.label_price < 0 or self.votes_per_label < 1 or self.n_probe_policies < 0:
            raise ValueError(f"CostModel: prices must be >= 0 and votes_per_label >= 1, got {self}")
        if self.prompt_cost == 0 and self.label_price == 0:
            raise ValueError("CostModel: prompt_cost and label_price are both 0: any budget buys unlimited data")

    @property
    def label_cost(self) -> float:
        """Cost of one labelled item (all its votes)."""
        return self.label_price * self.votes_per_label

    def cost(self, n: float, m: float, p: float = 0.0) -> float:
        """Total cost of n prompts, m calibration labels and p probe labels per probe policy."""
        return float(self.fixed_cost + n * self.prompt_cost + (m + p * self.n_probe_policies) * self.label_cost)

    @classmethod
    def from_dry_run(cls, rows: Sequence[Any], n_prompts: int, label_price: float, votes_per_label: int,
                     n_probe_policies: int = 0, fixed_cost: float = 0.0) -> "CostModel":
        """Per-prompt API cost from ``dry_run.plan_run`` rows (generation, teacher forcing, judging).

        The dry run's output tokens are ``max_tokens`` upper bounds, so this prompt cost is one too.
        Rows of an LLM oracle are left out (labels are priced by ``label_price``).
        """
        api = sum(float(r.max_cost_usd) for r in rows if r.stage in ("generate", "teacher_force", "judge"))
        return cls(api / max(int(n_prompts), 1), float(label_price), int(votes_per_label), int(n_probe_policies),
                   float(fixed_cost))


@dataclass(frozen=True)
class Allocation:
    """The planner's answer for one budget.

    Attributes:
        budget: The budget planned for.
        comparison: What the half-width is of.
        estimator: Estimator.
        n_prompts: Prompts (each with a logged response and one fresh draw per target).
        calibration_labels: Oracle labels of the logging policy's responses.
        probe_labels: Oracle labels per probe policy.
        cost: Cost of the allocation (<= budget).
        half_width: Predicted (mean reported) CI half-width.
        std_error: sqrt(V) at the allocation.
        df: Satterthwaite df at the allocation.
        var_prompts, var_labels, var_probes: V's parts (A / n; R / m + B / m; the probe part).
        mde: Minimum detectable effect at alpha and power (filled by ``minimum_detectable_effect``).
    """

    budget: float
    comparison: str
    estimator: str
    n_prompts: int
    calibration_labels: int
    probe_labels: int
    cost: float
    half_width: float
    std_error: float
    df: float
    var_prompts: float
    var_labels: float
    var_probes: float
    mde: float = float("nan")

    def as_row(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _objective(terms: VarianceTerms, alpha: float, exact: bool):
    def f(x: np.ndarray) -> float:
        n, m, p = x
        return terms.half_width(n, m, p, alpha, exact=exact)
    return f


def plan_evaluation(budget: float, cost_model: CostModel, variance_model: VarianceModel | VarianceTerms,
                    comparison: Comparison | str, estimator: str = "direct", alpha: float = 0.05,
                    min_labels: int = 20, min_probe_labels: int = 0, max_prompts: float | None = None,
                    exact: bool = True) -> Allocation:
    """Allocation of prompts, calibration labels and probe labels minimising the half-width within budget.

    Args:
        budget: Total budget (same currency as the cost model).
        cost_model: :class:`CostModel`.
        variance_model: Fitted model (or the terms of one comparison).
        comparison: A level (``"pi_cot"``) or a difference (``"pi_cot-pi_0"``).
        estimator: Estimator whose interval is planned.
        alpha: 1 - CI level.
        min_labels: Fewest calibration labels (``gates.min_labels``: fewer refuses every calibrated row).
        min_probe_labels: Fewest probe labels per probe policy (e.g. ``probe_labels_for_audit``).
        max_prompts: Upper bound on prompts (e.g. the size of the prompt pool).
        exact: Optimise the mean reported half-width (True) or the plug-in t_{df} sqrt(V).

    Returns:
        :class:`Allocation` (integers, cost <= budget).

    Raises:
        ValueError: the budget does not cover the minimum design (min_labels prompts and labels).
    """
    terms = variance_model if isinstance(variance_model, VarianceTerms) else variance_model.get(comparison, estimator)
    uses_probe = terms.probe_mode != "none" and terms.probe_var > 0
    p_min = float(max(min_probe_labels, 2 if uses_probe else 0))
    lo = np.array([float(max(min_labels, 2)), float(max(min_labels, 2)), p_min])
    smallest = cost_model.cost(lo[0] + 1, lo[1], p_min)  # m <= n - 1
    if smallest > budget:
        raise ValueError(f"budget {budget:g} does not cover the minimum design ({int(lo[0]) + 1} prompts, {int(lo[1])} "
                         f"labels, {int(p_min)} probe labels per policy cost {smallest:.2f})")
    n_cap = max_prompts if max_prompts is not None else (budget - cost_model.fixed_cost) / max(cost_model.prompt_cost, 1e-12)
    n_cap = float(max(min(n_cap, 1e9), lo[0]))
    p_cap = n_cap if uses_probe or p_min > 0 else p_min
    bounds = [(lo[0], n_cap), (lo[1], n_cap), (p_min, max(p_cap, p_min))]
    cons = [{"type": "ineq", "fun": lambda x: (budget - cost_model.cost(*x)) / max(budget, 1e-12)},
            {"type": "ineq", "fun": lambda x: x[0] - x[1] - 1},  # m = n is full coverage: OUA skipped
            {"type": "ineq", "fun": lambda x: x[0] - x[2]}]
    # Variables are scaled by the cap so SLSQP's steps are comparable.
    scale = np.array([max(b[1], 1.0) for b in bounds])
    f = _objective(terms, alpha, exact)
    fs = lambda z: f(z * scale)  # noqa: E731
    cons_s = [{"type": c["type"], "fun": (lambda z, g=c["fun"]: g(z * scale))} for c in cons]
    best = None
    for share in (0.1, 0.3, 0.6):  # share of the variable budget spent on labels at the start
        x0 = _feasible_start(budget, cost_model, lo, share, n_cap)
        res = optimize.minimize(fs, x0 / scale, method="SLSQP", bounds=[(b[0] / s, b[1] / s) for b, s in zip(bounds, scale, strict=True)],
                                constraints=cons_s, options={"maxiter": 300, "ftol": 1e-12})
        x = res.x * scale
        if all(c["fun"](x) >= -1e-6 for c in cons) and (best is None or f(x) < f(best)):
            best = x
    if best is None:
        best = _feasible_start(budget, cost_model, lo, 0.3, n_cap)
    n, m, p = _round_down(best, budget, cost_model, lo, n_cap)
    v_if, v_oua, v_probe = terms.parts(n, m, p)
    return Allocation(
        budget=float(budget), comparison=terms.comparison.label, estimator=terms.estimator, n_prompts=n,
        calibration_labels=m, probe_labels=p, cost=cost_model.cost(n, m, p),
        half_width=terms.half_width(n, m, p, alpha, exact=exact), std_error=float(np.sqrt(v_if + v_oua + v_probe)),
        df=terms.df(n, m, p), var_prompts=terms.prompt_var / n, var_labels=terms.residual_var / m + v_oua, var_probes=v_probe)


def _feasible_start(budget: float, cm: CostModel, lo: np.ndarray, share: float, n_cap: float) -> np.ndarray:
    """A point inside the budget: ``share`` of the money left after the minimum design goes to labels."""
    spare = max(budget - cm.cost(*lo), 0.0) * 0.999
    n = lo[0] + (1 - share) * spare / max(cm.prompt_cost, 1e-12) if cm.prompt_cost > 0 else n_cap
    n = min(n, n_cap)
    m = min(lo[1] + share * spare / max(cm.label_cost, 1e-12), n) if cm.label_cost > 0 else n
    x = np.array([n, max(m, lo[1]), lo[2]])
    while cm.cost(*x) > budget and x[0] > lo[0]:
        x[0] = max(lo[0], x[0] * 0.99)
        x[1] = min(x[1], x[0])
    return x


def _round_down(x: np.ndarray, budget: float, cm: CostModel, lo: np.ndarray, n_cap: float) -> tuple[int, int, int]:
    """Integers within budget; what rounding down left over buys prompts (up to ``n_cap``)."""
    n, m, p = (int(np.floor(v + 1e-9)) for v in x)
    n, m, p = max(n, int(lo[0]) + 1), max(min(m, n - 1), int(lo[1])), max(min(p, n), int(lo[2]))
    while cm.cost(n, m, p) > budget + 1e-9 and n > lo[0] + 1:
        n -= 1
        m = min(m, n - 1)
    if cm.prompt_cost > 0:  # more prompts never widen the interval
        extra = int(np.floor((budget - cm.cost(n, m, p)) / cm.prompt_cost + 1e-9))
        n = max(n, min(n + max(0, extra), int(np.floor(n_cap))))
    return n, m, p


def minimum_detectable_effect(budget: float, cost_model: CostModel, variance_model: VarianceModel | VarianceTerms,
                              comparison: Comparison | str, estimator: str = "direct", alpha: float = 0.05,
                              power: float = 0.8, **plan_kwargs: Any) -> Allocation:
    """The smallest true difference a two-sided level-alpha test detects with ``power`` (module docstring).

    The allocation is the one minimising the half-width (which minimises the SE the MDE scales with).

    Returns:
        The :class:`Allocation` with ``mde`` filled.
    """
    a = plan_evaluation(budget, cost_model, variance_model, comparison, estimator, alpha, **plan_kwargs)
    df = a.df if np.isfinite(a.df) else 1e9
    mde = (stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * a.std_error
    return replace(a, mde=float(mde))


def probe_labels_for_audit(residual_sd: float, margin: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Probe labels for the transport audit to detect a gap of ``margin`` with ``power`` (normal approx.):
    p = ((z_{1-alpha/2} + z_power) * sd_r / margin)^2."""
    if margin <= 0 or residual_sd < 0:
        raise ValueError(f"probe_labels_for_audit: margin must be > 0 and residual_sd >= 0, got {margin}, {residual_sd}")
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return int(np.ceil((z * residual_sd / margin) ** 2))


def plan_table(budgets: Sequence[float], cost_model: CostModel, variance_model: VarianceModel,
               comparisons: Sequence[Comparison | str], estimator: str = "direct", alpha: float = 0.05,
               power: float = 0.8, **plan_kwargs: Any) -> pd.DataFrame:
    """``minimum_detectable_effect`` for every budget and comparison as one table (``Allocation`` fields)."""
    rows = []
    for c in comparisons:
        for b in budgets:
            rows.append(minimum_detectable_effect(b, cost_model, variance_model, c, estimator, alpha, power,
                                                  **plan_kwargs).as_row())
    return pd.DataFrame(rows)
