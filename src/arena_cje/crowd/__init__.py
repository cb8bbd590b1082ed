"""Human (oracle) labels: blinded task export, validated import of platform results, aggregation.

Plain pandas; no Kedro. The ``labeling`` pipeline is a thin adapter over these functions.
"""

from arena_cje.crowd.aggregate import aggregate_ratings
from arena_cje.crowd.export import make_label_tasks
from arena_cje.crowd.validate import validate_ratings

__all__ = ["aggregate_ratings", "make_label_tasks", "validate_ratings"]
