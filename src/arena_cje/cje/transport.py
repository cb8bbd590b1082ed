"""Probe-corrected levels and the reporting rule for estimates that borrow another policy's calibration.

A level estimator that applies the judge -> oracle calibration f (learned on the logging policy's
labels) to a target policy's responses (``direct``, the DR family, ``stacked_dr``) *borrows* that
calibration: it is unbiased only if E[Y - f(S)] = 0 under the target policy (transport). An
oracle-labelled probe of the target's own responses (m rows j, prompts g(j)) measures the
transport gap delta = E_target[Y - f(S)] directly.

Estimates (all with per-prompt contributions psi_g, mean = estimate, and OUA replicates theta_k
recomputed with the delete-one-fold calibrator f^(-k), as in ``inference.py``):

* **borrowed** B: the estimator's own row (theta_E, psi_E, theta_E,k).
* **probe-corrected** C = (calibrated mean of the target's fresh draws) + (probe mean residual):
  C = theta_direct + delta_hat, delta_hat = (1/m) sum_j (Y_j - f^(-k(j))(S_j)). It is a two-phase
  sampling estimator on the target's own responses, unbiased whatever f is. Its contributions on
  the union U of prompts: psi_C,g = (|U|/G) psi_direct,g + delta_hat + (|U|/m) sum_{j in g} (r_j - delta_hat)
  (absent terms are 0; the ratio form of the fixed-size probe mean), so mean_U psi_C = C; replicates C_k = theta_direct,k + mean_j (Y_j - f^(-k)(S_j)).
  Because the probe residual is taken against the same f, the calibration error largely cancels in
  C (its OUA variance is small) while the probe adds sampling variance var(r)/m.
* **combined** theta_lambda = B + lambda d_hat with d_hat = C - B, lambda in [0, 1] minimising the
  mean squared error when B may carry a transport bias b = E[d_hat]:

      MSE(lambda) = V_B + 2 lambda Cov(B, d) + lambda^2 V_d + (1 - lambda)^2 b^2,
      lambda* = (b^2 - Cov(B, d)) / (V_d + b^2),   Cov(B, d) = Cov_BC - V_B,  V_d = V_B + V_C - 2 Cov_BC,

  with b^2 estimated without bias by b2_hat = max(0, d_hat^2 - V_d) (the squared bias the probe
  reveals beyond its own noise). With b2_hat = 0 this is the minimum-variance (precision-weighted,
  covariance-aware) combination of B and C; the larger the revealed gap, the more weight C gets.
  Variances and covariances: cluster (prompt) covariance of the two contribution vectors embedded
  on U, plus the jackknife covariance (K-1)/K sum_k (B_k - B_bar)(C_k - C_bar) of the replicates.

Stratified probes (``labeling.probe_strata > 1``: rows carry ``inclusion_prob`` pi_j; rows of equal
pi form a stratum h with n_h rows, stratified sampling gives pi_j = n_h / N_h): the probe mean is the
Horvitz-Thompson / Hajek mean delta_hat = sum_j r_j / pi_j / sum_j 1 / pi_j (Horvitz & Thompson 1952;
for a stratified design sum_j 1/pi_j = N exactly, so HT = Hajek), design-unbiased for the mean
residual over the policy's fresh draws; its variance is the stratified
sum_h W_h^2 s_h^2 / n_h, W_h = N_h / N, s_h^2 the within-stratum variance (no finite-population
correction: conservative), with m - H df. In the contributions the probe term becomes
(|U|/m) sum_{j in g} m w~_j sqrt(n_h/(n_h - 1)) (r_j - r_bar_h), w~_j = (1/pi_j) / sum_l (1/pi_l),
and the replicates use the same weights. Without ``inclusion_prob`` every formula reduces to the
simple-random-sampling one above.

Interval of the reported value: V = Var(B + lambda d_hat) + (1 - lambda)^2 b2_hat (the
transport uncertainty the probe reveals enters as the unremoved squared bias); t interval with
Welch-Satterthwaite df over the components (fresh/logged part G - 1 df, probe part m - 1 df,
OUA part K - 1 df, bias term m - 1 df).

Reporting rule (``EstimationConfig.transport_rule == "correct"``):

* the probe audit FAILS, or REFUSE-LEVEL fired on the borrowed level (>= 5% of the policy's judge
  scores outside the calibrated range, ``api.py``) -> report C (``level_source = probe_corrected``,
  status ``warning`` with the audit / the out-of-range share in ``reasons``);
* the audit passes -> report theta_lambda (``combined``);
* no probe and no oracle labels of the policy's own responses -> report B (``borrowed``), status
  ``warning``: the interval does not include the unmeasured transport error;
* the policy's own fresh draws carry oracle labels (e.g. the logging policy) -> ``own_labels``
  for every level estimator (the direct residual term and the DR corrections use those labels;
  nothing is borrowed).

Rows of ``naive``/``snips``/``calibrated_ips`` get ``level_source = not_borrowed`` (naive is on
the judge scale; IPS applies f to the logging policy's own responses, where it was learned).
With ``transport_rule == "refuse"`` (legacy) only ``level_source`` is filled (``borrowed``/
``own_labels``/``not_borrowed``) and a failed audit refuses the rows (``api.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from arena_cje.cje.context import EstimationContext
from arena_cje.cje.estimators import EstimatorOutput, run_estimator
from arena_cje.cje.inference import jackknife_variance

LEVEL_ESTIMATORS = ("direct", "dr_cpo", "mrdr", "tmle", "stacked_dr")
TRANSPORT_COLUMNS = ["level_source", "borrowed_estimate", "corrected_estimate", "corrected_std_error", "probe_weight",
                     "transport_bias_sq", "var_transport"]


@dataclass(frozen=True)
class Contributions:
    """An estimate as per-prompt contributions and OUA replicates."""

    estimate: float
    psi: pd.Series
    replicates: np.ndarray | None


@dataclass(frozen=True)
class LevelReport:
    """Reported level of one (policy, estimator) row under the reporting rule (module docstring).

    Attributes:
        source: ``probe_corrected``, ``combined``, ``borrowed`` or ``own_labels``.
        estimate, std_error, ci_lower, ci_upper, df: The reported value and its t interval.
        borrowed: theta_E (the estimator's own value).
        corrected: C (NaN without a probe); corrected_se its standard error.
        weight: lambda (weight of the probe-corrected value; 1 = fully corrected).
        bias_sq: b2_hat, the squared transport gap of B revealed beyond noise.
        var_if, var_oua, var_transport: Variance parts of the reported value (cluster IF, OUA
            jackknife, unremoved squared transport gap (1 - lambda)^2 b2_hat).
        contributions: psi and replicates of the reported value (for paired differences).
    """

    source: str
    estimate: float
    std_error: float
    ci_lower: float
    ci_upper: float
    df: float
    borrowed: float
    corrected: float
    corrected_se: float
    weight: float
    bias_sq: float
    var_if: float
    var_oua: float
    var_transport: float
    contributions: Contributions | None


def _cluster_cov(a: np.ndarray, b: np.ndarray) -> float:
    """Cov(mean a, mean b) for contributions on the same index: sum_g (a_g - a_bar)(b_g - b_bar) / (G (G - 1))."""
    g = len(a)
    return float(np.sum((a - a.mean()) * (b - b.mean())) / (g * (g - 1))) if g > 1 else float("nan")


def _jack_cov(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """(K-1)/K sum_k (a_k - a_bar)(b_k - b_bar); 0 without replicates."""
    if a is None or b is None or len(a) < 2:
        return 0.0
    k = len(a)
    return float((k - 1) / k * np.sum((a - a.mean()) * (b - b.mean())))


def probe_residuals(ctx: EstimationContext, probe: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
    """r_j = Y_j - f^(-k(j))(S_j) (cross-fitted like the fresh draws) and the K x m replicate residuals."""
    y = probe["oracle_label"].to_numpy(dtype=float)
    r = y - ctx.cal.predict_oof(probe)
    rk = np.vstack([y - ctx.cal.predict_fold(probe, k) for k in range(ctx.K)]) if ctx.use_oua else None
    return r, rk


@dataclass(frozen=True)
class ProbeDesign:
    """Sampling design of a probe (module docstring, "Stratified probes").

    Attributes:
        weights: Normalised Horvitz-Thompson weights w~_j = (1/pi_j) / sum_l (1/pi_l) (1/m when the
            probe has no ``inclusion_prob``: simple random sampling).
        strata: Stratum code per row (rows of equal inclusion probability form a stratum).
        n_strata: H.
    """

    weights: np.ndarray
    strata: np.ndarray
    n_strata: int

    @property
    def stratified(self) -> bool:
        return self.n_strata > 1

    def mean(self, r: np.ndarray) -> float:
        """Hajek / Horvitz-Thompson mean sum_j w~_j r_j (= the plain mean without inclusion probabilities)."""
        return float(self.weights @ r)

    def centred(self, r: np.ndarray) -> np.ndarray:
        """Per-row contribution to the probe mean's sampling error (module docstring, "Stratified probes").

        One stratum: r_j - r_bar (weights 1/m applied by the caller's |U|/m). H > 1 strata:
        m w~_j sqrt(n_h / (n_h - 1)) (r_j - r_bar_h), so that (1/m^2) sum_j of its square is the
        stratified variance sum_h W_h^2 s_h^2 / n_h (without finite-population correction).
        """
        if not self.stratified:
            return r - r.mean()
        out = np.empty_like(r, dtype=float)
        m = len(r)
        for h in range(self.n_strata):
            sel = self.strata == h
            n_h = int(sel.sum())
            rbar_h = float(r[sel].mean())
            scale = np.sqrt(n_h / (n_h - 1)) if n_h > 1 else 1.0
            out[sel] = m * self.weights[sel] * scale * (r[sel] - rbar_h)
        return out

    def variance(self, r: np.ndarray) -> float:
        """Var of the probe mean: s^2/m (one stratum) or sum_h W_h^2 s_h^2 / n_h (stratified)."""
        m = len(r)
        if m < 2:
            return float("nan")
        if not self.stratified:
            return float(np.var(r, ddof=1) / m)
        return float(np.sum(self.centred(r) ** 2) / m**2)

    @property
    def df(self) -> int:
        """Degrees of freedom of the probe variance: m - H."""
        return int(len(self.weights) - self.n_strata)


def probe_design(probe: pd.DataFrame, name: str = "probe") -> ProbeDesign:
    """Horvitz-Thompson weights and strata from the probe's ``inclusion_prob`` (module docstring).

    Raises:
        ValueError: naming the probe, row and field when some but not all rows have an inclusion
            probability, or one is outside (0, 1].
    """
    m = len(probe)
    if "inclusion_prob" not in probe.columns or probe["inclusion_prob"].isna().all():
        return ProbeDesign(np.full(m, 1.0 / m) if m else np.empty(0), np.zeros(m, dtype=int), 1 if m else 0)
    pi = pd.to_numeric(probe["inclusion_prob"], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(pi) | (pi <= 0) | (pi > 1)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise ValueError(f"frame '{name}', row {r}, field 'inclusion_prob': {probe['inclusion_prob'].tolist()[r]!r} "
                         f"is not a probability in (0, 1] ({int(bad.sum())} such row(s)); give every probe row its "
                         "inclusion probability or none")
    w = 1.0 / pi
    codes, _ = pd.factorize(np.round(pi, 12))
    return ProbeDesign(w / w.sum(), codes.astype(int), int(codes.max()) + 1)


def with_inclusion_probs(data, raw_probes: dict[str, pd.DataFrame]):
    """``data`` with each probe's ``inclusion_prob`` taken from its raw frame (matched on prompt_id, draw_idx).

    ``CJEDataset.from_frames`` keeps only the columns estimation has always used; a stratified probe's
    inclusion probabilities (``labeling.probe_strata > 1``) are carried over here. Probes whose raw
    frame has no ``inclusion_prob`` are left as they are (simple random sampling).
    """
    from dataclasses import replace

    probes = dict(data.probes)
    for p, raw in (raw_probes or {}).items():
        if p not in probes or "inclusion_prob" not in raw.columns or "inclusion_prob" in probes[p].columns:
            continue
        if not {"prompt_id", "draw_idx"} <= set(raw.columns):
            raise ValueError(f"frame 'probes[{p}]': 'inclusion_prob' needs top-level 'prompt_id' and 'draw_idx' columns")
        key = raw[["prompt_id", "draw_idx", "inclusion_prob"]].assign(
            prompt_id=raw["prompt_id"].astype(str), draw_idx=pd.to_numeric(raw["draw_idx"]).astype(float))
        probes[p] = probes[p].merge(key.drop_duplicates(["prompt_id", "draw_idx"]), on=["prompt_id", "draw_idx"], how="left")
    return replace(data, probes=probes)


def probe_corrected(direct: EstimatorOutput, probe: pd.DataFrame, r: np.ndarray, rk: np.ndarray | None,
                    design: ProbeDesign | None = None) -> Contributions:
    """C = theta_direct + (HT-weighted) mean_j r_j as contributions on the union of prompts (module docstring)."""
    design = design or probe_design(probe)
    m = len(r)
    pid = probe["prompt_id"].to_numpy(dtype=object)
    codes, uniq = pd.factorize(pid)
    # Hajek (ratio) form of the probe mean: centred residuals, so the fixed-size probe contributes
    # var(r)/m and not E[r^2]/m (the squared gap is a mean, not noise); stratified: centred per stratum.
    rbar = design.mean(r)
    rho = pd.Series(np.bincount(codes, weights=design.centred(r), minlength=len(uniq)), index=pd.Index(uniq, name="prompt_id"))
    idx = direct.psi.index.union(rho.index)
    psi = pd.Series(rbar, index=idx).add(len(idx) / len(direct.psi) * direct.psi, fill_value=0.0)
    psi = psi.add(len(idx) / m * rho, fill_value=0.0)
    reps = None
    if direct.oua_replicates is not None and rk is not None:
        reps = direct.oua_replicates + rk @ design.weights
    return Contributions(float(direct.estimate + rbar), psi, reps)


def _satterthwaite(parts: list[tuple[float, float]]) -> float:
    """Welch-Satterthwaite df of sum_c v_c with component dfs (components with v_c <= 0 dropped)."""
    parts = [(v, d) for v, d in parts if v > 0 and np.isfinite(v) and d > 0]
    if not parts:
        return float("inf")
    return float(sum(v for v, _ in parts) ** 2 / sum(v**2 / d for v, d in parts))


def combine_levels(b: Contributions, c: Contributions, m: int, probe_var: float, n_folds: int, alpha: float,
                   force_corrected: bool) -> LevelReport:
    """Report B, C or the bias-aware combination theta_lambda with its interval (module docstring).

    Args:
        b: Borrowed estimate.
        c: Probe-corrected estimate.
        m: Probe size (df of the probe and bias terms).
        probe_var: var(r)/m, the probe term's share of Var(C) (for the df split only).
        n_folds: K (df of the OUA part is K - 1).
        alpha: 1 - CI level.
        force_corrected: True when the audit failed (lambda = 1).
    """
    # Both embedded on the union U of their prompts, scaled by |U|/G so each averages to its own estimate.
    idx = b.psi.index if b.psi.index.equals(c.psi.index) else b.psi.index.union(c.psi.index)
    pb = b.psi.reindex(idx, fill_value=0.0).to_numpy(dtype=float) * (len(idx) / len(b.psi))
    pc = c.psi.reindex(idx, fill_value=0.0).to_numpy(dtype=float) * (len(idx) / len(c.psi))
    vb = _cluster_cov(pb, pb) + _jack_cov(b.replicates, b.replicates)
    vc = _cluster_cov(pc, pc) + _jack_cov(c.replicates, c.replicates)
    cbc = _cluster_cov(pb, pc) + _jack_cov(b.replicates, c.replicates)
    d = c.estimate - b.estimate
    vd = max(vb + vc - 2 * cbc, 0.0)
    b2 = max(0.0, d**2 - vd)
    if force_corrected:
        lam = 1.0
    elif vd + b2 > 0:
        lam = float(np.clip((b2 + vb - cbc) / (vd + b2), 0.0, 1.0))
    else:
        lam = 0.0
    est = b.estimate + lam * d
    psi = (1 - lam) * pb + lam * pc
    reps = None
    if b.replicates is not None and c.replicates is not None:
        reps = (1 - lam) * b.replicates + lam * c.replicates
    v_if = _cluster_cov(psi, psi)
    v_oua = jackknife_variance(reps)
    v_bias = (1 - lam) ** 2 * b2
    v = v_if + v_oua + v_bias
    # df split: the probe term of psi has m - 1 df, the rest G - 1.
    probe_part = min(lam**2 * probe_var, v_if)
    df = _satterthwaite([(v_if - probe_part, len(psi) - 1), (probe_part, m - 1), (v_oua, n_folds - 1), (v_bias, m - 1)])
    se = float(np.sqrt(v))
    q = float(stats.t.ppf(1 - alpha / 2, df)) if np.isfinite(df) else float(stats.norm.ppf(1 - alpha / 2))
    source = "probe_corrected" if force_corrected else "combined"
    return LevelReport(source, float(est), se, est - q * se, est + q * se, df, b.estimate, c.estimate,
                       float(np.sqrt(vc)), lam, b2, v_if, v_oua, v_bias, Contributions(float(est), pd.Series(psi, index=idx), reps))


def has_own_labels(ctx: EstimationContext, policy: str) -> bool:
    """Whether at least two of the policy's own fresh draws carry oracle labels (nothing is borrowed)."""
    f = ctx.fresh(policy)
    return f is not None and int(f.labelled.sum()) >= 2


def apply_transport_rule(ctx: EstimationContext, estimates: pd.DataFrame, audits: dict, statuses: dict) -> pd.DataFrame:
    """Add ``TRANSPORT_COLUMNS`` and, under ``transport_rule == "correct"``, replace borrowed levels.

    Args:
        ctx: The estimation context (calibration, memoised outputs, config).
        estimates: Rows built by ``estimate_policies`` (one per policy x estimator).
        audits: Policy -> ``TransportAudit`` (policies with a probe).
        statuses: (policy, estimator) -> row status objects (``refused``, ``warned``, ``reasons``);
            updated in place so that paired differences see the same status.

    Returns:
        ``estimates`` with the extra columns; reported rows carry the rule's value and interval, and
        ``ctx.outputs`` holds the reported contributions (paired differences use them).
    """
    est = estimates.copy()
    for col in TRANSPORT_COLUMNS:
        est[col] = "not_borrowed" if col == "level_source" else np.nan
    est["borrowed_estimate"] = est["estimate"]
    correct = ctx.config.transport_rule == "correct"
    probes = ctx.data.probes
    if correct and ctx.cal is not None:
        for p in probes:
            run_estimator(ctx, p, "direct")
    # Borrowed outputs as the estimators produced them (reported ones replace them in ctx.outputs below).
    original = dict(ctx.outputs)
    for i, row in est.iterrows():
        policy, name = row["policy"], row["estimator"]
        if name not in LEVEL_ESTIMATORS:
            continue
        if has_own_labels(ctx, policy):
            # Labels of the policy's own responses (the logging policy's calibration slice): the
            # direct residual term and the DR corrections use them; nothing is borrowed.
            est.at[i, "level_source"] = "own_labels"
            continue
        est.at[i, "level_source"] = "borrowed"
        out = original.get((policy, name))
        st = statuses[(policy, name)]
        if not correct or ctx.cal is None or out is None or not np.isfinite(out.estimate) or out.n < 2:
            continue
        probe = probes.get(policy)
        if probe is None or len(probe) < 2:
            if not st.refused:
                st.warned = True
                st.reasons.append("no oracle-labelled probe of this policy: the level borrows the logging policy's "
                                  "calibration; transport unverified and not in the CI")
                est.at[i, "status"], est.at[i, "reasons"] = st.status, "; ".join(st.reasons)
            continue
        direct = original[(policy, "direct")]
        if direct.n < 2 or not np.isfinite(direct.estimate) or st.refused:
            continue
        r, rk = probe_residuals(ctx, probe)
        design = probe_design(probe, f"probes[{policy}]")
        c = probe_corrected(direct, probe, r, rk, design)
        audit = audits.get(policy)
        # REFUSE-LEVEL on the borrowed level (api._apply_gates) also calls for the probe-corrected value.
        failed = (audit is not None and not audit.passed) or st.force_probe
        rep = combine_levels(Contributions(out.estimate, out.psi, out.oua_replicates), c, design.df + 1,
                             design.variance(r), ctx.K, ctx.config.alpha, force_corrected=failed)
        if failed and audit is not None and not audit.passed:
            st.warned = True
            st.reasons.append(
                f"transport audit failed (probe mean residual {audit.mean_residual:+.3f}, SE {audit.std_error:.3f}, "
                f"n={audit.n_probe}): reporting the probe-corrected level (borrowed {out.estimate:.3f})"
            )
        est.loc[i, ["estimate", "std_error", "ci_lower", "ci_upper", "df", "var_if", "var_oua", "var_transport"]] = [
            rep.estimate, rep.std_error, rep.ci_lower, rep.ci_upper, rep.df, rep.var_if, rep.var_oua, rep.var_transport]
        est.loc[i, ["level_source", "corrected_estimate", "corrected_std_error", "probe_weight", "transport_bias_sq"]] = [
            rep.source, rep.corrected, rep.corrected_se, rep.weight, rep.bias_sq]
        est.at[i, "status"], est.at[i, "reasons"] = st.status, "; ".join(st.reasons)
        k = rep.contributions
        ctx.outputs[(policy, name)] = EstimatorOutput(
            policy, name, k.estimate, k.psi, k.replicates, oracle_n=out.oracle_n + len(r), uses_weights=out.uses_weights,
            reasons=list(st.reasons), warned=st.warned, extras={**out.extras, "level_source": rep.source,
                                                               "probe_weight": rep.weight})
        est.at[i, "oracle_n"] = out.oracle_n + len(r)
    return est
