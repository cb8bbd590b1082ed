"""Estimation settings, built from the ``estimation:`` block of ``parameters.yml``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from arena_cje.cje.data import SUSPECT_LOGPROB_MODES

ALL_ESTIMATORS = ("naive", "snips", "calibrated_ips", "direct", "dr_cpo", "mrdr", "tmle", "stacked_dr")
CALIBRATORS = ("isotonic", "two_stage", "auto")
TRANSPORT_RULES = ("refuse", "correct", "graded", "ppi")
TRANSPORT_SHRINKAGE = ("mse", "pooled", "precision")
CORRECTION_WEIGHTS = ("one", "tuned")


@dataclass(frozen=True)
class Gates:
    """Thresholds turning diagnostics into a row status (see docs/statistics.md).

    Attributes:
        ess_warn: ESS fraction (after SIMCal for calibrated weights) below which a weighted
            estimate gets ``warning``.
        ess_refuse: ESS fraction below which an IPS-type (weights-only) estimate is ``refused``.
        hill_warn: Hill tail index of the raw weights below which the weights' variance is
            effectively infinite (alpha < 2): ``warning``.
        overlap_warn: Judge-score overlap (Bhattacharyya coefficient of the logged and fresh
            judge-score histograms) below which direct/DR rows get ``warning``.
        min_labels: Fewer oracle labels than this refuses every calibrated estimate.
        ttc_refuse: Target-typicality coverage below which weights-only rows (snips,
            calibrated_ips) are ``refused`` (CJE paper gate 0.7; only where token counts exist).
        out_of_range_refuse: REFUSE-LEVEL: share of the judge scores a row applies the calibration
            to (fresh draws for direct/DR, logged rows for IPS) lying outside the judge-score
            range of the labelled slice the calibration was fitted on, at or above which the row is
            ``refused`` (CJE paper coverage badge, 5%; the calibrator is flat outside that range,
            so the level there is extrapolated, not estimated).
    """

    ess_warn: float = 0.10
    ess_refuse: float = 0.01
    hill_warn: float = 2.0
    overlap_warn: float = 0.70
    min_labels: int = 20
    ttc_refuse: float = 0.7
    out_of_range_refuse: float = 0.05


@dataclass(frozen=True)
class EstimationConfig:
    """All knobs of :func:`arena_cje.cje.estimate_policies`.

    Attributes:
        estimators: Estimator names, subset of ``ALL_ESTIMATORS``.
        n_folds: Cross-fitting folds K (assigned by a stable hash of ``prompt_id``).
        alpha: Two-sided CI level is 1 - alpha.
        calibrator: ``isotonic``, ``two_stage`` or ``auto`` (1-SE rule on out-of-fold error).
        oua: Add the oracle-uncertainty jackknife variance (skipped at 100% oracle coverage).
        var_cap: SIMCal variance cap on the stabilised weights (None disables the blend).
        n_bootstrap: Cluster-bootstrap replicates refitting the calibrator (0 = IF-based CIs).
        seed: Seed for the bootstrap and any randomised step.
        transport_margin: delta, the equivalence margin of the graded transport audit on the mean
            probe residual |E[Y - f(S)]| (``arena_cje.cje.audit``).
        transport_min_clusters: No PASS (nor INCONCLUSIVE) with fewer effective probe prompts than
            this: the audit is ``NOT_GRADED``.
        transport_rule: What a borrowed level row (direct, DR family) of a policy with a probe reports
            (``arena_cje.cje.transport``; rows without a probe are warned under every rule but ``refuse``):
            ``graded`` (default, chosen by ``benchmarks/probe_study.py``, see docs/statistics.md):
            FAIL -> probe-corrected, PASS -> the bias-aware (MSE-optimal) combination,
            INCONCLUSIVE / NOT_GRADED -> the shrinkage ``transport_shrinkage``; ``correct``: the
            two-state rule of before (probe-corrected when |mean residual| > margin and its t test
            rejects, the combination otherwise); ``ppi``: the PPI++ power-tuned level whatever the
            audit says; ``refuse``: a FAIL refuses the policy's calibrated rows.
        transport_shrinkage: Weight of the probe-corrected value for INCONCLUSIVE / NOT_GRADED under
            ``graded``: ``precision`` (default, chosen by the probe study at 12% and 25% oracle
            coverage: the covariance-aware minimum-variance weight, no estimated gap in the weight, the
            gap in the interval as ``pooled``), ``mse`` (this policy's own MSE-optimal weight, as for
            PASS) or ``pooled`` (empirical-Bayes prior of the gaps pooled over the policies whose
            borrowed level may be reported, capped by the policy's own revealed gap).
        transport_correction_weight: Weight lam on the calibrated prediction inside the probe
            correction lam theta_direct + mean_probe(Y - lam f(S)) that ``correct`` and ``graded`` use:
            ``one`` (C, the plain probe correction) or ``tuned`` (the PPI++ power-tuned weight,
            ``levels.ppi_weight``); rule ``ppi`` always uses ``tuned``.
        baseline: Policy used as baseline for paired differences (None = all pairs).
        reliability_bins: Judge-score bins of the reliability table.
        gates: Diagnostic thresholds.
        suspect_logprobs: ``warn``: log-probs of exactly 0.0, or identical under the base and every
            target policy of a logged row, are kept and counted in the rows' reasons and the weight
            diagnostics; ``error``: reading the data fails with a ``CJEDataError`` naming the first
            such line (``CJEDataset.from_frames``).
    """

    estimators: tuple[str, ...] = ("naive", "snips", "direct")
    n_folds: int = 5
    alpha: float = 0.05
    calibrator: str = "isotonic"
    oua: bool = True
    var_cap: float | None = 1.0
    n_bootstrap: int = 0
    seed: int = 0
    transport_margin: float = 0.05
    transport_min_clusters: float = 20.0
    transport_rule: str = "graded"
    transport_shrinkage: str = "precision"
    transport_correction_weight: str = "one"
    baseline: str | None = None
    reliability_bins: int = 10
    gates: Gates = field(default_factory=Gates)
    suspect_logprobs: str = "warn"

    def __post_init__(self) -> None:
        unknown = [e for e in self.estimators if e not in ALL_ESTIMATORS]
        if unknown:
            raise ValueError(f"estimation.estimators: unknown estimator(s) {unknown}; allowed: {list(ALL_ESTIMATORS)}")
        if not self.estimators:
            raise ValueError("estimation.estimators: empty list")
        if int(self.n_folds) < 2:
            raise ValueError(f"estimation.n_folds must be >= 2, got {self.n_folds}")
        if not 0.0 < float(self.alpha) < 1.0:
            raise ValueError(f"estimation.alpha must be in (0, 1), got {self.alpha}")
        if self.calibrator not in CALIBRATORS:
            raise ValueError(f"estimation.calibrator must be one of {list(CALIBRATORS)}, got {self.calibrator!r}")
        if self.var_cap is not None and float(self.var_cap) <= 0:
            raise ValueError(f"estimation.var_cap must be > 0 or null, got {self.var_cap}")
        if self.transport_rule not in TRANSPORT_RULES:
            raise ValueError(f"estimation.transport_rule must be one of {list(TRANSPORT_RULES)}, got {self.transport_rule!r}")
        if self.transport_shrinkage not in TRANSPORT_SHRINKAGE:
            raise ValueError(f"estimation.transport_shrinkage must be one of {list(TRANSPORT_SHRINKAGE)}, "
                             f"got {self.transport_shrinkage!r}")
        if self.transport_correction_weight not in CORRECTION_WEIGHTS:
            raise ValueError(f"estimation.transport_correction_weight must be one of {list(CORRECTION_WEIGHTS)}, "
                             f"got {self.transport_correction_weight!r}")
        if not float(self.transport_margin) > 0:
            raise ValueError(f"estimation.transport_margin must be > 0, got {self.transport_margin}")
        if float(self.transport_min_clusters) < 2:
            raise ValueError(f"estimation.transport_min_clusters must be >= 2, got {self.transport_min_clusters}")
        if self.suspect_logprobs not in SUSPECT_LOGPROB_MODES:
            raise ValueError(f"estimation.suspect_logprobs must be one of {list(SUSPECT_LOGPROB_MODES)}, "
                             f"got {self.suspect_logprobs!r}")
        if int(self.n_bootstrap) < 0:
            raise ValueError(f"estimation.n_bootstrap must be >= 0, got {self.n_bootstrap}")

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> "EstimationConfig":
        """Build from the ``estimation:`` parameter block.

        Raises:
            ValueError: naming unknown keys (top level or under ``gates``) or invalid values.
        """
        params = dict(params or {})
        _reject_unknown_keys("estimation", params, cls)
        if "gates" in params:
            g = dict(params["gates"] or {})
            _reject_unknown_keys("estimation.gates", g, Gates)
            params["gates"] = Gates(**g)
        if "estimators" in params:
            est = params["estimators"]
            params["estimators"] = (est,) if isinstance(est, str) else tuple(est)
        return cls(**params)


def _reject_unknown_keys(where: str, params: Mapping[str, Any], cls: type) -> None:
    """Raise ValueError naming the keys of ``params`` that are not fields of dataclass ``cls``."""
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
