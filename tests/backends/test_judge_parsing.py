"""The shared judge reply parser."""

from __future__ import annotations

import pytest

from arena_cje.backends.judge_parsing import parse_judge_score


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"score": 0.8, "reason": "good"}', 0.8),
        ('Here you go:\n```json\n{"score": 0.25, "reason": "meh"}\n```', 0.25),
        ('{"reason": "x", "Score": "0.6"}', 0.6),
        ('{"score": 0.7, "reason": "cut off mid-sent', 0.7),
        ("Score: 1", 1.0),
        ("I would give it 8/10.", 0.8),
        ('{"score": 0}', 0.0),
    ],
)
def test_scores_are_read(text, expected):
    assert parse_judge_score(text) == (pytest.approx(expected), None)


@pytest.mark.parametrize("text", ["", "   ", "This response is great!", '{"reason": "no score"}'])
def test_no_score_is_none_with_reason(text):
    score, error = parse_judge_score(text)
    assert score is None and error


@pytest.mark.parametrize("text", ['{"score": 7}', "score: -0.2", '{"score": "high"}', '{"score": true}'])
def test_out_of_range_or_non_numeric_is_not_clipped(text):
    score, error = parse_judge_score(text)
    assert score is None and error
