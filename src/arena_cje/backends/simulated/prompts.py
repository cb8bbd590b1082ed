"""Synthetic user prompts across topics and difficulties.

Row ``i`` depends only on ``(seed, i)``, so ``synthetic_prompts(k, seed)`` is the first ``k`` rows of
``synthetic_prompts(n, seed)`` for every ``n >= k``.  Prompts are built from the topic's own words
and from the marker words that ``features.prompt_features`` reads, so their topic and difficulty
are recovered from the text alone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from arena_cje.backends.simulated.vocab import TOPIC_WORDS, TOPICS

_EASY = (
    "What is a {a}?",
    "Can you define {a} in simple terms?",
    "Give me a quick list of three facts about {a}.",
    "Name one common example of {a}.",
    "What does {a} mean?",
    "Quick question: how do I pick a good {a}?",
    "Short answer please: is {a} related to {b}?",
)
_MEDIUM = (
    "How does {a} relate to {b}?",
    "What are the main differences between {a} and {b}?",
    "I'm working on something involving {a}. How should I handle the {b}?",
    "Can you tell me how {a} works and when to use {b}?",
    "What should I know about {a} before dealing with {b}?",
    "My friend says {a} matters more than {b}. Is that right?",
    "Help me understand the role of {a} in {b}.",
)
_HARD = (
    "Explain in detail why {a} affects {b}, and derive the implications for {c}.",
    "Compare {a} and {b} step by step, analyze the tradeoffs, and justify which is better when {c} matters.",
    "I have a complex problem: my {a} interacts with the {b} in unexpected ways, especially around {c}. "
    "Walk me through a rigorous analysis and explain why your reasoning is correct.",
    "Why does {a} behave differently from {b} when {c} is involved? Give a thorough explanation of the "
    "mechanism.",
    "Design an approach that uses {a} and {b} together, evaluate it against {c}, and explain the tradeoffs.",
)
_OPENERS = ("", "", "", "Hi! ", "Please help: ", "Hey, ", "Hello. ")
_CLOSERS = ("", "", "", " Thanks!", " Please be specific.", " I'm a beginner.", " This is for a project.")


def _prompt(seed: int, i: int) -> str:
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x50524F, i])
    topic = TOPICS[int(rng.integers(len(TOPICS)))]
    words = TOPIC_WORDS[topic]
    a, b, c = (words[int(k)] for k in rng.choice(len(words), size=3, replace=False))
    tier = rng.choice(3, p=[0.35, 0.4, 0.25])
    templates = (_EASY, _MEDIUM, _HARD)[int(tier)]
    body = templates[int(rng.integers(len(templates)))].format(a=a, b=b, c=c)
    return _OPENERS[int(rng.integers(len(_OPENERS)))] + body + _CLOSERS[int(rng.integers(len(_CLOSERS)))]


def synthetic_prompts(n: int, seed: int) -> pd.DataFrame:
    """``n`` synthetic prompts with columns ``prompt_id`` ("sim_000123") and ``prompt``.

    Args:
        n: Number of prompts (>= 0).
        seed: Pool seed; row ``i`` depends only on ``(seed, i)``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return pd.DataFrame({
        "prompt_id": [f"sim_{i:06d}" for i in range(n)],
        "prompt": [_prompt(seed, i) for i in range(n)],
    })
