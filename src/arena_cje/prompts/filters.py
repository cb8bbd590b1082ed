"""From Arena conversations to clean single-turn prompts, counting what each filter removes."""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from .schema import check_arena_schema

log = logging.getLogger(__name__)

#: Columns of the extracted prompt table (source metadata kept for slicing results later).
PROMPT_COLUMNS: tuple[str, ...] = (
    "prompt_id", "prompt", "question_id", "model_a", "model_b", "winner", "tstamp", "language",
)

PROMPT_ID_PREFIX = "arena-"

_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class PromptFilterConfig:
    """What counts as a usable prompt.

    Attributes:
        languages: Keep rows whose ``language`` label is one of these (case-insensitive);
            ``None`` keeps every language.
        min_chars: Shortest prompt kept, in characters after stripping surrounding whitespace.
        max_chars: Longest prompt kept (long pasted documents dominate generation cost).
        drop_flagged: Drop prompts flagged by the OpenAI moderation endpoint or a toxic-chat tagger.
    """

    languages: tuple[str, ...] | None = ("English",)
    min_chars: int = 10
    max_chars: int = 2000
    drop_flagged: bool = False

    def __post_init__(self) -> None:
        if self.min_chars < 1:
            raise ValueError(f"prompts.min_chars must be >= 1, got {self.min_chars}")
        if self.max_chars < self.min_chars:
            raise ValueError(f"prompts.max_chars={self.max_chars} is below prompts.min_chars={self.min_chars}")

    @classmethod
    def from_params(cls, prompts: Mapping[str, Any]) -> PromptFilterConfig:
        """Build from the ``prompts`` parameter block (missing keys take the defaults above)."""
        default = cls()
        languages = prompts.get("languages", default.languages)
        if isinstance(languages, str):
            languages = [languages]
        return cls(
            languages=tuple(str(x) for x in languages) if languages else None,
            min_chars=int(prompts.get("min_chars", default.min_chars)),
            max_chars=int(prompts.get("max_chars", default.max_chars)),
            drop_flagged=bool(prompts.get("drop_flagged", default.drop_flagged)),
        )


@dataclass(frozen=True)
class FilterStep:
    """One filter's effect: ``removed`` rows dropped, ``remaining`` rows left after it."""

    name: str
    rule: str
    removed: int
    remaining: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def normalise_text(text: str) -> str:
    """The text used to detect empty and duplicate prompts.

    Unicode NFKC (full-width and compatibility forms fold together), case-folded, every run of
    whitespace collapsed to one space, surrounding whitespace stripped.
    """
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def user_turns(conversation: Any) -> list[str] | None:
    """Contents of the user messages of one conversation, in order.

    Args:
        conversation: A list (or numpy array, as Parquet loads it) of ``{role, content}`` mappings.

    Returns:
        The user contents, or ``None`` if the conversation is not in that shape or a user message's
        content is not a string.
    """
    if not isinstance(conversation, list | tuple | np.ndarray):
        return None
    turns = []
    for message in conversation:
        if not isinstance(message, Mapping) or "role" not in message:
            return None
        if message["role"] == "user":
            content = message.get("content")
            if not isinstance(content, str):
                return None
            turns.append(content)
    return turns or None


def first_user_turn(conversation: Any) -> str | None:
    """The first user message's content, or ``None`` if the conversation has none (or is malformed)."""
    turns = user_turns(conversation)
    return turns[0] if turns else None


def is_flagged(openai_moderation: Any, toxic_chat_tag: Any) -> bool:
    """True if the OpenAI moderation result or any toxic-chat tagger flagged the conversation.

    ``openai_moderation`` is ``{flagged, categories, category_scores}``; ``toxic_chat_tag`` maps a
    tagger name to ``{flagged, ...}``. Missing entries count as not flagged.
    """
    if isinstance(openai_moderation, Mapping) and bool(openai_moderation.get("flagged")):
        return True
    if isinstance(toxic_chat_tag, Mapping):
        return any(isinstance(tag, Mapping) and bool(tag.get("flagged")) for tag in toxic_chat_tag.values())
    return False


def extract_arena_prompts(
    conversations: pd.DataFrame, config: PromptFilterConfig | None = None
) -> tuple[pd.DataFrame, list[FilterStep]]:
    """Keep the first user turn of single-turn conversations that pass every filter.

    Filters, in order (each counts the rows it removes):

    1. ``malformed``: ``conversation_a`` is not a list of ``{role, content}`` with a user message.
    2. ``multi_turn``: ``turn != 1`` or more than one user message.
    3. ``language``: ``language`` not in ``config.languages`` (skipped when that is ``None``).
    4. ``flagged``: moderation flagged (only when ``config.drop_flagged``).
    5. ``empty``: the normalised text (:func:`normalise_text`) is empty.
    6. ``length``: stripped length outside ``[min_chars, max_chars]``.
    7. ``duplicate``: normalised text (or ``question_id``) seen before; the earliest ``tstamp``
       (then smallest ``question_id``) is kept, so the result does not depend on the file's row order.

    Args:
        conversations: Rows in the ``lmsys/chatbot_arena_conversations`` schema.
        config: Filter settings (defaults: English, 10-2,000 characters, flagged kept).

    Returns:
        The prompt table (:data:`PROMPT_COLUMNS`, sorted by ``prompt_id``; ``prompt`` is the first
        user turn with surrounding whitespace stripped, ``prompt_id`` is ``"arena-" + question_id``)
        and the filter steps.

    Raises:
        ArenaSchemaError: a required column is missing (the message names it).
    """
    config = config or PromptFilterConfig()
    check_arena_schema(conversations, moderation=config.drop_flagged)
    df = conversations.copy()
    df["question_id"] = df["question_id"].astype(str)
    df = df.sort_values(["tstamp", "question_id"], na_position="last", kind="stable").reset_index(drop=True)
    steps: list[FilterStep] = []

    def apply(name: str, rule: str, keep: pd.Series | np.ndarray) -> None:
        nonlocal df
        keep = np.asarray(keep, dtype=bool)
        removed = int((~keep).sum())
        df = df[keep].reset_index(drop=True)
        steps.append(FilterStep(name, rule, removed, len(df)))
        log.info("prompt filter %-10s removed %6d, %6d remain (%s)", name, removed, len(df), rule)

    turns = df["conversation_a"].map(user_turns)
    apply("malformed", "conversation_a is a list of {role, content} with a user message", turns.notna())
    turns = turns[turns.notna()].reset_index(drop=True)

    single = (pd.to_numeric(df["turn"], errors="coerce") == 1).to_numpy() & (turns.map(len) == 1).to_numpy()
    apply("multi_turn", "turn == 1 and exactly one user message", single)
    df["prompt"] = [t[0].strip() for t in turns[single]]

    if config.languages is not None:
        wanted = {lang.casefold() for lang in config.languages}
        apply(
            "language", f"language in {list(config.languages)}",
            df["language"].map(lambda x: isinstance(x, str) and x.casefold() in wanted),
        )
    if config.drop_flagged:
        flagged = [is_flagged(m, t) for m, t in zip(df["openai_moderation"], df["toxic_chat_tag"], strict=True)]
        apply("flagged", "not flagged by openai_moderation or toxic_chat_tag", ~np.asarray(flagged, dtype=bool))

    normalised = df["prompt"].map(normalise_text)
    apply("empty", "normalised text is not empty", normalised != "")
    normalised = normalised[normalised != ""].reset_index(drop=True)

    length = df["prompt"].str.len()
    in_bounds = (length >= config.min_chars) & (length <= config.max_chars)
    apply("length", f"{config.min_chars} <= characters <= {config.max_chars}", in_bounds)
    normalised = normalised[in_bounds.to_numpy()].reset_index(drop=True)

    unique = ~normalised.duplicated(keep="first").to_numpy() & ~df["question_id"].duplicated(keep="first").to_numpy()
    apply("duplicate", "first of each normalised text and question_id (earliest tstamp)", unique)

    df["prompt_id"] = PROMPT_ID_PREFIX + df["question_id"]
    out = df[list(PROMPT_COLUMNS)].sort_values("prompt_id", kind="stable").reset_index(drop=True)
    return out, steps
