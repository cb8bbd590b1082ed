"""What every estimator returns, and the aggregation of row influence values into prompts.

An estimator's output is its per-prompt contributions psi_g (g = 1..G prompts) with
theta_hat = mean_g psi_g, plus the OUA replicates theta_k (the estimate recomputed with the
delete-one-fold calibrator f^(-k), k = 1..K). ``inference.t_interval`` turns them into a standard
error and a t interval.

Logged-row estimators (IPS and DR) compute a row influence value phi_i (estimate plus influence
function) and aggregate it by prompt,

    psi_g = (G / n) sum_{i in g} phi_i,

so that mean_g psi_g = mean_i phi_i and var(psi) / G is the cluster-robust (by prompt) variance.
Fresh-draw estimators (naive, direct) average over the draws of a prompt: psi_g = mean_{d in g} v_d.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


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
        warned: True when the estimate is reported with a warning (``reasons`` says why).
        extras: Estimator-specific values (e.g. stacking weights, TMLE's epsilon).
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
        """Number of prompts G the estimate averages over."""
        return int(len(self.psi))

    def warn(self, reasons: list[str]) -> None:
        """Add reasons and mark the output ``warned`` (no-op when ``reasons`` is empty)."""
        if reasons:
            self.reasons.extend(reasons)
            self.warned = True


def refused(policy: str, name: str, reason: str) -> EstimatorOutput:
    """An output without an estimate, refused for ``reason``."""
    return EstimatorOutput(policy, name, float("nan"), pd.Series(dtype=float), reasons=[reason], refused=True)


def prompt_sum(prompt_ids: np.ndarray | None, phi: np.ndarray,
               groups: tuple[np.ndarray, pd.Index] | None = None) -> pd.Series:
    """psi_g = (G/n) sum_{i in g} phi_i, indexed by prompt_id (module docstring).

    ``groups``: ``pd.factorize(prompt_ids)`` as (codes, distinct prompts) when the caller already
    has it (``EstimationContext.prompt_groups``); ``prompt_ids`` is then not read.
    """
    if groups is None:
        codes, uniq = pd.factorize(prompt_ids)
        # dtype=object: an Arrow string index (pandas' default) copies every id; object shares them
        groups = codes, pd.Index(uniq, name="prompt_id", dtype=object)
    codes, index = groups
    s = np.bincount(codes, weights=phi, minlength=len(index))
    return pd.Series(s * len(index) / len(phi), index=index)
