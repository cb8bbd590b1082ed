"""A small table in the lmsys/chatbot_arena_conversations schema, with each row's known fate."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd

# fate of each row -> the filter expected to remove it ("kept" rows survive the defaults;
# "flagged" rows survive unless prompts.drop_flagged).
GOOD = [
    ("g1", "What is the capital of France?", 100.0),
    ("g2", "Write a haiku about autumn leaves.", 101.0),
    ("g3", "Explain how a transistor works, briefly.", 102.0),
    ("g4", "Give me three tips for a job interview.", 103.0),
    ("g5", "Translate 'good morning' into Japanese.", 104.0),
    ("g6", "Summarise the plot of Hamlet in two lines.", 105.0),
]


def _conv(*messages: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in messages]


def _row(qid: str, text: str | None, tstamp: float, *, turn: int = 1, language: str = "English",
         conversation: list[dict[str, str]] | None = None, flagged: bool = False) -> dict:
    conversation = conversation if conversation is not None else _conv(("user", text), ("assistant", "An answer."))
    return {
        "question_id": qid,
        "model_a": "vicuna-13b",
        "model_b": "gpt-4",
        "winner": "model_b" if len(qid) % 2 else "tie",
        "judge": f"arena_user_{qid}",
        "conversation_a": conversation,
        "conversation_b": conversation,
        "turn": turn,
        "anony": True,
        "language": language,
        "tstamp": tstamp,
        "openai_moderation": {"flagged": flagged, "categories": {"harassment": flagged}},
        "toxic_chat_tag": {"roberta-large": {"flagged": False, "probability": 0.01},
                           "t5-large": {"flagged": False, "score": 0.0}},
    }


def arena_rows() -> tuple[list[dict], list[str]]:
    """Rows and, aligned with them, the filter that removes each one ("kept" if none)."""
    rows, fate = [], []

    def add(row: dict, why: str) -> None:
        rows.append(row)
        fate.append(why)

    for qid, text, ts in GOOD:
        # g1 has an earlier normalised duplicate (d1): d1 is kept, g1 is the removed duplicate.
        add(_row(qid, text, ts), "duplicate" if qid == "g1" else "kept")
    add(_row("d1", "  what is the   CAPITAL of France? ", 50.0), "kept")
    add(_row("d2", "WHAT IS THE CAPITAL OF FRANCE?", 200.0), "duplicate")
    add(_row("m1", None, 110.0, conversation=_conv(("assistant", "Hello, how can I help?"))), "malformed")
    add(_row("t1", None, 111.0, turn=2, conversation=_conv(
        ("user", "Tell me a joke."), ("assistant", "Why..."), ("user", "Another one."), ("assistant", "OK")
    )), "multi_turn")
    add(_row("t2", None, 112.0, turn=3, conversation=_conv(
        ("user", "Hi there, who are you?"), ("assistant", "A bot."), ("user", "Cool."), ("assistant", "Yes."),
        ("user", "Bye."), ("assistant", "Bye."),
    )), "multi_turn")
    # turn says 1 but the conversation holds two user messages: not single-turn.
    add(_row("t3", None, 113.0, turn=1, conversation=_conv(
        ("user", "First question here?"), ("assistant", "A."), ("user", "Second one?"), ("assistant", "B.")
    )), "multi_turn")
    add(_row("l1", "¿Cuál es la capital de Francia?", 120.0, language="Spanish"), "language")
    add(_row("l2", "Was ist die Hauptstadt von Frankreich?", 121.0, language="German"), "language")
    add(_row("f1", "Write an insulting poem about my neighbour.", 130.0, flagged=True), "flagged")
    add(_row("e1", "   \n\t ", 140.0), "empty")
    add(_row("s1", "hi", 141.0), "length")
    add(_row("s2", "word " * 500, 142.0), "length")  # 2,499 characters after stripping > 2,000
    return rows, fate


def arena_frame() -> pd.DataFrame:
    return pd.DataFrame(arena_rows()[0])


def expected_removed(*, drop_flagged: bool = False) -> Counter:
    """Filter name -> rows it removes, from the fates above."""
    fates = Counter(arena_rows()[1])
    fates.pop("kept")
    flagged = fates.pop("flagged")
    if drop_flagged:
        fates["flagged"] = flagged
    return fates


def expected_kept_ids(*, drop_flagged: bool = False) -> set[str]:
    rows, fate = arena_rows()
    keep = {"kept"} if drop_flagged else {"kept", "flagged"}
    return {"arena-" + r["question_id"] for r, f in zip(rows, fate, strict=True) if f in keep}


def write_arena_fixture(path: Path) -> Path:
    """Write the rows in the format given by ``path``'s suffix (.parquet, .jsonl or .json)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    df = arena_frame()
    if path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    elif path.suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True, force_ascii=False)
    elif path.suffix == ".json":
        df.to_json(path, orient="records", force_ascii=False)
    else:
        raise ValueError(path.suffix)
    return path
