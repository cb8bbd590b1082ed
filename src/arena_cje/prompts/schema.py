"""The Chatbot Arena conversations schema (``lmsys/chatbot_arena_conversations``)."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

#: Every column of the published dataset, in its order.
ARENA_COLUMNS: tuple[str, ...] = (
    "question_id", "model_a", "model_b", "winner", "judge", "conversation_a", "conversation_b",
    "turn", "anony", "language", "tstamp", "openai_moderation", "toxic_chat_tag",
)

#: Columns the prompt extraction reads (the others are ignored and may be absent).
REQUIRED_COLUMNS: tuple[str, ...] = (
    "question_id", "model_a", "model_b", "winner", "conversation_a", "turn", "language", "tstamp",
)

#: Extra columns needed only when flagged prompts are dropped (``prompts.drop_flagged``).
MODERATION_COLUMNS: tuple[str, ...] = ("openai_moderation", "toxic_chat_tag")


class ArenaSchemaError(ValueError):
    """The input table lacks columns of the Chatbot Arena schema."""

    def __init__(self, missing: Iterable[str], present: Iterable[str]) -> None:
        self.missing = sorted(missing)
        self.present = list(present)
        super().__init__(
            f"Arena conversations: missing column(s) {self.missing}; the file has {self.present}. "
            f"Expected the lmsys/chatbot_arena_conversations schema ({', '.join(ARENA_COLUMNS)})."
        )


def check_arena_schema(conversations: pd.DataFrame, *, moderation: bool = False) -> None:
    """Raise :class:`ArenaSchemaError` naming every required column that is missing.

    Args:
        conversations: The raw table.
        moderation: Also require the moderation columns (``openai_moderation``, ``toxic_chat_tag``).
    """
    required = REQUIRED_COLUMNS + (MODERATION_COLUMNS if moderation else ())
    missing = [c for c in required if c not in conversations.columns]
    if missing:
        raise ArenaSchemaError(missing, conversations.columns)
