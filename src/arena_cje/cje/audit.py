"""The oracle-labelled probe of a target policy and the graded audit of the calibration's transport.

A level that borrows the logging policy's calibration f (``levels.py``, ``transport.py``) is unbiased only if
E[Y - f(S)] = 0 under the target policy (transport). An oracle-labelled probe of the target's own
responses (m rows j, prompts g(j)) measures the transport gap delta = E_target[Y - f(S)] directly.

Probe residuals (``probe_residuals``): r_j = Y_j - f^(-k(j))(S_j) (cross-fitted like the fresh draws)
and the K x m replicate residuals Y_j - f^(-k)(S_j), from which ``levels.py`` builds C.

Stratified probes (``labeling.probe_strata > 1``: rows carry ``inclusion_prob`` pi_j; rows of equal
pi form a stratum h with n_h rows, stratified sampling gives pi_j = n_h / N_h): the probe mean is the
Horvitz-Thompson / Hajek mean delta_hat = sum_j r_j / pi_j / sum_j 1 / pi_j (Horvitz & Thompson 1952;
for a stratified design sum_j 1/pi_j = N exactly, so HT = Hajek), design-unbiased for the mean
residual over the policy's fresh draws; its variance is the stratified
sum_h W_h^2 s_h^2 / n_h, W_h = N_h / N, s_h^2 the within-stratum variance (no finite-population
correction: conservative), with m - H df. In the contributions of the probe-corrected level C
(``levels.py``) the probe term becomes (|U|/m) sum_{j in g} m w~_j sqrt(n_h/(n_h - 1)) (r_j - r_bar_h),
w~_j = (1/pi_j) / sum_l (1/pi_l), and the replicates use the same weights. Without ``inclusion_prob``
every formula reduces to simple random sampling (w~_j = 1/m, one stratum).

Graded transport audit (``grade_audits``; as cje-eval 0.9.3's five states, with TOST p-values): the
full-data calibrator's residuals r_j = Y_j - f(S_j) on the probe; delta_hat = HT mean; SE
prompt-clustered (a prompt may have several probe rows): with u_g = sum_{j in g} c_j the per-prompt
sums of the design's centred contributions (c_j = r_j - delta_hat, or the stratified form above),
V = G/(G - 1) sum_g u_g^2 / m^2 (without the G/(G - 1) factor for strata, whose c_j carry their own);
Kish effective prompts G_eff = (sum_g W_g)^2 / sum_g W_g^2 (W_g the prompt's summed HT weights; G for
one row per prompt and equal weights); df = min(floor(G_eff) - 1, m - H) >= 1. With margin delta
(``transport_margin``):

* TOST of H0: |gap| >= delta: p_eq = max(P(T >= (delta_hat + delta)/SE), P(T <= (delta_hat - delta)/SE));
* beyond the margin, H0: |gap| <= delta: p_out = min(1, 2 min(P(T >= (delta_hat - delta)/SE),
  P(T <= (delta_hat + delta)/SE)));
* both Holm-adjusted over the audited policies (family-wise error <= alpha per family);
* state: FAIL if p_out_adj <= alpha (decisive even with few prompts: the floor withholds PASS, not
  FAIL); else NOT_GRADED if G_eff < ``transport_min_clusters`` (20; cluster-robust SEs under-cover
  on few clusters) or the SE is undefined; else PASS if p_eq_adj <= alpha; else INCONCLUSIVE.
  NOT_CHECKED: a policy whose level borrows the calibration without any probe.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy import stats

from arena_cje.cje.calibration import CrossFitCalibration
from arena_cje.cje.comparisons import adjust_p_values
from arena_cje.cje.context import EstimationContext


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


# ----------------------------------------------------------------------------------------------
# The graded transport audit
# ----------------------------------------------------------------------------------------------

PASS, FAIL, INCONCLUSIVE, NOT_GRADED, NOT_CHECKED = "PASS", "FAIL", "INCONCLUSIVE", "NOT_GRADED", "NOT_CHECKED"
AUDIT_STATES = (PASS, FAIL, INCONCLUSIVE, NOT_GRADED, NOT_CHECKED)


@dataclass(frozen=True)
class TransportAudit:
    """Graded probe audit of one policy (module docstring, "Graded transport audit").

    Attributes:
        policy: Target policy.
        state: ``PASS``, ``FAIL``, ``INCONCLUSIVE``, ``NOT_GRADED`` or ``NOT_CHECKED``.
        n_probe: Probe rows m. n_clusters: Distinct prompts. effective_clusters: Kish effective
            number of prompts (sum_g W_g)^2 / sum_g W_g^2, W_g the prompt's summed HT weights.
        mean_residual: delta_hat (HT-weighted mean of Y - f(S) over the probe).
        std_error: Prompt-clustered SE of delta_hat. df: t degrees of freedom.
        ci_lower, ci_upper: 1 - alpha t interval of the mean residual (unadjusted).
        p_value: Two-sided p of delta = 0 (unadjusted; the legacy rule's test).
        p_equivalence: TOST p of |delta| >= margin (max of the two one-sided p's).
        p_beyond_margin: p of |delta| <= margin (2 x the smaller one-sided p, capped at 1).
        p_equivalence_adj, p_beyond_margin_adj: Holm-adjusted over the audited policies.
        margin: delta (``estimation.transport_margin``). alpha: family-wise level.
        min_clusters: Effective clusters required to grade PASS / INCONCLUSIVE.
    """

    policy: str
    state: str
    n_probe: int = 0
    n_clusters: int = 0
    effective_clusters: float = 0.0
    mean_residual: float = float("nan")
    std_error: float = float("nan")
    df: float = float("nan")
    ci_lower: float = float("nan")
    ci_upper: float = float("nan")
    p_value: float = float("nan")
    p_equivalence: float = float("nan")
    p_beyond_margin: float = float("nan")
    p_equivalence_adj: float = float("nan")
    p_beyond_margin_adj: float = float("nan")
    margin: float = float("nan")
    alpha: float = 0.05
    min_clusters: float = 20.0

    @property
    def passed(self) -> bool:
        """Equivalence established (state PASS)."""
        return self.state == PASS

    @property
    def failed(self) -> bool:
        """Gap beyond the margin established (state FAIL)."""
        return self.state == FAIL

    @property
    def legacy_failed(self) -> bool:
        """Today's (``transport_rule: correct``) criterion: |delta_hat| > margin and the t test of delta = 0 rejects."""
        return bool(np.isfinite(self.mean_residual) and abs(self.mean_residual) > self.margin
                    and self.p_value < self.alpha)

    def describe(self) -> str:
        """One line for reasons and reports: state, residual, SE, clusters."""
        if self.state == NOT_CHECKED:
            return "NOT_CHECKED (no probe)"
        return (f"{self.state} (probe mean residual {self.mean_residual:+.3f}, SE {self.std_error:.3f}, "
                f"n={self.n_probe}, {self.effective_clusters:.0f} effective prompts, margin +/-{self.margin:g})")

    def as_row(self) -> dict:
        """A flat dict for the transport table (``passed`` kept for readers of the old two-state table)."""
        return {**self.__dict__, "passed": self.passed}


def clustered_mean(r: np.ndarray, clusters: np.ndarray, design: ProbeDesign) -> tuple[float, float, int, float]:
    """(delta_hat, prompt-clustered SE, prompts G, Kish effective prompts) of the probe mean (module docstring).

    Per-prompt sums u_g of the design's centred contributions c_j (r_j - r_bar, or the stratified
    form): V = sum_g u_g^2 / m^2, times G / (G - 1) without strata (the small-sample factor the
    stratified form already carries per stratum). One row per prompt gives s^2/m (resp. the stratified
    variance) exactly.
    """
    codes, uniq = pd.factorize(np.asarray(clusters, dtype=object))
    g, m = len(uniq), len(r)
    wg = np.bincount(codes, weights=design.weights, minlength=g)
    eff = float(wg.sum() ** 2 / np.sum(wg**2)) if g else 0.0
    d = design.mean(r)
    if g < 2:
        return d, float("nan"), g, eff
    u = np.bincount(codes, weights=design.centred(r), minlength=g)
    v = float(np.sum(u**2) / m**2) * (1.0 if design.stratified else g / (g - 1))
    return d, float(np.sqrt(max(v, 0.0))), g, eff


def _one_sided(t_lo: float, t_hi: float, df: float) -> tuple[float, float]:
    """(P(T >= t_lo), P(T <= t_hi)) for T ~ t(df)."""
    return float(stats.t.sf(t_lo, df)), float(stats.t.cdf(t_hi, df))


def probe_audit(policy: str, probe: pd.DataFrame, cal: CrossFitCalibration, margin: float, alpha: float,
                min_clusters: float = 20.0) -> TransportAudit:
    """Raw (unadjusted) audit statistics of one probe; ``state`` is set by ``grade_audits``.

    Residuals r = Y - f(S) of the full-data calibrator; mean, clustered SE and effective prompts by
    ``clustered_mean``; df = min(floor(G_eff) - 1, m - H) >= 1.
    """
    r = probe["oracle_label"].to_numpy(dtype=float) - cal.predict_full(probe)
    design = probe_design(probe, f"probes[{policy}]")
    d, se, g, eff = clustered_mean(r, probe["prompt_id"].to_numpy(dtype=object), design)
    df = float(max(min(int(np.floor(eff)) - 1, design.df), 1))
    nan = float("nan")
    if not np.isfinite(se):
        return TransportAudit(policy, NOT_GRADED, len(r), g, eff, d, se, df, nan, nan, nan, nan, nan,
                              margin=margin, alpha=alpha, min_clusters=min_clusters)
    if se > 0:
        q = float(stats.t.ppf(1 - alpha / 2, df))
        p0 = float(2 * stats.t.sf(abs(d) / se, df))
        p_lo, p_hi = _one_sided((d + margin) / se, (d - margin) / se, df)  # TOST: delta > -margin, delta < margin
        p_up, p_down = _one_sided((d - margin) / se, (d + margin) / se, df)  # beyond: delta > margin, delta < -margin
    else:  # constant residuals: the tests are exact
        q = 0.0
        p0 = 0.0 if d != 0 else 1.0
        p_lo = p_hi = 0.0 if abs(d) < margin else 1.0
        p_up = p_down = 0.0 if abs(d) > margin else 1.0
    return TransportAudit(policy, INCONCLUSIVE, len(r), g, eff, d, se, df, d - q * se, d + q * se, p0,
                          max(p_lo, p_hi), min(1.0, 2 * min(p_up, p_down)), margin=margin, alpha=alpha,
                          min_clusters=min_clusters)


def classify_audit(a: TransportAudit) -> str:
    """State from the adjusted p-values (module docstring): FAIL, then NOT_GRADED below the cluster floor, PASS, INCONCLUSIVE."""
    if not np.isfinite(a.p_beyond_margin_adj):
        return NOT_GRADED
    if a.p_beyond_margin_adj <= a.alpha:
        return FAIL  # decisive even on few prompts: the floor withholds PASS, not FAIL
    if a.effective_clusters < a.min_clusters:
        return NOT_GRADED
    if a.p_equivalence_adj <= a.alpha:
        return PASS
    return INCONCLUSIVE


def grade_audits(probes: dict[str, pd.DataFrame], cal: CrossFitCalibration, margin: float, alpha: float,
                 min_clusters: float = 20.0, unprobed: list[str] | tuple[str, ...] = ()) -> dict[str, TransportAudit]:
    """Audit every probe, Holm-adjust across the audited policies, and grade (module docstring).

    Args:
        probes: Policy -> oracle-labelled probe (empty frames are treated as no probe).
        cal: The calibration.
        margin: delta, the equivalence margin on the mean residual.
        alpha: Family-wise level of the audits.
        min_clusters: No PASS (nor INCONCLUSIVE) below this many effective prompts: NOT_GRADED.
        unprobed: Policies whose levels borrow the calibration without a probe: ``NOT_CHECKED``.

    Returns:
        Policy -> graded ``TransportAudit``.
    """
    raw = {p: probe_audit(p, pr, cal, margin, alpha, min_clusters) for p, pr in probes.items() if len(pr)}
    names = list(raw)
    p_eq = adjust_p_values(np.array([raw[p].p_equivalence for p in names], dtype=float), "holm")
    p_out = adjust_p_values(np.array([raw[p].p_beyond_margin for p in names], dtype=float), "holm")
    out = {}
    for p, qe, qo in zip(names, p_eq, p_out, strict=True):
        a = replace(raw[p], p_equivalence_adj=float(qe), p_beyond_margin_adj=float(qo))
        out[p] = replace(a, state=classify_audit(a))
    for p in unprobed:
        if p not in out:
            out[p] = TransportAudit(p, NOT_CHECKED, margin=margin, alpha=alpha, min_clusters=min_clusters)
    return out


def transport_audit(policy: str, probe: pd.DataFrame, cal: CrossFitCalibration, margin: float, alpha: float,
                    min_clusters: float = 20.0) -> TransportAudit:
    """Graded audit of a single policy (a family of one: no multiplicity adjustment)."""
    return grade_audits({policy: probe}, cal, margin, alpha, min_clusters)[policy]
