"""The estimation context: what every estimator of one run shares, computed once per policy.

One :class:`EstimationContext` per (dataset, config, calibration) holds, lazily:

* on the logged rows, the cross-fitted calibrated rewards R_i = f^(-k(i))(S_i) (``rewards``), their
  K delete-one-fold replicates f^(-k)(S_i) (``rewards_k``, for the OUA jackknife), the oracle labels
  Y_i (NaN when unlabelled) and the prompt folds k(i) = crc32(prompt_id) mod K (``folds.py``);
* per policy, its fresh draws with their calibrated predictions (:class:`FreshDraws`);
* per policy, its importance weights (:class:`PolicyWeights`: raw Hajek weights w~ and SIMCal-W
  weights W on the logged rows with both log-probs, and their :class:`WeightDiagnostics`);
* the logged rows with suspect log-probs (``data.suspect_logprob_rows``);
* the memo of estimator outputs (``outputs``) that ``estimators.run_estimator`` fills.

The formulas of the calibration are in ``calibration.py``, of the weights in ``weights.py``, of
their diagnostics in ``weight_diagnostics.py``, of the estimators in ``estimators/``; ``docs/statistics.md`` collects them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from arena_cje.cje.calibration import CrossFitCalibration
from arena_cje.cje.config import EstimationConfig
from arena_cje.cje.data import CJEDataset, suspect_logprob_rows
from arena_cje.cje.folds import prompt_hashes
from arena_cje.cje.weight_diagnostics import (
    WeightDiagnostics,
    ess_fraction,
    hill_tail_index,
    judge_overlap,
    target_typicality_coverage,
)
from arena_cje.cje.weights import SimcalResult, hajek_weights, simcal_weights

if TYPE_CHECKING:
    from arena_cje.cje.estimators.output import EstimatorOutput


@dataclass(frozen=True)
class FreshDraws:
    """The fresh draws d of one policy as arrays, with the calibrated predictions on them.

    Attributes:
        frame: The policy's fresh-draw rows (``CJEDataset.fresh[policy]``).
        prompt_ids: prompt_id of each draw.
        judge: S_d, the judge score of each draw.
        label: Y_d, the oracle label of each draw (NaN when the draw is unlabelled).
        codes: Position of each draw's prompt in ``prompts``.
        prompts: The distinct prompts in order of first appearance (index named ``prompt_id``).
        counts: Number of draws of each prompt (aligned with ``prompts``).
        folds: k(d) = crc32(prompt_id) mod K of each draw (``folds.py``).
        pred: f^(-k(d))(S_d), the cross-fitted calibrated prediction (None without a calibration).
        pred_k: K x n_draws matrix of f^(-k)(S_d), the OUA replicates (None without a calibration).
    """

    frame: pd.DataFrame
    prompt_ids: np.ndarray
    judge: np.ndarray
    label: np.ndarray
    codes: np.ndarray
    prompts: pd.Index
    counts: np.ndarray
    folds: np.ndarray
    pred: np.ndarray | None = None
    pred_k: np.ndarray | None = None

    @property
    def labelled(self) -> np.ndarray:
        """L_d = 1 when draw d carries an oracle label."""
        return ~np.isnan(self.label)

    def prompt_means(self, values: np.ndarray) -> np.ndarray:
        """mean_{d in g} values_d for every prompt g, aligned with ``prompts``."""
        return np.bincount(self.codes, weights=values, minlength=len(self.prompts)) / self.counts

    def prompt_mean_series(self, values: np.ndarray) -> pd.Series:
        """``prompt_means`` as a Series indexed by prompt_id (per-prompt contributions psi_g)."""
        return pd.Series(self.prompt_means(values), index=self.prompts)


@dataclass
class PolicyWeights:
    """Importance weights of one policy on the logged rows.

    Attributes:
        mask: Logged rows with both the base and the target log-prob (all rows, bool).
        raw: Mean-one Hajek weights w~ on the ``mask`` rows (``weights.hajek_weights``).
        simcal: SIMCal-W weights W on the ``mask`` rows (NaN when not computable).
        diagnostics: ESS, tail, overlap and TTC diagnostics (``weights.WeightDiagnostics``).
        simcal_fit: The SIMCal fit (stacking weights, blend, projections); None when not fitted.
        zero_rows: Used logged rows with a log-prob of exactly 0.0 (all rows, bool).
        identical_rows: Used logged rows with one log-prob under every policy (all rows, bool).
    """

    mask: np.ndarray
    raw: np.ndarray
    simcal: np.ndarray
    diagnostics: WeightDiagnostics
    simcal_fit: SimcalResult | None = None
    zero_rows: np.ndarray | None = None
    identical_rows: np.ndarray | None = None

    @property
    def simcal_reasons(self) -> list[str]:
        """Why the SIMCal weights are not what their formula says (a fallback the fit took), if they are not."""
        fit = self.simcal_fit
        return [fit.fallback] if fit is not None and fit.fallback else []


class EstimationContext:
    """Shared, lazily computed quantities for one dataset, config and calibration (module docstring).

    Attributes:
        data: The dataset.
        config: The estimation settings.
        cal: The cross-fitted calibration (None when there were too few oracle labels).
        logged: ``data.logged``.
        K: Number of folds.
        outputs: (policy, estimator) -> output, filled by ``estimators.run_estimator``.
    """

    def __init__(self, data: CJEDataset, config: EstimationConfig, calibration: CrossFitCalibration | None) -> None:
        self.data = data
        self.config = config
        self.cal = calibration
        self.logged = data.logged
        self.K = config.n_folds
        self._weights: dict[str, PolicyWeights] = {}
        self._fresh: dict[str, FreshDraws] = {}
        self._fresh_positions: dict[str, np.ndarray] = {}
        self.outputs: dict[tuple[str, str], EstimatorOutput] = {}

    @property
    def use_oua(self) -> bool:
        """Whether estimators report OUA replicates (a calibration from a sample of the logged rows)."""
        return self.config.oua and self.cal is not None and not self.cal.full_coverage

    @cached_property
    def prompt_hashes(self) -> np.ndarray:
        """crc32(prompt_id) of every logged row, hashed once for the folds and the jackknife groups."""
        return prompt_hashes(self.prompt_ids)

    @cached_property
    def folds(self) -> np.ndarray:
        """k(i) = crc32(prompt_id) mod K of every logged row."""
        return self.prompt_hashes % self.K

    @cached_property
    def rewards(self) -> np.ndarray:
        """R_i = f^(-k(i))(S_i) on the logged rows."""
        return self.cal.predict_oof(self.logged, folds=self.folds)

    @cached_property
    def rewards_k(self) -> np.ndarray:
        """K x n matrix of f^(-k)(S_i) (OUA replicates)."""
        return np.vstack([self.cal.predict_fold(self.logged, k) for k in range(self.K)])

    @cached_property
    def labels(self) -> np.ndarray:
        """Y_i on the logged rows (NaN when unlabelled)."""
        return self.logged["oracle_label"].to_numpy(dtype=float)

    @cached_property
    def prompt_ids(self) -> np.ndarray:
        """prompt_id of every logged row."""
        return self.logged["prompt_id"].to_numpy(dtype=object)

    @cached_property
    def prompt_codes(self) -> tuple[np.ndarray, pd.Index]:
        """``pd.factorize`` of the logged rows' prompt ids: (code of each row, the distinct prompts), hashed once."""
        codes, uniq = pd.factorize(self.prompt_ids)
        # dtype=object: an Arrow string index (pandas' default) copies every id; object shares them
        return codes, pd.Index(uniq, name="prompt_id", dtype=object)

    def prompt_groups(self, rows: np.ndarray) -> tuple[np.ndarray, pd.Index]:
        """``pd.factorize(prompt_ids[rows])`` (codes, distinct prompts) from the codes hashed once.

        Renumbering integer codes costs a fraction of hashing the ids again; when ``rows`` has every
        prompt in first-appearance order the one shared Index comes back, so per-prompt
        contributions of different estimators align without comparing ids (``Index.equals``).
        """
        codes, index = self.prompt_codes
        local, first = pd.factorize(codes[rows])
        if first.size == len(index) and bool(np.all(first == np.arange(first.size))):
            return local, index
        return local, index[first]

    def _hashes_of(self, prompts: pd.Index) -> np.ndarray:
        """crc32 of distinct prompt ids: looked up among the logged prompts (hashed once), hashed only when new."""
        codes, index = self.prompt_codes
        by_code = np.empty(len(index), dtype=np.int64)
        by_code[codes] = self.prompt_hashes  # every row of a prompt has its prompt's hash
        pos = index.get_indexer(prompts)
        new = pos < 0
        out = by_code[np.where(new, 0, pos)] if len(index) else np.zeros(len(prompts), dtype=np.int64)
        if new.any():
            out[new] = prompt_hashes(prompts[new])
        return out

    def fresh_positions(self, policy: str) -> np.ndarray | None:
        """Position in ``fresh(policy).prompts`` of every logged row's prompt (-1: no draw); None without draws."""
        f = self.fresh(policy)
        if f is None:
            return None
        if policy not in self._fresh_positions:
            codes, index = self.prompt_codes
            self._fresh_positions[policy] = f.prompts.get_indexer(index)[codes]
        return self._fresh_positions[policy]

    @cached_property
    def judge(self) -> np.ndarray:
        """S_i on the logged rows."""
        return self.logged["judge_score"].to_numpy(dtype=float)

    def fresh(self, policy: str) -> FreshDraws | None:
        """Fresh draws of a policy with cross-fitted and replicate predictions (None when it has none)."""
        if policy not in self.data.fresh or len(self.data.fresh[policy]) == 0:
            return None
        if policy not in self._fresh:
            self._fresh[policy] = self._build_fresh(self.data.fresh[policy])
        return self._fresh[policy]

    def _build_fresh(self, f: pd.DataFrame) -> FreshDraws:
        pid = f["prompt_id"].to_numpy(dtype=object)
        codes, uniq = pd.factorize(pid)
        # dtype=object: an Arrow string index (pandas' default) copies every id; object shares them
        prompts = pd.Index(uniq, name="prompt_id", dtype=object)
        folds = self._hashes_of(prompts)[codes] % self.K
        pred = pred_k = None
        if self.cal is not None:
            pred = self.cal.predict_oof(f, folds=folds)
            pred_k = np.vstack([self.cal.predict_fold(f, k) for k in range(self.K)])
        return FreshDraws(
            frame=f,
            prompt_ids=pid,
            judge=f["judge_score"].to_numpy(dtype=float),
            label=f["oracle_label"].to_numpy(dtype=float),
            codes=codes,
            prompts=prompts,
            counts=np.bincount(codes, minlength=len(uniq)).astype(float),
            folds=folds,
            pred=pred,
            pred_k=pred_k,
        )

    @cached_property
    def suspect_logprobs(self) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
        """``data.suspect_logprob_rows`` of the logged rows (exact 0.0, identical under every policy)."""
        return suspect_logprob_rows(self.logged["base_logprob"].to_numpy(dtype=float), self.data.logprobs)

    def weights(self, policy: str) -> PolicyWeights | None:
        """Raw and SIMCal weights of a policy with their diagnostics (None when it has no log-probs)."""
        if policy not in self.data.logprobs.columns:
            return None
        if policy not in self._weights:
            self._weights[policy] = self._build_weights(policy)
        return self._weights[policy]

    def _build_weights(self, policy: str) -> PolicyWeights:
        lp = self.data.logprobs[policy].to_numpy(dtype=float)
        base = self.logged["base_logprob"].to_numpy(dtype=float)
        mask, logw, w = hajek_weights(lp, base)
        judge = self.judge
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
            fr = fresh.frame if fresh is not None else None
            has_fresh_lp = fr is not None and {"logprob", "n_tokens"} <= set(fr.columns)
            ttc, ttc_method = target_typicality_coverage(
                lp, self.logged["n_tokens"].to_numpy(dtype=float), base,
                fr["logprob"].to_numpy(dtype=float) if has_fresh_lp else None,
                fr["n_tokens"].to_numpy(dtype=float) if has_fresh_lp else None)
        sim_ok = sim.size > 0 and bool(np.isfinite(sim).all())
        diag = WeightDiagnostics(
            policy=policy,
            n=int(mask.sum()),
            n_missing_logprob=int((~mask).sum()),
            ess_raw=ess_fraction(w),
            ess_simcal=ess_fraction(sim) if sim_ok else float("nan"),
            max_weight=float(w.max()) if w.size else float("nan"),
            max_weight_simcal=float(np.max(sim)) if sim_ok else float("nan"),
            hill_alpha=hill_tail_index(w),
            near_zero_mass=float(np.mean(w < 1e-3)) if w.size else float("nan"),
            hellinger_affinity=float(np.mean(np.sqrt(w))) if w.size else float("nan"),
            judge_overlap=judge_overlap(judge, fresh.judge) if fresh is not None else float("nan"),
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
        return PolicyWeights(mask=mask, raw=w, simcal=sim, diagnostics=diag, simcal_fit=res,
                             zero_rows=zero_rows, identical_rows=identical_rows)

    def logprob_reasons(self, pw: PolicyWeights) -> list[str]:
        """Why the logged rows behind a policy's weights are incomplete or suspect (counted, never imputed)."""
        d = pw.diagnostics
        reasons = []
        if d.n_missing_logprob:
            reasons.append(f"{d.n_missing_logprob} logged row(s) without log-probs excluded")
        src = self.data.logged_source
        if src is not None and len(src.labels) != len(pw.mask):  # a dataset rebuilt from another one's rows
            src = None
        suspect = (
            (d.n_zero_logprob, pw.zero_rows, "with a log-prob of exactly 0.0 (probability one: a failed scoring call upstream?)"),
            (d.n_identical_logprobs, pw.identical_rows, "with the same log-prob under every policy (a scoring failure upstream?)"),
        )
        for count, rows, what in suspect:
            if count:
                where = f" ({src.describe(rows)})" if src is not None else ""
                reasons.append(f"{count} logged row(s) {what}{where}")
        return reasons
