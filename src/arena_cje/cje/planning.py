"""Evaluation planner: a variance model fitted to a pilot, a cost model, the allocation and the MDE.

Question: with a budget B, how many prompts n, calibration (oracle) labels m of the logging
policy's responses and probe labels p per target policy minimise the CI half-width of one
comparison (a policy's level, or the difference of two policies), and what is the smallest effect
that budget can detect?

**Variance model** (per comparison and estimator; ``VarianceTerms``). The reported interval is
theta +/- t_{1-alpha/2, df} sqrt(V_IF + V_OUA) (``inference.t_interval``). Its parts scale with
different sample sizes:

    V_IF(n, m)   = A / n + R / m      (prompt sampling; the labelled-residual term)
    V_OUA(m)     = B / m              (the calibration's own uncertainty, jackknife with K - 1 df)
    V_probe(p)   = C / p              (probe-corrected levels only)
    V = V_IF + V_OUA + V_probe,  df = Welch-Satterthwaite over (A/n + R/m, n - 1), (B/m, K - 1), (C/p, p - 1).

* A (per prompt): the variance of the contributions psi_g over the prompts WITHOUT an oracle label
  (there psi_g is the calibrated value alone).
* R (per label): the residual term L (Y - f(S)) / pi_L that an estimator with the policy's own labels
  (``direct`` of the logging policy, the DR family) adds on the labelled prompts; its per-prompt
  variance is sigma_r^2 / pi_L with pi_L = m / n, so its share of V_IF is sigma_r^2 / m: it
  shrinks with the number of LABELS, not prompts. Estimated as R = (var_g psi_g - A) * m0 / G0.
* B (per label): m0 * V_OUA of the pilot (the jackknife variance of a calibrator fitted on m0
  labels scales like 1 / m; measured on the simulated world, m V_OUA = 0.029, 0.025, 0.022, 0.021
  at m = 100, 200, 400, 800 for pi_cot: a monotone fit on very few labels is somewhat noisier).
* C (per probe label): var(r) of the probe residuals r = Y - f(S) (``TransportAudit.std_error^2 * n``).
  A probe-corrected level adds C / p; a ``combined`` level (the audit passed) precision-weights the
  borrowed level with the probe-corrected one, so its calibration part is 1 / (m / B + p / C).

Why the first planner (``report.budget``, var_if + var_oua * m0 / m) underestimated half-widths with
fewer labels: (1) it kept V_IF fixed, but for the logging policy's level and every DR estimate the
residual term R / m is part of V_IF; (2) it used the normal z while the reported interval uses the
Satterthwaite t, whose df fall towards K - 1 = 4 as V_OUA dominates (t_{0.975, 4} = 2.78 vs 1.96);
(3) one pilot's V_OUA rests on K - 1 = 4 df: the delete-one-fold jackknife of one random partition of
the labels into K folds varies by a factor of 2-10 between partitions of the SAME labels, so a
single-run planner inherits that noise. ``pilot_results`` re-estimates the pilot under several fold
partitions (the prompt ids salted, so ``fold_of`` deals them anew) and ``fit_variance_model``
averages the coefficients over them (and over several pilots when there are). Measured in
docs/planning.md.

Predicted half-width = the mean of the reported half-widths over replications:
E[t_{df_hat} sqrt(V_IF + V_OUA_hat)], with V_OUA_hat ~ V_OUA chi^2_{K-1} / (K - 1) (the jackknife's
own spread), integrated over the chi^2 quantiles (``expected_half_width``); with ``exact=False`` the
plug-in t_{df} sqrt(V).

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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats

#: Estimators whose contributions carry a labelled-residual term (L / pi) (Y - f(S)).
RESIDUAL_ESTIMATORS = ("dr_cpo", "mrdr", "tmle", "stacked_dr")
#: Quantile grid of chi^2_{K-1} used to average the reported half-width over the jackknife's spread.
_QUAD = (np.arange(64) + 0.5) / 64


@dataclass(frozen=True)
class Comparison:
    """What to plan for: a policy's level (``baseline`` None) or the difference policy - baseline."""

    policy: str
    baseline: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Comparison":
        """``"pi_cot"`` (a level) or ``"pi_cot-pi_0"`` / ``"pi_cot - pi_0"`` (a difference)."""
        text = str(text).strip()
        parts = [p.strip() for p in text.split(" - " if " - " in text else "-")]
        if len(parts) == 1 and parts[0]:
            return cls(parts[0])
        if len(parts) == 2 and all(parts):
            return cls(parts[0], parts[1])
        raise ValueError(f"comparison {text!r}: expected 'POLICY' or 'POLICY-BASELINE'")

    @property
    def label(self) -> str:
        return self.policy if self.baseline is None else f"{self.policy} - {self.baseline}"


@dataclass(frozen=True)
class VarianceTerms:
    """Variance coefficients of one comparison (module docstring).

    Attributes:
        comparison: What the terms describe.
        estimator: Estimator name.
        prompt_var: A, per prompt (V_IF part A / n).
        residual_var: R, per calibration label, inside V_IF (R / m).
        calibration_var: B, per calibration label, the OUA jackknife part (B / m).
        probe_var: C, per probe label (0 when the comparison does not use a probe).
        probe_mode: ``none``, ``corrected`` (C / p added) or ``combined`` (1 / (m / B + p / C)).
        n_folds: K (the OUA part has K - 1 df).
        pilot: (prompts, calibration labels, probe labels per policy) of the pilot(s) it was fitted on.
    """

    comparison: Comparison
    estimator: str
    prompt_var: float
    residual_var: float
    calibration_var: float
    probe_var: float = 0.0
    probe_mode: str = "none"
    n_folds: int = 5
    pilot: tuple[float, float, float] = (float("nan"), float("nan"), float("nan"))
    def calibration_part(self, m: float) -> float:
        """V_OUA at m labels: B / m."""
        return self.calibration_var / m

    def parts(self, n: float, m: float, p: float) -> tuple[float, float, float]:
        """(V_IF, V_OUA, V_probe) at n prompts, m calibration labels, p probe labels per policy."""
        v_if = self.prompt_var / n + self.residual_var / m
        v_oua = self.calibration_part(m)
        v_probe = 0.0
        if self.probe_mode == "corrected" and self.probe_var > 0:
            v_probe = self.probe_var / max(p, 1e-9)
        elif self.probe_mode == "combined" and self.probe_var > 0 and p > 0 and self.calibration_var > 0:
            # The borrowed level's calibration part precision-weighted with the probe: 1 / (m / B + p / C).
            v_oua = 1.0 / (1.0 / v_oua + p / self.probe_var)
        return v_if, v_oua, v_probe

    def variance(self, n: float, m: float, p: float = 0.0) -> float:
        """Total variance V(n, m, p)."""
        return float(sum(self.parts(n, m, p)))

    def df(self, n: float, m: float, p: float = 0.0) -> float:
        """Welch-Satterthwaite df of the reported interval at (n, m, p)."""
        v_if, v_oua, v_probe = self.parts(n, m, p)
        return satterthwaite([(v_if, n - 1), (v_oua, self.n_folds - 1), (v_probe, p - 1)])

    def half_width(self, n: float, m: float, p: float = 0.0, alpha: float = 0.05, exact: bool = True) -> float:
        """Predicted CI half-width: the mean reported one (``exact``) or t_{df} sqrt(V) (module docstring)."""
        v_if, v_oua, v_probe = self.parts(n, m, p)
        if not exact or v_oua <= 0:
            return float(stats.t.ppf(1 - alpha / 2, self.df(n, m, p)) * np.sqrt(v_if + v_oua + v_probe))
        k1 = self.n_folds - 1
        scale = stats.chi2.ppf(_QUAD, k1) / k1  # V_OUA_hat / V_OUA over the jackknife's spread
        vo = v_oua * scale
        df = np.array([satterthwaite([(v_if, n - 1), (o, k1), (v_probe, p - 1)]) for o in vo])
        return float(np.mean(stats.t.ppf(1 - alpha / 2, df) * np.sqrt(v_if + vo + v_probe)))


def satterthwaite(parts: Sequence[tuple[float, float]]) -> float:
    """Welch-Satterthwaite df of sum_c v_c with component dfs (components with v_c <= 0 or df <= 0 dropped)."""
    parts = [(v, d) for v, d in parts if v > 0 and np.isfinite(v) and d > 0]
    if not parts:
        return float("inf")
    return float(sum(v for v, _ in parts) ** 2 / sum(v**2 / d for v, d in parts))


# ----------------------------------------------------------------------------------------------
# Fitting the variance model to a pilot
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VarianceModel:
    """Variance terms of every (comparison label, estimator) fitted to one or more pilots."""

    terms: Mapping[tuple[str, str], VarianceTerms]
    source: str = "pilot"

    def get(self, comparison: Comparison | str, estimator: str) -> VarianceTerms:
        """The terms of one comparison; raises ``KeyError`` naming what exists."""
        c = comparison if isinstance(comparison, Comparison) else Comparison.parse(comparison)
        key = (c.label, estimator)
        if key in self.terms:
            return self.terms[key]
        if c.baseline is not None:  # a difference is symmetric in its variance
            flipped = (Comparison(c.baseline, c.policy).label, estimator)
            if flipped in self.terms:
                return replace(self.terms[flipped], comparison=c)
        have = sorted({k[0] for k in self.terms if k[1] == estimator})
        raise KeyError(f"no variance terms for {c.label!r} with estimator {estimator!r} in the {self.source} model; "
                       f"comparisons with {estimator}: {have}")

    def table(self) -> pd.DataFrame:
        """One row per (comparison, estimator): the coefficients."""
        rows = [{"comparison": t.comparison.label, "estimator": t.estimator, "prompt_var": t.prompt_var,
                 "residual_var": t.residual_var, "calibration_var": t.calibration_var, "probe_var": t.probe_var,
                 "probe_mode": t.probe_mode,  "pilot_prompts": t.pilot[0], "pilot_labels": t.pilot[1]}
                for t in self.terms.values()]
        return pd.DataFrame(rows)


def _has_residual(out: Any) -> bool:
    return out.estimator in RESIDUAL_ESTIMATORS or (out.estimator == "direct" and bool(out.extras.get("residual_correction")))


def _terms_from_psi(psi: pd.Series, reps: np.ndarray | None, labelled: pd.Index, residual: bool, m0: int) -> tuple[float, float, float]:
    """(A, R, B) from contributions, replicates and the labelled prompts (module docstring)."""
    from arena_cje.cje.inference import jackknife_variance

    psi = psi.dropna()
    g0 = len(psi)
    total = float(np.var(psi.to_numpy(dtype=float), ddof=1))
    unlab = psi[~psi.index.isin(labelled)]
    a, r = total, 0.0
    if residual and len(unlab) >= 2 and m0 > 0:
        a = float(np.var(unlab.to_numpy(dtype=float), ddof=1))
        r = max(0.0, total - a) * m0 / g0
    b = jackknife_variance(reps) * m0
    return a, r, b


def _probe_terms(result: Any, policy: str, estimator: str) -> tuple[float, str, float]:
    """(C, probe mode, lambda) of a reported level row (``level_source`` and the probe audit)."""
    est = result.estimates
    row = est[(est["policy"] == policy) & (est["estimator"] == estimator)]
    audit = (result.transport or {}).get(policy)
    if not len(row) or audit is None or "level_source" not in row or not np.isfinite(audit.std_error):
        return 0.0, "none", 0.0
    source = row["level_source"].iloc[0]
    lam = float(row["probe_weight"].iloc[0]) if "probe_weight" in row and np.isfinite(row["probe_weight"].iloc[0]) else 0.0
    c = float(audit.std_error) ** 2 * int(audit.n_probe)
    if source == "probe_corrected":
        return c, "corrected", 1.0
    if source == "combined":
        return c, "combined", lam
    return 0.0, "none", 0.0


def refold(data: Any, salt: str) -> Any:
    """A copy of a ``CJEDataset`` whose prompt ids carry ``salt``: ``fold_of`` deals new folds.

    Estimates do not depend on prompt names except through the cross-fitting folds, so this is the
    same data under another random partition of its labels into K folds.
    """
    def rename(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.assign(prompt_id=frame["prompt_id"].astype(str) + salt)

    return replace(data, logged=rename(data.logged), fresh={p: rename(f) for p, f in data.fresh.items()},
                   probes={p: rename(f) for p, f in data.probes.items()}, logged_source=None)


def pilot_results(data: Any, config: Any, partitions: int = 4) -> list[Any]:
    """``estimate_policies`` on a pilot under ``partitions`` fold partitions (module docstring).

    Args:
        data: The pilot ``CJEDataset``.
        config: ``EstimationConfig`` of the run to plan (bootstrap is switched off: not needed).
        partitions: Fold partitions (the first is the data's own).
    """
    from arena_cje.cje.api import estimate_policies

    cfg = replace(config, n_bootstrap=0) if "n_bootstrap" in {f.name for f in fields(config)} else config
    return [estimate_policies(data if i == 0 else refold(data, f"#fold{i}"), cfg) for i in range(max(1, partitions))]


def fit_variance_model(results: Any | Sequence[Any], comparisons: Sequence[Comparison | str] | None = None,
                       estimators: Sequence[str] | None = None) -> VarianceModel:
    """Fit the variance model to pilot ``EstimationResult``(s) (module docstring).

    Args:
        results: One ``EstimationResult`` or several (their coefficients are averaged: the OUA part
            of one pilot rests on K - 1 df). Each needs ``outputs`` (contributions, replicates) and
            ``calibration`` (the labelled prompts).
        comparisons: Comparisons to fit; default every policy's level and every pair of policies.
        estimators: Estimators to fit; default every estimator in the results.

    Returns:
        :class:`VarianceModel`.

    Raises:
        ValueError: a result has no calibration (too few labels) or no contributions.
    """
    results = list(results) if isinstance(results, (list, tuple)) else [results]
    acc: dict[tuple[str, str], list[VarianceTerms]] = {}
    for res in results:
        if res.calibration is None:
            raise ValueError("fit_variance_model: the pilot has no calibration (too few oracle labels)")
        if not res.outputs:
            raise ValueError("fit_variance_model: the pilot's EstimationResult carries no estimator outputs")
        labelled = pd.Index(res.calibration.points["prompt_id"].astype(object))
        m0 = int(res.calibration.n_labelled)
        k = int(res.calibration.fold_curves.shape[0])
        policies = list(dict.fromkeys(p for p, _ in res.outputs))
        names = list(estimators or dict.fromkeys(e for _, e in res.outputs))
        comps = ([Comparison.parse(c) if isinstance(c, str) else c for c in comparisons] if comparisons is not None
                 else [Comparison(p) for p in policies]
                 + [Comparison(a, b) for i, a in enumerate(policies) for b in policies[i + 1:]])
        for name in names:
            for c in comps:
                t = _fit_one(res, c, name, labelled, m0, k)
                if t is not None:
                    acc.setdefault((c.label, name), []).append(t)
    terms = {key: _average(ts) for key, ts in acc.items()}
    return VarianceModel(terms, source=f"{len(results)} pilot fit(s)")


def _average(ts: list[VarianceTerms]) -> VarianceTerms:
    """Average the terms of several pilot fits (per-label coefficients are m0-normalised, so pilots of
    different sizes pool)."""
    mean = lambda attr: float(np.mean([getattr(t, attr) for t in ts]))  # noqa: E731
    return replace(ts[0], prompt_var=mean("prompt_var"), residual_var=mean("residual_var"),
                   calibration_var=mean("calibration_var"), probe_var=mean("probe_var"),
                   pilot=tuple(float(np.mean([t.pilot[i] for t in ts])) for i in range(3)))


def _fit_one(res: Any, c: Comparison, name: str, labelled: pd.Index, m0: int, k: int) -> VarianceTerms | None:
    """Terms of one comparison in one pilot result (module docstring)."""
    oa = res.outputs.get((c.policy, name))
    if oa is None or oa.n < 2 or not np.isfinite(oa.estimate):
        return None
    sides = [_probe_terms(res, c.policy, name)]
    if c.baseline is None:
        psi, reps, residual = oa.psi, oa.oua_replicates, _has_residual(oa)
    else:
        ob = res.outputs.get((c.baseline, name))
        if ob is None or ob.n < 2 or not np.isfinite(ob.estimate):
            return None
        shared = oa.psi.index.intersection(ob.psi.index)
        if len(shared) < 2:
            return None
        psi = oa.psi.reindex(shared) - ob.psi.reindex(shared)
        reps = None
        if oa.oua_replicates is not None and ob.oua_replicates is not None:
            reps = oa.oua_replicates - ob.oua_replicates
        residual = _has_residual(oa) or _has_residual(ob)
        sides.append(_probe_terms(res, c.baseline, name))
    a, r, b = _terms_from_psi(psi, reps, labelled, residual, m0)
    probe_n = [float(res.transport[p].n_probe) for p, (_, mode, _) in zip((c.policy, c.baseline), sides) if mode != "none"]
    p0 = float(np.mean(probe_n)) if probe_n else 0.0
    # The probe term sits in psi with variance ~ lambda^2 C G / p: move it to the 1 / p part.
    c_var = sum(lam**2 * cv for cv, mode, lam in sides if mode != "none")
    if p0 > 0:
        a = max(0.0, a - c_var * len(psi) / p0)
    mode = "corrected" if c_var > 0 else "none"
    if c.baseline is None and sides[0][1] == "combined":
        cv, mode, lam = sides[0]
        c_var = cv
        if lam < 1:
            b = b / (1 - lam) ** 2  # replicates (1 - lambda) B_k + lambda C_k: C_k barely moves with f
    return VarianceTerms(c, name, a, r, b, c_var, mode, k, (float(oa.n), float(m0), p0))


# ----------------------------------------------------------------------------------------------
# Costs, allocation, MDE
# ----------------------------------------------------------------------------------------------


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
