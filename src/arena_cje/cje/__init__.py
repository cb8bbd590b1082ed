"""Statistical core of Arena CJE: calibration, weights, estimators, inference, diagnostics.

Pure numpy/pandas/scikit-learn/scipy; no Kedro, no backends, no file I/O (``parse_jsonl`` parses
bytes a caller has read). Formulas are in the
module docstrings and in ``docs/statistics.md``.

Usage::

    from arena_cje.cje import CJEDataset, EstimationConfig, estimate_policies
    data = CJEDataset.from_frames(logged, fresh_draws, probes)
    result = estimate_policies(data, EstimationConfig.from_params(params["estimation"]))
"""

from arena_cje.cje.api import EstimationResult, TransportAudit, estimate_policies, transport_audit
from arena_cje.cje.calibration import CalibrationDiagnostics, fit_calibration
from arena_cje.cje.comparisons import PolicyComparisons, adjust_p_values, compare_policies
from arena_cje.cje.config import ALL_ESTIMATORS, EstimationConfig, Gates
from arena_cje.cje.data import CJEDataError, CJEDataset, parse_jsonl, response_length, suspect_logprob_rows
from arena_cje.cje.estimators import ESTIMATORS, EstimatorOutput
from arena_cje.cje.folds import fold_of
from arena_cje.cje.weight_diagnostics import WeightDiagnostics

__all__ = [
    "ALL_ESTIMATORS",
    "ESTIMATORS",
    "CalibrationDiagnostics",
    "CJEDataError",
    "CJEDataset",
    "EstimationConfig",
    "EstimationResult",
    "EstimatorOutput",
    "Gates",
    "PolicyComparisons",
    "TransportAudit",
    "WeightDiagnostics",
    "adjust_p_values",
    "compare_policies",
    "estimate_policies",
    "fit_calibration",
    "fold_of",
    "parse_jsonl",
    "response_length",
    "suspect_logprob_rows",
    "transport_audit",
]
