import numpy as np
import pandas as pd
import pytest

from arena_cje.prompts import (
    ArenaSchemaError,
    PromptFilterConfig,
    extract_arena_prompts,
    first_user_turn,
    is_flagged,
    normalise_text,
)

from .arena_fixture import arena_frame, expected_kept_ids, expected_removed


@pytest.mark.parametrize("drop_flagged", [False, True])
def test_each_filter_removes_exactly_the_rows_built_to_fail_it(drop_flagged):
    raw = arena_frame()
    prompts, steps = extract_arena_prompts(raw, PromptFilterConfig(drop_flagged=drop_flagged))
    removed = {s.name: s.removed for s in steps if s.removed}
    assert removed == dict(expected_removed(drop_flagged=drop_flagged))
    assert set(prompts["prompt_id"]) == expected_kept_ids(drop_flagged=drop_flagged)
    # The counts chain: each step's remaining = previous remaining - removed.
    remaining = len(raw)
    for step in steps:
        remaining -= step.removed
        assert step.remaining == remaining
    assert remaining == len(prompts)


def test_duplicates_keep_the_earliest_and_the_result_ignores_row_order():
    raw = arena_frame()
    a, _ = extract_arena_prompts(raw)
    b, _ = extract_arena_prompts(raw.sample(frac=1.0, random_state=3))
    pd.testing.assert_frame_equal(a, b)
    france = a[a["prompt"].str.casefold().str.contains("capital of france")]
    assert list(france["prompt_id"]) == ["arena-d1"]  # tstamp 50 beats g1 (100) and d2 (200)
    assert france["prompt"].iloc[0] == "what is the   CAPITAL of France?"  # stripped, not normalised


def test_source_metadata_is_kept():
    raw = arena_frame().set_index("question_id")
    prompts, _ = extract_arena_prompts(arena_frame())
    for _, row in prompts.iterrows():
        src = raw.loc[row["question_id"]]
        assert row["prompt_id"] == "arena-" + row["question_id"]
        for col in ("model_a", "model_b", "winner", "tstamp", "language"):
            assert row[col] == src[col]
    assert prompts["prompt_id"].is_unique


def test_language_filter_is_configurable_and_case_insensitive():
    raw = arena_frame()
    langs = lambda cfg: set(extract_arena_prompts(raw, cfg)[0]["language"])  # noqa: E731
    assert langs(PromptFilterConfig(languages=("english",))) == {"English"}
    assert langs(PromptFilterConfig(languages=("English", "Spanish"))) == {"English", "Spanish"}
    assert langs(PromptFilterConfig(languages=None)) == {"English", "Spanish", "German"}
    _, steps = extract_arena_prompts(raw, PromptFilterConfig(languages=None))
    assert "language" not in {s.name for s in steps}


def test_length_bounds_are_inclusive():
    raw = arena_frame()
    prompts, _ = extract_arena_prompts(raw)
    lengths = prompts["prompt"].str.len()
    lo, hi = int(lengths.min()), int(lengths.max())
    tight, steps = extract_arena_prompts(raw, PromptFilterConfig(min_chars=lo, max_chars=hi))
    assert len(tight) == len(prompts)
    tighter, _ = extract_arena_prompts(raw, PromptFilterConfig(min_chars=lo + 1, max_chars=hi - 1))
    assert len(tighter) == len(prompts) - int((lengths == lo).sum()) - int((lengths == hi).sum())


def test_schema_mismatch_names_every_missing_column():
    raw = arena_frame().drop(columns=["turn", "language"])
    with pytest.raises(ArenaSchemaError, match=r"missing column\(s\) \['language', 'turn'\]") as err:
        extract_arena_prompts(raw)
    assert err.value.missing == ["language", "turn"]
    # Moderation columns are required only when flagged prompts are dropped.
    no_mod = arena_frame().drop(columns=["openai_moderation", "toxic_chat_tag"])
    extract_arena_prompts(no_mod)
    with pytest.raises(ArenaSchemaError, match="openai_moderation"):
        extract_arena_prompts(no_mod, PromptFilterConfig(drop_flagged=True))


def test_first_user_turn_handles_parquet_arrays_and_malformed_input():
    conv = [{"role": "user", "content": "A?"}, {"role": "assistant", "content": "B"}]
    assert first_user_turn(conv) == "A?"
    assert first_user_turn(np.array(conv, dtype=object)) == "A?"
    assert first_user_turn([{"role": "assistant", "content": "B"}]) is None
    assert first_user_turn("A?") is None
    assert first_user_turn([{"role": "user", "content": None}]) is None


def test_normalise_text_folds_case_width_and_whitespace():
    assert normalise_text("  Hello\n\tWORLD  ") == "hello world"
    assert normalise_text("Ｈｅｌｌｏ") == "hello"  # full-width letters (NFKC)
    assert normalise_text(" \u00a0\n") == ""


def test_is_flagged_reads_both_moderation_columns():
    assert is_flagged({"flagged": True}, None)
    assert is_flagged({"flagged": False}, {"t5-large": {"flagged": True}})
    assert not is_flagged({"flagged": False}, {"t5-large": {"flagged": False}})
    assert not is_flagged(None, None)


def test_config_from_params_and_validation():
    cfg = PromptFilterConfig.from_params({"languages": "French", "min_chars": 3, "max_chars": 50})
    assert cfg == PromptFilterConfig(languages=("French",), min_chars=3, max_chars=50, drop_flagged=False)
    assert PromptFilterConfig.from_params({"languages": None}).languages is None
    with pytest.raises(ValueError, match="max_chars=5 is below"):
        PromptFilterConfig(min_chars=10, max_chars=5)
