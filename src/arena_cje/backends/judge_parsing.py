"""Turn a judge's raw reply into a score on its scale (``judge.scale``, default 0–1), or ``None`` with the reason.

The rubric asks for JSON only: ``{"score": <number between 0 and 1>, "reason": "..."}``. Real
judges (small local models above all) wrap it in prose or code fences, or stop before the closing
brace, so parsing is tolerant, in this order:

1. the first JSON object in the text that has a ``score`` key (``json.JSONDecoder.raw_decode``
   tried at every ``{``, so fences and prose around it do not matter);
2. a ``score: <number>`` / ``"score": <number>`` pattern (a JSON reply cut off after the number);
3. a fraction ``<number>/<denominator>`` read as the share ``number / denominator`` of the scale
   (``8/10`` -> 0.8 on 0–1, 8 on 0–10: ``min + share * (max - min)``).

A number outside the scale ``[min, max]`` is *not* clipped (clipping would invent a score): the result is
``None`` with an error naming the value. Nothing found is ``None`` with ``"unparseable"``.
"""

from __future__ import annotations

import json
import math
import re

_DECODER = json.JSONDecoder()
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_SCORE_PATTERN = re.compile(r"[\"']?score[\"']?\s*[:=]\s*[\"']?(" + _NUMBER + r")", re.IGNORECASE)
_FRACTION_PATTERN = re.compile(r"(" + _NUMBER + r")\s*/\s*(\d+(?:\.\d+)?)")


def _as_float(value: object) -> float | None:
    """A finite float from a JSON number or numeric string; ``None`` otherwise (bools excluded)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _json_score(text: str) -> tuple[bool, float | None]:
    """``(found, value)`` for the first JSON object in ``text`` carrying a ``score`` key."""
    for start in (i for i, ch in enumerate(text) if ch == "{"):
        try:
            obj, _ = _DECODER.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            key = next((k for k in obj if isinstance(k, str) and k.lower() == "score"), None)
            if key is not None:
                return True, _as_float(obj[key])
    return False, None


def _checked(value: float, source: str, scale: tuple[float, float] = (0.0, 1.0)) -> tuple[float | None, str | None]:
    lo, hi = scale
    if lo <= value <= hi:
        return value, None
    return None, f"judge score {value:g} ({source}) is outside [{lo:g}, {hi:g}]"


def parse_judge_score(text: str, scale: tuple[float, float] = (0.0, 1.0)) -> tuple[float | None, str | None]:
    """Parse a judge reply into ``(score, error)``.

    Args:
        text: The judge's raw reply.
        scale: ``(min, max)`` of the judge's scale.

    Returns:
        ``(score, None)`` with ``score`` in ``[min, max]``, or ``(None, reason)`` when no score can
        be read or the number found is outside the scale.
    """
    if not text or not text.strip():
        return None, "empty judge reply"
    found, value = _json_score(text)
    if found:
        if value is None:
            return None, "JSON 'score' is not a number"
        return _checked(value, "JSON", scale)
    match = _SCORE_PATTERN.search(text)
    if match:
        return _checked(float(match.group(1)), "score pattern", scale)
    match = _FRACTION_PATTERN.search(text)
    if match:
        denominator = float(match.group(2))
        if denominator > 0:
            share = float(match.group(1)) / denominator
            if not 0.0 <= share <= 1.0:
                return None, f"judge score {match.group(0)} (fraction) is outside [0, 1] of the scale"
            return scale[0] + share * (scale[1] - scale[0]), None
    return None, "unparseable judge reply: no score found"
