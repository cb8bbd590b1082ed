"""Human (oracle) labels: item selection, blinded task export, parsing and validation of platform
result files, aggregation, agreement and rater quality, and a simulated crowd.

Plain pandas; no Kedro. The ``labeling`` pipeline is a thin adapter over these functions.
"""

from arena_cje.crowd.aggregate import (
    agreement_by_policy,
    aggregate_ratings,
    duplicate_consistency,
    krippendorff_alpha,
    worker_quality,
)
from arena_cje.crowd.export import (
    add_quality_items,
    expected_cost,
    generic_tasks,
    instructions_markdown,
    label_studio_config,
    label_studio_tasks,
    make_label_tasks,
    surge_tasks,
)
from arena_cje.crowd.parse import ParsedRatings, RawFile, decode_bytes, parse_ratings
from arena_cje.crowd.select import horvitz_thompson_mean, stratified_sample
from arena_cje.crowd.simulate import CrowdConfig, llm_oracle_ratings, ratings_csv_bytes, simulate_platform_ratings
from arena_cje.crowd.summary import SummarySettings, summarise_labeling
from arena_cje.crowd.validate import parse_rating, validate_ratings

__all__ = [
    "CrowdConfig",
    "ParsedRatings",
    "RawFile",
    "SummarySettings",
    "add_quality_items",
    "aggregate_ratings",
    "agreement_by_policy",
    "decode_bytes",
    "duplicate_consistency",
    "expected_cost",
    "generic_tasks",
    "horvitz_thompson_mean",
    "instructions_markdown",
    "krippendorff_alpha",
    "label_studio_config",
    "label_studio_tasks",
    "make_label_tasks",
    "parse_rating",
    "parse_ratings",
    "ratings_csv_bytes",
    "llm_oracle_ratings",
    "simulate_platform_ratings",
    "summarise_labeling",
    "stratified_sample",
    "surge_tasks",
    "validate_ratings",
    "worker_quality",
]
