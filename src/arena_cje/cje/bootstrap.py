"""Cluster bootstrap of one estimate, refitting the calibrator in every replicate.

Replicate b resamples the logged prompts with replacement (a prompt drawn c times contributes c
copies of its logged row and fresh draws, each copy under a new prompt_id so folds and clusters stay
distinct; probes are not resampled), refits the calibration and recomputes the estimate theta*_b. ``api.py``
reports SE = sd_b(theta*_b) and the percentile interval [q_{alpha/2}, q_{1-alpha/2}] of the theta*_b.

Replicates whose calibrator cannot be fitted (too few labels in the resample) or whose estimate is
not finite are dropped and counted (``BootstrapReplicates.reasons``, status ``warning``); with fewer
than ``MIN_BOOTSTRAP_REPLICATES`` usable replicates the IF/OUA interval is kept and the row says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from arena_cje.cje.calibration import fit_calibration
from arena_cje.cje.config import EstimationConfig
from arena_cje.cje.context import EstimationContext
from arena_cje.cje.data import CJEDataset
from arena_cje.cje.estimators import run_estimator

#: Fewest usable bootstrap replicates for a bootstrap interval (with fewer the IF/OUA interval is kept).
MIN_BOOTSTRAP_REPLICATES = 10


@dataclass(frozen=True)
class BootstrapReplicates:
    """Cluster bootstrap replicates of one estimate (module docstring).

    Attributes:
        estimates: theta*_b of the replicates with a finite estimate.
        n_requested: B, the replicates drawn (``config.n_bootstrap``).
        n_no_calibration: Replicates dropped because the calibrator could not be fitted on the resample.
        n_not_finite: Replicates dropped because the estimator gave no finite estimate on the resample.
        first_error: The first calibration error (quoted in ``reasons``).
    """

    estimates: np.ndarray
    n_requested: int
    n_no_calibration: int = 0
    n_not_finite: int = 0
    first_error: str = ""

    @property
    def usable(self) -> bool:
        """Whether there are enough replicates for the bootstrap interval."""
        return self.estimates.size >= MIN_BOOTSTRAP_REPLICATES

    @property
    def reasons(self) -> list[str]:
        """Why the bootstrap interval rests on fewer replicates than drawn, or was not used."""
        out = []
        dropped = self.n_no_calibration + self.n_not_finite
        if dropped:
            why = []
            if self.n_no_calibration:
                why.append(f"{self.n_no_calibration} without a calibration ({self.first_error})")
            if self.n_not_finite:
                why.append(f"{self.n_not_finite} without a finite estimate")
            out.append(f"bootstrap: {dropped} of {self.n_requested} replicates dropped: {', '.join(why)}")
        if not self.usable:
            out.append(f"bootstrap: only {self.estimates.size} usable replicates (< {MIN_BOOTSTRAP_REPLICATES}): "
                       "the influence-function/OUA interval is reported instead")
        return out


def cluster_bootstrap(data: CJEDataset, config: EstimationConfig, policy: str, name: str) -> BootstrapReplicates:
    """Cluster bootstrap replicates of one estimate, refitting the calibrator each time (module docstring).

    Args:
        data: The dataset.
        config: Estimation settings (``n_bootstrap`` replicates, ``seed``).
        policy: Target policy.
        name: Estimator name.
    """
    rng = np.random.default_rng(config.seed)
    prompts = pd.unique(data.logged["prompt_id"])
    reps = []
    n_no_cal, first_error = 0, ""
    for _ in range(config.n_bootstrap):
        pick = rng.choice(prompts, size=len(prompts), replace=True)
        counts = pd.Series(pick).value_counts()
        # Duplicate clusters get fresh ids so folds and clusters stay distinct.
        def resample(df: pd.DataFrame) -> pd.DataFrame:
            parts = []
            for c in range(1, int(counts.max()) + 1):
                ids = counts.index[counts >= c]
                part = df.loc[df["prompt_id"].isin(ids)].copy()
                part["prompt_id"] = part["prompt_id"].astype(str) + f"#b{c}"
                parts.append(part)
            return pd.concat(parts, ignore_index=True)

        lg = data.logged.assign(_row=np.arange(len(data.logged)))
        lg_b = resample(lg)
        lp_b = data.logprobs.iloc[lg_b["_row"].to_numpy()].reset_index(drop=True)
        boot = CJEDataset(
            logged=lg_b.drop(columns="_row"),
            logprobs=lp_b,
            fresh={p: resample(f) for p, f in data.fresh.items()},
            probes={},
            covariates=data.covariates,
        )
        try:
            cal = fit_calibration(boot.logged, config.n_folds, config.calibrator, data.covariates, config.reliability_bins)
        except ValueError as e:
            n_no_cal += 1
            first_error = first_error or str(e).replace(";", ",")  # rows join their reasons with "; "
            continue
        ctx = EstimationContext(boot, config, cal)
        reps.append(run_estimator(ctx, policy, name).estimate)
    est = np.asarray(reps, dtype=float)
    finite = np.isfinite(est)
    return BootstrapReplicates(est[finite], config.n_bootstrap, n_no_cal, int((~finite).sum()), first_error)
