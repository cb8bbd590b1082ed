"""Plain, JSON-able Python values from configuration and results (no Kedro, no backend).

One helper shared by the configuration code (OmegaConf containers from ``conf/``), the report's
parameter table and the JSON summaries the pipelines save.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def to_plain(value: Any) -> Any:
    """Plain JSON-able Python objects from nested containers and numpy values.

    * Mappings (OmegaConf ``DictConfig`` included) -> ``dict`` with ``str`` keys;
    * lists and tuples -> ``list``;
    * numpy scalars -> the Python scalar (``np.int64(3)`` -> ``3``);
    * ``NaN`` and infinities -> ``None`` (JSON has neither; ``json.dumps(..., allow_nan=False)``
      then never fails on a number);
    * anything else is returned as is.
    """
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
