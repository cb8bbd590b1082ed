"""The planner's variance model: how a comparison's reported CI shrinks with prompts and labels.

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

The cost model, the allocation of a budget and the minimum detectable effect that use this model:
:mod:`arena_cje.cje.planning`. Pure numpy/scipy/pandas; no Kedro.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

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
