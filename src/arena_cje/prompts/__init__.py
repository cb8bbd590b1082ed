"""Real Chatbot Arena prompts: schema check, single-turn extraction, filters, seeded sampling.

No Kedro here: the ``data_prep`` pipeline and :mod:`arena_cje.datasets` call these functions.
"""

from .filters import (
    PROMPT_COLUMNS,
    FilterStep,
    PromptFilterConfig,
    extract_arena_prompts,
    first_user_turn,
    is_flagged,
    normalise_text,
)
from .io import read_arena_export
from .sampling import sample_pool, seeded_rank_key
from .schema import ARENA_COLUMNS, REQUIRED_COLUMNS, ArenaSchemaError, check_arena_schema

__all__ = [
    "ARENA_COLUMNS", "PROMPT_COLUMNS", "REQUIRED_COLUMNS", "ArenaSchemaError", "FilterStep",
    "PromptFilterConfig", "check_arena_schema", "extract_arena_prompts", "first_user_turn",
    "is_flagged", "normalise_text", "read_arena_export", "sample_pool", "seeded_rank_key",
]
