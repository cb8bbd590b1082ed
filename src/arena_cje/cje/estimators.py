"""CJE estimators behind one small interface.

Each estimator is a function ``(ctx, policy) -> EstimatorOutput`` that returns per-prompt
contributions psi_g (influence values plus the estimate, summed within a prompt) with
theta_hat = mean_g psi_g, and the OUA replicates theta_k (the estimate recomputed with the
delete-one-fold calibrator f^(-k)). Inference is shared (``inference.py``). Notation (CJE paper,
arXiv 2512.11150): X prompt, A response, S judge score, Y oracle label, L_i = 1 if row i is
labelled, pi_L = share of labelled logged rows, f the cross-fitted calibrator (R_i = f^(-k(i))(S_i)),
W the mean-one weights, g_hat(X) = mean of f over the policy's fresh draws for prompt X.

Logged-row estimators aggregate row influence values phi_i into prompts by
psi_g = (G/n) sum_{i in g} phi_i so that mean_g psi_g = mean_i phi_i and var(psi)/G is the
cluster-robust variance.

* naive:  psi_g = mean judge score of the policy's fresh draws of prompt g (judge scale, uncalibrated).
* direct: psi_g = mean_d [ f(S_d) + (L_d/pi_F)(Y_d - f(S_d)) ] over the fresh draws d of prompt g;
  the residual term (pi_F = labelled share of those draws) only exists when the policy's own fresh
  draws carry oracle labels (e.g. the logging policy); otherwise psi_g = mean_d f(S_d).
* snips:  theta = sum_i w_i R_i / sum_i w_i on raw weights; phi_i = w~_i (R_i - theta) + theta.
* calibrated_ips: the same with SIMCal-W weights W = 1 + gamma (sum_c beta_c W^c - 1), plus the
  influence of ESTIMATING the monotone projections W^c = Pi_c(w~ | S), c in {+, -}: perturbing the
  data moves W^c by the projection of (w~ - W^c), which moves theta by
  E[(w~ - W^c)(m(S) - theta)], m(S) = E[R | S]; so
  phi_i = W_i (R_i - theta) + theta + gamma sum_c beta_c (w~_i - W^c_i)(m_hat(S_i) - theta),
  m_hat = isotonic fit of R on S (R is monotone in S up to covariates). Without this term the SE
  treated the projection as fixed and under-covered. beta and gamma are treated as fixed. Refused when
  the RAW ESS fraction is below ``gates.ess_refuse`` (SIMCal cannot create overlap) or when
  target-typicality coverage is below ``gates.ttc_refuse``; warned when the variance cap blends
  (gamma < 1: the estimand is shrunk toward the logging policy's value, a bias no SE covers).
* dr_cpo: phi_i = g_hat(X_i) + W_i (L_i/pi_L)(Y_i - f(S_i)): direct method on fresh draws plus the
  importance-weighted calibration residual on the labelled slice (an AIPW / two-phase-sampling
  correction: unbiased if either the calibration transports to the policy or the weights are right).
* mrdr: as dr_cpo with an outcome model q of the calibration's own family and covariates (isotonic
  in S, or two-stage in S and length) fitted with weights W_i^2 (the variance-minimising weighting of
  the correction term, Farajtabar et al. 2018), cross-fitted by fold.
* tmle: initial q = f on the label scale mapped to [0, 1]; one logistic fluctuation
  logit q* = logit q + eps with eps solving sum_i W_i L_i (Y_i - q*_i) = 0 (so the weighted residual
  term is zero by construction); theta = mean g*_hat(X) with g* built from q* on the fresh draws.
* stacked_dr: theta = sum_c beta_c theta_c over {dr_cpo, tmle, mrdr}, beta = argmin over the simplex
  of beta' Cov(psi) beta (variance of the stacked influence function, scipy SLSQP).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.special import expit, logit
from sklearn.isotonic import IsotonicRegression

from arena_cje.cje.calibration import CrossFitCalibration, make_calibrator
from arena_cje.cje.config import EstimationConfig
from arena_cje.cje.data import CJEDataset, suspect_logprob_rows
from arena_cje.cje.folds import fold_of
from arena_cje.cje.weights import (
    JudgeOrder,
    WeightDiagnostics,
    ess_fraction,
    hajek_weights,
    hill_tail_index,
    judge_overlap,
    SimcalResult,
    simcal_weights,
    target_typicality_coverage,
    _simplex_min_variance,
)


@dataclass
class EstimatorOutput:
    """What every estimator returns.

    Attributes:
        policy: Target policy.
        estimator: Estimator name.
        estimate: theta_hat = mean of ``psi`` (NaN when not computable).
        psi: Per-prompt contributions indexed by prompt_id.
        oua_replicates: theta_k with calibrator f^(-k), k = 1..K (None: no calibration used).
        oracle_n: Number of oracle labels the estimate rests on.
        uses_weights: Whether importance weights enter the estimate.
        reasons: Why the row is flagged (filled by estimators and gates).
        refused: True when the estimate cannot be computed or must not be reported.
        extras: Estimator-specific values (e.g. stacking weights).
    """

    policy: str
    estimator: str
    estimate: float
    psi: pd.Series
    oua_replicates: np.ndarray | None = None
    oracle_n: int = 0
    uses_weights: bool = False
    reasons: list[str] = field(default_factory=list)
    refused: bool = False
    warned: bool = False
    extras: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(len(self.psi))


def _refused(policy: str, name: str, reason: str) -> EstimatorOutput:
    return EstimatorOutput(policy, name, float("nan"), pd.Series(dtype=float), reasons=[reason], refused=True)


def _prompt_sum(prompt_ids: np.ndarray, phi: np.ndarray) -> pd.Series:
    """psi_g = (G/n) sum_{i in g} phi_i, indexed by prompt_id."""
    codes, uniq = pd.factorize(prompt_ids)
    s = np.bincount(codes, weights=phi, minlength=len(uniq))
    # dtype=object: an Arrow string index (pandas' default) copies every id; object shares them
    return pd.Series(s * len(uniq) / len(phi), index=pd.Index(uniq, name="prompt_id", dtype=object))


def _prompt_mean(prompt_ids: np.ndarray, values: np.ndarray) -> pd.Series:
    codes, uniq = pd.factorize(prompt_ids)
    s = np.bincount(codes, weights=values, minlength=len(uniq))
    c = np.bincount(codes, minlength=len(uniq))
    return pd.Series(s / c, index=pd.Index(uniq, name="prompt_id", dtype=object))


@dataclass
class PolicyWeights:
    """Usable logged rows of a policy with their raw and SIMCal weights."""

    mask: np.ndarray
    raw: np.ndarray
    simcal: np.ndarray
    diagnostics: WeightDiagnostics
    simcal_fit: SimcalResult | None = None
    zero_rows: np.ndarray | None = None  # used logged rows with a log-prob of exactly 0.0 (all rows, bool)
    identical_rows: np.ndarray | None = None  # used logged rows with one log-prob under every policy


def _logprob_reasons(ctx: "EstimationContext", pw: PolicyWeights) -> list[str]:
    """Why the logged rows behind a policy's weights are incomplete or suspect (counted, never imputed)."""
    d = pw.diagnostics
    reasons = []
    if d.n_missing_logprob:
        reasons.append(f"{d.n_missing_logprob} logged row(s) without log-probs excluded")
    src = ctx.data.logged_source
    if src is not None and len(src.labels) != len(pw.mask):  # a dataset rebuilt from another one's rows
        src = None
    if d.n_zero_logprob:
        where = f" ({src.describe(pw.zero_rows)})" if src is not None else ""
        reasons.append(f"{d.n_zero_logprob} logged row(s) with a log-prob of exactly 0.0 (probability one: a failed "
                       f"scoring call upstream?){where}")
    if d.n_identical_logprobs:
        where = f" ({src.describe(pw.identical_rows)})" if src is not None else ""
        reasons.append(f"{d.n_identical_logprobs} logged row(s) with the same log-prob under every policy (a "
                       f"scoring failure upstream?){where}")
    return reasons


class EstimationContext:
    """Shared, lazily computed quantities for one dataset, config and calibration."""

    def __init__(self, data: CJEDataset, config: EstimationConfig, calibration: CrossFitCalibration | None) -> None:
        self.data = data
        self.config = config
        self.cal = calibration
        self.logged = data.logged
        self.K = config.n_folds
        self._weights: dict[str, PolicyWeights] = {}
        self._fresh: dict[str, dict] = {}
        self._mrdr: dict[str, dict] = {}
        self.outputs: dict[tuple[str, str], EstimatorOutput] = {}

    @property
    def use_oua(self) -> bool:
        return self.config.oua and self.cal is not None and not self.cal.full_coverage

    @cached_property
    def folds(self) -> np.ndarray:
        return fold_of(self.logged["prompt_id"], self.K)

    @cached_property
    def rewards(self) -> np.ndarray:
        """R_i = f^(-k(i))(S_i) on the logged rows."""
        return self.cal.predict_oof(self.logged)

    @cached_property
    def rewards_k(self) -> np.ndarray:
        """K x n matrix of f^(-k)(S_i) (OUA replicates)."""
        return np.vstack([self.cal.predict_fold(self.logged, k) for k in range(self.K)])

    @cached_property
    def labels(self) -> np.ndarray:
        return self.logged["oracle_label"].to_numpy(dtype=float)

    def fresh(self, policy: str) -> dict | None:
        """Fresh draws of a policy with cross-fitted and replicate predictions."""
        if policy not in self.data.fresh or len(self.data.fresh[policy]) == 0:
            return None
        if policy not in self._fresh:
            f = self.data.fresh[policy]
            d = {"frame": f, "pid": f["prompt_id"].to_numpy(dtype=object), "judge": f["judge_score"].to_numpy(dtype=float),
                 "label": f["oracle_label"].to_numpy(dtype=float)}
            codes, uniq = pd.factorize(d["pid"])
            d["codes"], d["uniq"] = codes, pd.Index(uniq, dtype=object)
            d["counts"] = np.bincount(codes, minlength=len(uniq)).astype(float)
            if self.cal is not None:
                d["pred"] = self.cal.predict_oof(f)
                d["pred_k"] = np.vstack([self.cal.predict_fold(f, k) for k in range(self.K)])
            self._fresh[policy] = d
        return self._fresh[policy]

    @cached_property
    def suspect_logprobs(self) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
        """``data.suspect_logprob_rows`` of the logged rows (exact 0.0, identical under every policy)."""
        return suspect_logprob_rows(self.logged["base_logprob"].to_numpy(dtype=float), self.data.logprobs)

    def weights(self, policy: str) -> PolicyWeights | None:
        """Raw and SIMCal weights of a policy (None when it has no log-probs)."""
        if policy not in self.data.logprobs.columns:
            return None
        if policy not in self._weights:
            lp = self.data.logprobs[policy].to_numpy(dtype=float)
            base = self.logged["base_logprob"].to_numpy(dtype=float)
            mask, logw, w = hajek_weights(lp, base)
            judge = self.logged["judge_score"].to_numpy(dtype=float)
            fresh = self.fresh(policy)
            sim = np.full(w.size, np.nan)
            stack: dict[str, float] = {}
            gamma = float("nan")
            res = None
            if w.size >= 2 and self.cal is not None:
                res = simcal_weights(w, judge[mask], self.rewards[mask], self.folds[mask], self.config.var_cap)
                sim, stack, gamma = res.weights, res.stack_weights, res.blend_gamma
            ttc, ttc_method = float("nan"), "unavailable"
            if "n_tokens" in self.logged.columns:
                fr = fresh["frame"] if fresh is not None else None
                has_fresh_lp = fr is not None and {"logprob", "n_tokens"} <= set(fr.columns)
                ttc, ttc_method = target_typicality_coverage(
                    lp, self.logged["n_tokens"].to_numpy(dtype=float), base,
                    fr["logprob"].to_numpy(dtype=float) if has_fresh_lp else None,
                    fr["n_tokens"].to_numpy(dtype=float) if has_fresh_lp else None)
            diag = WeightDiagnostics(
                policy=policy,
                n=int(mask.sum()),
                n_missing_logprob=int((~mask).sum()),
                ess_raw=ess_fraction(w),
                ess_simcal=ess_fraction(sim) if np.isfinite(sim).all() and sim.size else float("nan"),
                max_weight=float(w.max()) if w.size else float("nan"),
                max_weight_simcal=float(np.max(sim)) if sim.size and np.isfinite(sim).all() else float("nan"),
                hill_alpha=hill_tail_index(w),
                near_zero_mass=float(np.mean(w < 1e-3)) if w.size else float("nan"),
                hellinger_affinity=float(np.mean(np.sqrt(w))) if w.size else float("nan"),
                judge_overlap=judge_overlap(judge, fresh["judge"]) if fresh is not None else float("nan"),
                simcal_stack=stack,
                simcal_gamma=gamma,
                log_weights=logw,
                ttc=ttc,
                ttc_method=ttc_method,
            )
            zero_base, zero_target, identical = self.suspect_logprobs
            zero_rows = (zero_base | zero_target[policy].to_numpy()) & mask
            identical_rows = identical & mask
            diag.n_zero_logprob, diag.n_identical_logprobs = int(zero_rows.sum()), int(identical_rows.sum())
            self._weights[policy] = PolicyWeights(mask=mask, raw=w, simcal=sim, diagnostics=diag, simcal_fit=res,
                                                  zero_rows=zero_rows, identical_rows=identical_rows)
        return self._weights[policy]


# ----------------------------------------------------------------------------------------------
# Estimators
# ----------------------------------------------------------------------------------------------


def naive(ctx: EstimationContext, policy: str) -> EstimatorOutput:
    """Mean judge score of the policy's fresh draws (prompt-averaged); judge scale, no calibration."""
    f = ctx.fresh(policy)
    if f is None:
        return _refused(policy, "naive", "no fresh draws for this policy")
    psi = _prompt_mean(f["pid"], f["judge"])
    out = EstimatorOutput(policy, "naive", float(psi.mean()), psi)
    out.reasons.append("uncalibrated: mean judge score, not on the oracle scale")
    out.warned = True
    return out


def direct(ctx: EstimationContext, policy: str) -> EstimatorOutput:
    """Calibrated direct method on fresh draws, with the labelled-draw residual term when available."""
    f = ctx.fresh(policy)
    if f is None:
        return _refused(policy, "direct", "no fresh draws for this policy")
    lab = ~np.isnan(f["label"])
    n_lab = int(lab.sum())

    def contrib(pred: np.ndarray) -> np.ndarray:
        v = pred.copy()
        if n_lab >= 2:
            pi_f = n_lab / len(pred)
            v[lab] += (f["label"][lab] - pred[lab]) / pi_f
        return v

    psi = _prompt_mean(f["pid"], contrib(f["pred"]))
    # replicates: the same prompt means from the context's factorized prompt codes
    reps = (np.array([np.mean(np.bincount(f["codes"], weights=contrib(pk), minlength=len(f["uniq"])) / f["counts"])
                      for pk in f["pred_k"]]) if ctx.use_oua else None)
    out = EstimatorOutput(policy, "direct", float(psi.mean()), psi, reps, oracle_n=ctx.cal.diagnostics.n_labelled)
    out.extras["residual_correction"] = n_lab >= 2
    return out


def _projection_correction(pw: PolicyWeights, judge: np.ndarray, r: np.ndarray, theta: float) -> np.ndarray:
    """IF term of the estimated SIMCal projections (module docstring of ``calibrated_ips``).

    gamma sum_{c in {+,-}} beta_c (w~_i - W^c_i)(m_hat(S_i) - theta), m_hat = isotonic fit of R on S.
    """
    fit = pw.simcal_fit
    if fit is None or not fit.projections:
        return np.zeros(r.size)
    m_hat = IsotonicRegression(increasing=True, out_of_bounds="clip").fit(judge, r).predict(judge)
    corr = np.zeros(r.size)
    for name, proj in fit.projections.items():
        corr += fit.stack_weights.get(name, 0.0) * (pw.raw - proj)
    return fit.blend_gamma * corr * (m_hat - theta)


SIMCAL_JACKKNIFE_GROUPS = 20


def _simcal_jackknife(ctx: EstimationContext, pw: PolicyWeights, r: np.ndarray) -> float:
    """Grouped delete-a-group jackknife of calibrated IPS, refitting SIMCal (projections AND stacking).

    Prompts are split into G = 20 groups by crc32(prompt_id) mod G; theta_(-g) recomputes the whole
    SIMCal fit without group g; V_JK = (G-1)/G sum_g (theta_(-g) - mean theta)^2.
    """
    m = pw.mask
    pid = ctx.logged["prompt_id"].to_numpy(dtype=object)[m]
    grp = fold_of(pid, SIMCAL_JACKKNIFE_GROUPS)
    judge = ctx.logged["judge_score"].to_numpy(dtype=float)[m]
    folds = ctx.folds[m]
    order = JudgeOrder(judge)  # one sort serves all refits
    thetas = []
    for g in range(SIMCAL_JACKKNIFE_GROUPS):
        keep = grp != g
        if keep.sum() < 2 or keep.all():
            continue
        wk = pw.raw[keep] / pw.raw[keep].mean()
        wj = simcal_weights(wk, judge[keep], r[keep], folds[keep], ctx.config.var_cap, order=order.subset(keep),
                            keep_projections=False).weights
        thetas.append(float(np.sum(wj * r[keep]) / np.sum(wj)))
    t = np.asarray(thetas)
    if t.size < 2:
        return float("nan")
    return float((t.size - 1) / t.size * np.sum((t - t.mean()) ** 2))


def _ips(ctx: EstimationContext, policy: str, name: str, which: str) -> EstimatorOutput:
    pw = ctx.weights(policy)
    if pw is None or pw.mask.sum() < 2:
        return _refused(policy, name, "no target log-probs for this policy on the logged data")
    w = pw.raw if which == "raw" else pw.simcal
    if not np.isfinite(w).all():
        return _refused(policy, name, "weights unavailable")
    m = pw.mask
    r = ctx.rewards[m]
    theta = float(np.sum(w * r) / np.sum(w))
    wn = w / w.mean()
    phi = wn * (r - theta) + theta
    if which == "simcal":
        phi = phi + _projection_correction(pw, ctx.logged["judge_score"].to_numpy(dtype=float)[m], r, theta)
    psi = _prompt_sum(ctx.logged["prompt_id"].to_numpy(dtype=object)[m], phi)
    reps = np.array([np.sum(w * rk[m]) / np.sum(w) for rk in ctx.rewards_k]) if ctx.use_oua else None
    out = EstimatorOutput(policy, name, theta, psi, reps, oracle_n=ctx.cal.diagnostics.n_labelled, uses_weights=True)
    if which == "simcal" and pw.diagnostics.ess_raw < 0.999:  # unit weights: SIMCal is the identity
        out.extras["sampling_jackknife"] = (_simcal_jackknife(ctx, pw, r), SIMCAL_JACKKNIFE_GROUPS)
    data_reasons = _logprob_reasons(ctx, pw)
    if data_reasons:
        out.reasons.extend(data_reasons)
        out.warned = True
    d, g = pw.diagnostics, ctx.config.gates
    if which == "simcal":
        # SIMCal cannot create overlap the logger lacks: gate on the RAW weights (the SIMCal ESS is
        # >= 1/(1 + var_cap) by construction and says nothing about overlap).
        if d.ess_raw < g.ess_refuse:
            out.refused = True
            out.reasons.append(f"raw ESS fraction {d.ess_raw:.4f} < {g.ess_refuse}: too little overlap for weights-only estimation")
        if np.isfinite(d.simcal_gamma) and d.simcal_gamma < 0.999:
            out.warned = True
            out.reasons.append(f"variance cap blended the weights toward uniform (gamma {d.simcal_gamma:.2f}):"
                               " estimate shrunk toward the logging policy's value")
    ttc_min = getattr(g, "ttc_refuse", 0.7)
    if np.isfinite(d.ttc) and d.ttc < ttc_min:
        out.refused = True
        out.reasons.append(f"target-typicality coverage {d.ttc:.2f} < {ttc_min}: logs-only IPS unreliable, use direct/DR")
    return out


def snips(ctx: EstimationContext, policy: str) -> EstimatorOutput:
    """Self-normalised IPS on the raw weights with calibrated rewards."""
    return _ips(ctx, policy, "snips", "raw")


def calibrated_ips(ctx: EstimationContext, policy: str) -> EstimatorOutput:
    """Self-normalised IPS on the SIMCal-W weights with calibrated rewards."""
    return _ips(ctx, policy, "calibrated_ips", "simcal")


def _dr_setup(ctx: EstimationContext, policy: str, name: str) -> dict | EstimatorOutput:
    """Rows usable by the DR family: logged rows with both log-probs whose prompt has fresh draws."""
    pw = ctx.weights(policy)
    f = ctx.fresh(policy)
    if f is None:
        return _refused(policy, name, "no fresh draws for this policy")
    if pw is None or pw.mask.sum() < 2 or not np.isfinite(pw.simcal).all():
        return _refused(policy, name, "no target log-probs for this policy on the logged data")
    pid_all = ctx.logged["prompt_id"].to_numpy(dtype=object)
    rows = np.flatnonzero(pw.mask)
    fresh_index = f["uniq"].get_indexer(pid_all[rows])
    keep = fresh_index >= 0
    rows, fresh_index = rows[keep], fresh_index[keep]
    if rows.size < 2:
        return _refused(policy, name, "no logged prompt has fresh draws of this policy")
    w = pw.simcal[keep]
    w = w / w.mean()
    y = ctx.labels[rows]
    lab = ~np.isnan(y)
    pi_l = lab.mean()
    reasons = []
    if (~keep).any():
        reasons.append(f"{int((~keep).sum())} logged row(s) without fresh draws of the policy excluded")
    reasons.extend(_logprob_reasons(ctx, pw))
    return {"rows": rows, "pid": pid_all[rows], "fresh_index": fresh_index, "w": w, "y": y, "lab": lab, "pi": pi_l, "fresh": f, "reasons": reasons,
            "judge": ctx.logged["judge_score"].to_numpy(dtype=float)[rows], "folds": ctx.folds[rows]}


def _g_hat(f: dict, pred: np.ndarray, fresh_index: np.ndarray) -> np.ndarray:
    """g_hat(X_i) = mean of the outcome model over the fresh draws of prompt X_i.

    ``fresh_index[i]`` is the position of row i's prompt among the fresh draws' prompts.
    """
    m = np.bincount(f["codes"], weights=pred, minlength=len(f["uniq"])) / f["counts"]
    return m[fresh_index]


def _dr_phi(s: dict, q_logged: np.ndarray, q_fresh: np.ndarray) -> np.ndarray:
    """phi_i = g_hat(X_i) + W_i (L_i/pi_L)(Y_i - q_i)."""
    corr = np.zeros(len(s["rows"]))
    corr[s["lab"]] = s["w"][s["lab"]] * (s["y"][s["lab"]] - q_logged[s["lab"]]) / s["pi"]
    return _g_hat(s["fresh"], q_fresh, s["fresh_index"]) + corr


def _dr_output(ctx: EstimationContext, policy: str, name: str, s: dict, phi: np.ndarray, reps: np.ndarray | None) -> EstimatorOutput:
    psi = _prompt_sum(s["pid"], phi)
    out = EstimatorOutput(policy, name, float(psi.mean()), psi, reps if ctx.use_oua else None,
                          oracle_n=int(s["lab"].sum()), uses_weights=True, reasons=list(s["reasons"]))
    out.warned = bool(s["reasons"])
    return out


def dr_cpo(ctx: EstimationContext, policy: str) -> EstimatorOutput:
    """Calibrated DR: direct method on fresh draws + SIMCal-weighted labelled residual."""
    s = _dr_setup(ctx, policy, "dr_cpo")
    if isinstance(s, EstimatorOutput):
        return s
    f = s["fresh"]
    phi = _dr_phi(s, ctx.rewards[s["rows"]], f["pred"])
    reps = np.array([_dr_phi(s, ctx.rewards_k[k][s["rows"]], f["pred_k"][k]).mean() for k in range(ctx.K)])
    return _dr_output(ctx, policy, "dr_cpo", s, phi, reps)


def mrdr(ctx: EstimationContext, policy: str) -> EstimatorOutput:
    """MRDR: outcome model = the chosen calibrator family (same covariates) fitted with weights W^2, cross-fitted."""
    s = _dr_setup(ctx, policy, "mrdr")
    if isinstance(s, EstimatorOutput):
        return s
    f = s["fresh"]
    lab = s["lab"]
    name = ctx.cal.diagnostics.calibrator
    # Same covariates as the calibration: an S-only outcome model would reintroduce the judge's
    # length bias that the two-stage calibrator removed (and SIMCal weights, being functions of S,
    # cannot correct it in the residual term).
    c_all = ctx.cal._covs(ctx.logged)
    c_log = None if c_all is None else c_all[s["rows"]]
    c_fr = ctx.cal._covs(f["frame"])

    def sub(c: np.ndarray | None, m: np.ndarray) -> np.ndarray | None:
        return None if c is None else c[m]

    jl, yl, wl, fl = s["judge"][lab], s["y"][lab], s["w"][lab] ** 2 + 1e-12, s["folds"][lab]
    cl = sub(c_log, lab)
    fresh_folds = fold_of(f["pid"], ctx.K)
    models = []
    for k in range(ctx.K):
        tr = fl != k
        models.append(make_calibrator(name).fit(jl[tr], sub(cl, tr), yl[tr], sample_weight=wl[tr]))
    q_log = np.empty(len(s["rows"]))
    q_fr = np.empty(len(f["judge"]))
    for k, m in enumerate(models):
        sl, sf = s["folds"] == k, fresh_folds == k
        q_log[sl] = m.predict(s["judge"][sl], sub(c_log, sl))
        q_fr[sf] = m.predict(f["judge"][sf], sub(c_fr, sf))
    phi = _dr_phi(s, q_log, q_fr)
    reps = np.array([_dr_phi(s, m.predict(s["judge"], c_log), m.predict(f["judge"], c_fr)).mean() for m in models])
    return _dr_output(ctx, policy, "mrdr", s, phi, reps)


def _tmle_fit(s: dict, q_logged: np.ndarray, q_fresh: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Solve sum_i W_i L_i (Y_i - expit(logit q_i + eps)) = 0 and return the fluctuated q's."""
    span = hi - lo if hi > lo else 1.0
    clip = 1e-4
    z_log = logit(np.clip((q_logged - lo) / span, clip, 1 - clip))
    z_fr = logit(np.clip((q_fresh - lo) / span, clip, 1 - clip))
    lab = s["lab"]
    y01 = (s["y"][lab] - lo) / span
    wl = s["w"][lab]

    def score(eps: float) -> float:
        return float(np.sum(wl * (y01 - expit(z_log[lab] + eps))))

    try:
        eps = brentq(score, -20.0, 20.0)
    except ValueError:
        eps = 0.0
    return lo + span * expit(z_log + eps), lo + span * expit(z_fr + eps), eps


def tmle(ctx: EstimationContext, policy: str) -> EstimatorOutput:
    """TMLE with a weighted logistic intercept fluctuation of the calibrated outcome model."""
    s = _dr_setup(ctx, policy, "tmle")
    if isinstance(s, EstimatorOutput):
        return s
    f = s["fresh"]
    lo, hi = ctx.cal.diagnostics.label_range
    ql, qf, eps = _tmle_fit(s, ctx.rewards[s["rows"]], f["pred"], lo, hi)
    phi = _dr_phi(s, ql, qf)
    reps = []
    for k in range(ctx.K):
        qlk, qfk, _ = _tmle_fit(s, ctx.rewards_k[k][s["rows"]], f["pred_k"][k], lo, hi)
        reps.append(_dr_phi(s, qlk, qfk).mean())
    out = _dr_output(ctx, policy, "tmle", s, phi, np.array(reps))
    out.extras["epsilon"] = eps
    return out


STACK_COMPONENTS = ("dr_cpo", "tmle", "mrdr")


def stacked_dr(ctx: EstimationContext, policy: str) -> EstimatorOutput:
    """Convex combination of DR estimators minimising the variance of the stacked influence function."""
    comps = [run_estimator(ctx, policy, c) for c in STACK_COMPONENTS]
    comps = [c for c in comps if c.n >= 2 and np.isfinite(c.estimate)]
    if not comps:
        return _refused(policy, "stacked_dr", "no DR component available")
    idx = comps[0].psi.index
    for c in comps[1:]:
        idx = idx.intersection(c.psi.index)
    mat = np.vstack([c.psi.to_numpy() if c.psi.index.equals(idx) else c.psi.reindex(idx).to_numpy() for c in comps])
    cov = np.atleast_2d(np.cov(mat)) if len(comps) > 1 else np.ones((1, 1))
    beta = _simplex_min_variance(cov) if len(comps) > 1 else np.ones(1)
    psi = pd.Series(beta @ mat, index=idx)
    reps = None
    if ctx.use_oua and all(c.oua_replicates is not None for c in comps):
        reps = beta @ np.vstack([c.oua_replicates for c in comps])
    reasons = sorted({r for c in comps for r in c.reasons})
    out = EstimatorOutput(policy, "stacked_dr", float(psi.mean()), psi, reps, oracle_n=comps[0].oracle_n,
                          uses_weights=True, reasons=reasons, warned=any(c.warned for c in comps))
    out.extras["stack_weights"] = {c.estimator: float(b) for c, b in zip(comps, beta, strict=True)}
    return out


ESTIMATORS: dict[str, Callable[[EstimationContext, str], EstimatorOutput]] = {
    "naive": naive,
    "snips": snips,
    "calibrated_ips": calibrated_ips,
    "direct": direct,
    "dr_cpo": dr_cpo,
    "mrdr": mrdr,
    "tmle": tmle,
    "stacked_dr": stacked_dr,
}


def run_estimator(ctx: EstimationContext, policy: str, name: str) -> EstimatorOutput:
    """Run (and memoise) one estimator for one policy."""
    key = (policy, name)
    if key not in ctx.outputs:
        if name != "naive" and ctx.cal is None:
            ctx.outputs[key] = _refused(policy, name, "no calibration (too few oracle labels)")
        else:
            ctx.outputs[key] = ESTIMATORS[name](ctx, policy)
    return ctx.outputs[key]
