"""Judge -> oracle calibration, cross-fitted by prompt (CJE paper, arXiv 2512.11150, Sec. "AutoCal-R").

Two calibrators:

* **isotonic**: f(s) = argmin over non-decreasing g of sum_i (Y_i - g(S_i))^2 (PAV, sklearn
  ``IsotonicRegression``), predictions clipped to the observed label range [min Y, max Y] and to the
  training judge range. The PAV solution is mean-preserving on its training labels:
  mean_i f(S_i) = mean_i Y_i (each pooled block is replaced by its own mean).
* **two_stage**: a flexible first stage h(s, x) (cubic B-spline in the judge score plus the
  log1p-transformed covariates, ridge-penalised least squares), then isotonic regression of Y on
  the empirical-CDF rank u = F_n(h(S, X)) of the first-stage index. Monotone in the index, mean-
  preserving and clipped like the isotonic calibrator.

Cross-fitting: prompts are split into K folds by ``crc32(prompt_id) mod K``; f^(-k) is fitted on
the labelled rows outside fold k, and every row of a fold-k prompt gets the reward f^(-k)(S). The
same K models are the delete-one-fold refits that the OUA jackknife needs (``inference.py``).

Selection (``calibrator='auto'``): the candidates are isotonic and the two-stage calibrator on every
non-empty subset of the covariates (judge score always in; e.g. response length, prompt length),
ordered from simplest (isotonic, then fewer covariates). Each gets its out-of-fold squared errors
e_c,i on the labelled slice (same folds). With b = argmin_c mean(e_c), the paired one-standard-error
rule picks the simplest candidate c with

    mean(e_c) - mean(e_b) <= SE_cb,   SE_cb = sd_i(e_c,i - e_b,i) / sqrt(n_L),

i.e. a richer calibrator is kept only when it beats every simpler one by more than one standard
error of the *paired* difference of out-of-fold errors (the paired SE is the relevant noise: both
candidates are scored on the same labels, so the label noise common to both cancels).
``selection`` lists every candidate with its covariates, mean error, SE and paired SE.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import SplineTransformer

from arena_cje.cje.folds import fold_of


def _predict_isotonic(iso: IsotonicRegression, x: np.ndarray) -> np.ndarray:
    """``iso.predict(x)`` for a fitted ``out_of_bounds="clip"`` model, by ``np.interp`` on its knots.

    The same piecewise-linear function (constant beyond the end knots) without sklearn's input
    validation and scipy's ``interp1d`` object, which dominate at a million rows.
    """
    knots, values = iso.X_thresholds_, iso.y_thresholds_
    if knots.size == 1:
        return np.full(len(x), values[0])
    return np.interp(np.asarray(x, dtype=float).reshape(-1), knots, values)


class IsotonicCalibrator:
    """Monotone judge -> oracle map, clipped to the label range (see module docstring)."""

    name = "isotonic"

    def fit(self, judge: np.ndarray, covs: np.ndarray | None, y: np.ndarray, sample_weight: np.ndarray | None = None) -> "IsotonicCalibrator":
        self.lo_, self.hi_ = float(np.min(y)), float(np.max(y))
        self.iso_ = IsotonicRegression(y_min=self.lo_, y_max=self.hi_, increasing=True, out_of_bounds="clip")
        self.iso_.fit(judge, y, sample_weight=sample_weight)
        return self

    def predict(self, judge: np.ndarray, covs: np.ndarray | None = None) -> np.ndarray:
        if len(judge) == 0:  # an empty fold (small runs): sklearn rejects 0 rows
            return np.empty(0)
        return np.clip(_predict_isotonic(self.iso_, judge), self.lo_, self.hi_)


class TwoStageCalibrator:
    """First stage h(s, x) = spline(s) + linear(log1p x) by ridge; isotonic on the rank of h."""

    name = "two_stage"

    def __init__(self, n_knots: int = 5, ridge_alpha: float = 1.0) -> None:
        self.n_knots = n_knots
        self.ridge_alpha = ridge_alpha

    def _features(self, judge: np.ndarray, covs: np.ndarray | None) -> np.ndarray:
        spl = self.spline_.transform(judge.reshape(-1, 1))
        if covs is None or covs.shape[1] == 0:
            return spl
        z = (np.log1p(np.clip(np.nan_to_num(covs, nan=self.cov_fill_), 0, None)) - self.cov_mu_) / self.cov_sd_
        return np.hstack([spl, z])

    def fit(self, judge: np.ndarray, covs: np.ndarray | None, y: np.ndarray, sample_weight: np.ndarray | None = None) -> "TwoStageCalibrator":
        self.lo_, self.hi_ = float(np.min(y)), float(np.max(y))
        n_knots = int(max(2, min(self.n_knots, len(np.unique(judge)))))
        self.spline_ = SplineTransformer(n_knots=n_knots, degree=3, extrapolation="constant").fit(judge.reshape(-1, 1))
        if covs is not None and covs.shape[1] > 0:
            # NaN covariates are filled with the training median (a missing length is not imputed
            # into any estimate, only into this smoother's design matrix).
            self.cov_fill_ = np.nanmedian(covs, axis=0)
            lc = np.log1p(np.clip(np.where(np.isnan(covs), self.cov_fill_, covs), 0, None))
            self.cov_mu_, self.cov_sd_ = lc.mean(axis=0), lc.std(axis=0) + 1e-9
        self.ridge_ = Ridge(alpha=self.ridge_alpha).fit(self._features(judge, covs), y, sample_weight=sample_weight)
        h = self.ridge_.predict(self._features(judge, covs))
        self.h_sorted_ = np.sort(h)
        u = self._rank(h)
        self.iso_ = IsotonicRegression(y_min=self.lo_, y_max=self.hi_, increasing=True, out_of_bounds="clip")
        self.iso_.fit(u, y, sample_weight=sample_weight)
        return self

    def _rank(self, h: np.ndarray) -> np.ndarray:
        """Empirical CDF of the training first-stage index, F_n(h) (mid-rank for ties)."""
        lo = np.searchsorted(self.h_sorted_, h, side="left")
        hi = np.searchsorted(self.h_sorted_, h, side="right")
        return (lo + hi) / (2.0 * len(self.h_sorted_))

    def predict(self, judge: np.ndarray, covs: np.ndarray | None = None) -> np.ndarray:
        if len(judge) == 0:  # an empty fold (small runs): sklearn's transformers reject 0 rows
            return np.empty(0)
        h = self.ridge_.predict(self._features(judge, covs))
        return np.clip(_predict_isotonic(self.iso_, self._rank(h)), self.lo_, self.hi_)


def make_calibrator(name: str) -> IsotonicCalibrator | TwoStageCalibrator:
    if name == "isotonic":
        return IsotonicCalibrator()
    if name == "two_stage":
        return TwoStageCalibrator()
    raise ValueError(f"unknown calibrator {name!r}")


@dataclass
class CalibrationDiagnostics:
    """What the calibration report and plot need.

    Attributes:
        calibrator: Chosen calibrator name.
        selection: Out-of-fold mean squared error (and its SE) of every candidate considered.
        n_labelled: Number of oracle labels used.
        label_range: (min, max) of the oracle labels; predictions are clipped to it.
        oof_rmse: sqrt(mean_i (Y_i - f^(-k(i))(S_i))^2) over the labelled slice.
        mean_abs_calibration_error: sum_b (n_b/n_L) |mean_b Y - mean_b f_oof| over judge bins b.
        reliability: Per judge-score bin: n, judge_mean, predicted_mean (out-of-fold), label_mean.
        fold_stability: max over folds of sup_s |f^(-k)(s) - f(s)| on the judge grid, and the mean.
        judge_grid: Grid of judge scores for plotting.
        fitted_curve: Full-data calibrator on the grid (covariates at their median).
        fold_curves: K x grid array of the delete-one-fold curves.
        points: Labelled points: prompt_id, judge_score, oracle_label, oof_prediction, fold.
        judge_range: (min, max) of the labelled judge scores: the range the calibration was fitted
            on (outside it every calibrator is flat; the REFUSE-LEVEL gate of ``api.py``).
    """

    calibrator: str
    selection: pd.DataFrame
    n_labelled: int
    label_range: tuple[float, float]
    oof_rmse: float
    mean_abs_calibration_error: float
    reliability: pd.DataFrame
    fold_stability: dict[str, float]
    judge_grid: np.ndarray
    fitted_curve: np.ndarray
    fold_curves: np.ndarray
    points: pd.DataFrame = field(repr=False)
    judge_range: tuple[float, float] = (float("nan"), float("nan"))


@dataclass
class CrossFitCalibration:
    """K delete-one-fold calibrators plus the full-data one.

    Attributes:
        n_folds: K.
        fold_models: ``fold_models[k]`` = f^(-k), fitted without fold k's labels.
        full_model: f fitted on all labels (used for plots and the probe audit only).
        covariates: Covariate columns passed to the calibrator.
        diagnostics: :class:`CalibrationDiagnostics`.
    """

    n_folds: int
    fold_models: list
    full_model: object
    covariates: tuple[str, ...]
    diagnostics: CalibrationDiagnostics
    full_coverage: bool

    def covariate_matrix(self, frame: pd.DataFrame) -> np.ndarray | None:
        """The calibration's covariate columns of ``frame`` as an n x p float matrix (None without covariates)."""
        return frame[list(self.covariates)].to_numpy(dtype=float) if self.covariates else None

    def predict_oof(self, frame: pd.DataFrame, folds: np.ndarray | None = None) -> np.ndarray:
        """Cross-fitted reward f^(-k(prompt))(S) for every row of ``frame``.

        ``folds``: the rows' prompt folds when the caller already has them (``fold_of`` otherwise).
        """
        folds = fold_of(frame["prompt_id"], self.n_folds) if folds is None else folds
        judge = frame["judge_score"].to_numpy(dtype=float)
        covs = self.covariate_matrix(frame)
        out = np.empty(len(frame))
        for k, m in enumerate(self.fold_models):
            sel = folds == k
            if sel.any():
                out[sel] = m.predict(judge[sel], None if covs is None else covs[sel])
        return out

    def predict_fold(self, frame: pd.DataFrame, k: int) -> np.ndarray:
        """f^(-k)(S) for every row (the OUA jackknife replicate k)."""
        covs = self.covariate_matrix(frame)
        return self.fold_models[k].predict(frame["judge_score"].to_numpy(dtype=float), covs)

    def predict_full(self, frame: pd.DataFrame) -> np.ndarray:
        return self.full_model.predict(frame["judge_score"].to_numpy(dtype=float), self.covariate_matrix(frame))


def calibrator_candidates(calibrator: str, covariates: tuple[str, ...]) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Candidate calibrators, simplest first: key -> (calibrator name, covariates it uses).

    ``auto``: isotonic, then two-stage on every non-empty covariate subset by increasing size
    (module docstring); ``two_stage``: two-stage on all covariates; ``isotonic``: isotonic only.
    """
    if calibrator == "isotonic":
        return {"isotonic": ("isotonic", ())}
    if calibrator == "two_stage":
        return {"two_stage": ("two_stage", tuple(covariates))}
    if calibrator != "auto":
        raise ValueError(f"unknown calibrator {calibrator!r}")
    out: dict[str, tuple[str, tuple[str, ...]]] = {"isotonic": ("isotonic", ())}
    for r in range(1, len(covariates) + 1):
        for cset in combinations(covariates, r):
            out[f"two_stage[{','.join(cset)}]"] = ("two_stage", tuple(cset))
    if len(out) == 1:  # no covariates: the two-stage first stage is a spline in the judge score alone
        out["two_stage"] = ("two_stage", ())
    return out


def _oof_predictions(name: str, judge: np.ndarray, covs: np.ndarray | None, y: np.ndarray, folds: np.ndarray, n_folds: int) -> tuple[np.ndarray, list]:
    models = []
    oof = np.empty(len(y))
    for k in range(n_folds):
        train = folds != k
        if train.sum() < 2:
            raise ValueError(f"calibration: fold {k} leaves only {int(train.sum())} labelled rows to fit on; need more oracle labels or fewer folds")
        m = make_calibrator(name).fit(judge[train], None if covs is None else covs[train], y[train])
        models.append(m)
        test = folds == k
        if test.any():
            oof[test] = m.predict(judge[test], None if covs is None else covs[test])
    return oof, models


def fit_calibration(
    logged: pd.DataFrame,
    n_folds: int,
    calibrator: str = "isotonic",
    covariates: tuple[str, ...] = (),
    reliability_bins: int = 10,
) -> CrossFitCalibration:
    """Fit the cross-fitted judge -> oracle calibration on the labelled logged rows.

    Args:
        logged: ``CJEDataset.logged`` (needs prompt_id, judge_score, oracle_label, covariates).
        n_folds: K.
        calibrator: ``isotonic``, ``two_stage`` or ``auto`` (1-SE rule, module docstring).
        covariates: Covariates for the two-stage calibrator (ignored by isotonic).
        reliability_bins: Number of equal-width judge-score bins in the reliability table.

    Raises:
        ValueError: if there are fewer than 2 labels per training fold.
    """
    lab = logged.loc[logged["oracle_label"].notna()].reset_index(drop=True)
    if len(lab) < max(4, n_folds):
        raise ValueError(f"calibration: only {len(lab)} oracle labels in frame 'logged'; need at least {max(4, n_folds)}")
    judge = lab["judge_score"].to_numpy(dtype=float)
    y = lab["oracle_label"].to_numpy(dtype=float)
    folds = fold_of(lab["prompt_id"], n_folds)

    candidates = calibrator_candidates(calibrator, tuple(covariates))
    results = {}
    for key, (name, cset) in candidates.items():
        c = lab[list(cset)].to_numpy(dtype=float) if cset else None
        oof, models = _oof_predictions(name, judge, c, y, folds, n_folds)
        err = (y - oof) ** 2
        results[key] = (oof, models, err.mean(), err.std(ddof=1) / np.sqrt(len(err)), err)
    best = min(results, key=lambda n: results[n][2])
    eb = results[best][4]
    paired_se = {k: float(np.std(r[4] - eb, ddof=1) / np.sqrt(len(eb))) for k, r in results.items()}
    # Paired 1-SE rule: the simplest candidate (dict order) within one paired SE of the best.
    chosen_key = next(k for k in results if results[k][2] - results[best][2] <= paired_se[k] + 1e-15)
    chosen, use_covs = candidates[chosen_key]
    oof, models = results[chosen_key][0], results[chosen_key][1]
    covs = lab[list(use_covs)].to_numpy(dtype=float) if use_covs else None
    full = make_calibrator(chosen).fit(judge, covs, y)

    selection = pd.DataFrame(
        [{"calibrator": candidates[k][0], "covariates": ",".join(candidates[k][1]), "oof_mse": r[2], "oof_mse_se": r[3],
          "paired_se_vs_best": paired_se[k], "chosen": k == chosen_key} for k, r in results.items()]
    )
    # Reliability table on equal-width judge bins.
    edges = np.linspace(0.0, 1.0, reliability_bins + 1)
    b = np.clip(np.digitize(judge, edges[1:-1]), 0, reliability_bins - 1)
    rel = (
        pd.DataFrame({"bin": b, "judge": judge, "pred": oof, "label": y})
        .groupby("bin")
        .agg(n=("label", "size"), judge_mean=("judge", "mean"), predicted_mean=("pred", "mean"), label_mean=("label", "mean"))
        .reset_index()
    )
    rel.insert(1, "bin_lo", edges[rel["bin"].to_numpy()])
    rel.insert(2, "bin_hi", edges[rel["bin"].to_numpy() + 1])
    mace = float((rel["n"] / rel["n"].sum() * (rel["label_mean"] - rel["predicted_mean"]).abs()).sum())

    grid = np.linspace(0.0, 1.0, 101)
    med = None if not use_covs else np.tile(np.nanmedian(covs, axis=0), (len(grid), 1))
    curve = full.predict(grid, med)
    fold_curves = np.vstack([m.predict(grid, med) for m in models])
    # Stability measured on the judge range actually observed (outside it every curve is flat).
    inside = (grid >= judge.min()) & (grid <= judge.max())
    dev = np.abs(fold_curves[:, inside] - curve[inside]).max(axis=1)
    diag = CalibrationDiagnostics(
        calibrator=chosen,
        selection=selection,
        n_labelled=len(lab),
        label_range=(float(y.min()), float(y.max())),
        oof_rmse=float(np.sqrt(np.mean((y - oof) ** 2))),
        mean_abs_calibration_error=mace,
        reliability=rel,
        fold_stability={"max_sup_deviation": float(dev.max()), "mean_sup_deviation": float(dev.mean())},
        judge_grid=grid,
        fitted_curve=curve,
        fold_curves=fold_curves,
        points=pd.DataFrame({"prompt_id": lab["prompt_id"], "judge_score": judge, "oracle_label": y, "oof_prediction": oof, "fold": folds}),
        judge_range=(float(judge.min()), float(judge.max())),
    )
    return CrossFitCalibration(
        n_folds=n_folds,
        fold_models=models,
        full_model=full,
        covariates=use_covs,
        diagnostics=diag,
        full_coverage=bool(logged["oracle_label"].notna().all()),
    )
