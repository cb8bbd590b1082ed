"""Deterministic features of any prompt text and of a policy's system prompt.

The same functions serve synthetic prompts and real Chatbot Arena prompts: a prompt's topic is the
topic whose words (and hint words) it mentions most, falling back to a hash of the text; its
difficulty and the response length it calls for come from marker words, its length and a hashed
jitter.  Nothing here is random in the stateful sense: equal texts give equal features.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

import numpy as np

from arena_cje.backends.simulated.vocab import (
    ERR,
    FIL,
    MIS,
    N_CLASSES,
    ON,
    REA,
    TOPIC_WORDS,
    TOPICS,
)


#: Extra words (beyond the topic's content words) that point a prompt to a topic.
TOPIC_HINTS: dict[str, tuple[str, ...]] = {
    "programming": ("code", "bug", "sql", "java", "script", "api", "program", "software", "html", "css", "rust",
                    "coding", "developer", "database", "git"),
    "math": ("solve", "calculate", "number", "sum", "numbers", "statistics", "mathematical", "mathematics",
             "percent", "graph"),
    "cooking": ("cook", "food", "dish", "meal", "chicken", "kitchen", "ingredients", "pasta", "baking"),
    "history": ("history", "historical", "president", "wwii", "roman", "empires", "kingdom", "historian"),
    "health": ("health", "pain", "medicine", "weight", "body", "disease", "mental", "workout", "fitness"),
    "travel": ("travel", "visit", "city", "country", "vacation", "tour", "holiday", "japan", "paris"),
    "finance": ("money", "invest", "bank", "price", "pay", "financial", "stocks", "crypto", "salary"),
    "physics": ("physics", "light", "speed", "particle", "universe", "gravitational", "atoms", "atom"),
    "writing": ("write", "email", "letter", "article", "book", "rewrite", "summarize", "novel", "essays"),
    "music": ("music", "band", "sing", "singer", "songs", "musical", "instrument", "notes"),
    "law": ("law", "illegal", "sue", "police", "lawful", "laws", "attorney", "crime", "landlord"),
    "biology": ("biology", "animal", "plant", "life", "cells", "genes", "animals", "plants", "brain"),
}
_TOPIC_OF_WORD: dict[str, int] = {}
for _k, _t in enumerate(TOPICS):
    for _w in TOPIC_WORDS[_t] + TOPIC_HINTS[_t]:
        _w = _w.strip(".,!?:").lower()
        if _TOPIC_OF_WORD.setdefault(_w, _k) != _k:  # pragma: no cover - static data
            raise RuntimeError(f"topic word {_w!r} belongs to two topics")

#: Markers of a difficult request (reasoning, analysis) and of an easy one (lookup, definition).
HARD_MARKERS = frozenset({"explain", "why", "derive", "prove", "analyze", "analyse", "analysis", "compare",
                          "tradeoffs", "rigorous", "rigorously", "justify", "complex", "mechanism",
                          "implications", "thorough", "optimize", "evaluate", "design", "debug"})
EASY_MARKERS = frozenset({"define", "list", "name", "quick", "simple", "mean", "example", "hi", "hello",
                          "translate", "short"})
#: Markers of the response length the user asks for.
LONG_MARKERS = frozenset({"detail", "detailed", "thorough", "explain", "walk", "essay", "step", "steps",
                          "comprehensive", "elaborate", "story"})
SHORT_MARKERS = frozenset({"quick", "short", "brief", "briefly", "simple", "name", "one", "tldr", "yes"})

_WORD_RE = re.compile(r"[a-z0-9%+#]+")


def hash64(*parts: object) -> int:
    """A stable 64-bit hash of the parts' ``repr`` (blake2b; unlike ``hash()`` not salted per process)."""
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(repr(p).encode("utf-8", "surrogatepass"))
        h.update(b"\x1f")
    return int.from_bytes(h.digest(), "little")


def hash_unit(*parts: object) -> float:
    """A stable number in the open interval (0, 1) derived from ``hash64(*parts)``."""
    return ((hash64(*parts) >> 11) + 0.5) / float(1 << 53)


@dataclass(frozen=True)
class PromptFeatures:
    """What the simulated world sees of a prompt.

    Attributes:
        topic: Index into ``vocab.TOPICS``.
        difficulty: In (0, 1); raises error tokens and the value of reasoning.
        target_length: Response length (in tokens) around which end of turn becomes likely.
        n_words: Number of lower-cased word tokens in the prompt.
        key: 64-bit hash of the text (seeds the prompt's own logit perturbation and sampling keys).
    """

    topic: int
    difficulty: float
    target_length: float
    n_words: int
    key: int


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def topic_hits(text: str) -> np.ndarray:
    """Number of topic content/hint words of each topic in ``text`` (lower-cased word tokens)."""
    hits = np.zeros(len(TOPICS))
    for w in _WORD_RE.findall(text.lower()):
        k = _TOPIC_OF_WORD.get(w)
        if k is not None:
            hits[k] += 1
    return hits


def prompt_features(text: str) -> PromptFeatures:
    """Features of any prompt text.

    ``topic = argmax_k hits_k`` (first maximum), with ``hits_k`` the number of prompt words that are
    topic-``k`` content or hint words; with no hit, ``topic = hash(text) mod K``.
    ``difficulty = sigmoid(-0.6 + 0.9 hard - 0.9 easy + 0.5 log(n/20) + 0.6 j1)`` and
    ``target_length = 25 + 110 sigmoid(-0.3 + 0.8 long - 0.9 short + 0.4 log(n/20) + 0.6 j2)``, where
    ``hard, easy, long, short`` count marker words (capped at 3), ``n`` is the word count and
    ``j1, j2`` are hashed jitters uniform on (-1, 1).
    """
    words = _WORD_RE.findall(text.lower())
    n = len(words)
    key = hash64("prompt", text)
    hits = topic_hits(text)
    topic = int(np.argmax(hits)) if hits.max() > 0 else key % len(TOPICS)
    wset = words  # counts repeated markers: "why ... why" is a harder ask
    hard = min(3, sum(w in HARD_MARKERS for w in wset))
    easy = min(3, sum(w in EASY_MARKERS for w in wset))
    long_ = min(3, sum(w in LONG_MARKERS for w in wset))
    short = min(3, sum(w in SHORT_MARKERS for w in wset))
    log_len = math.log(max(n, 1) / 20.0)
    j1 = 2.0 * hash_unit("difficulty", text) - 1.0
    j2 = 2.0 * hash_unit("length", text) - 1.0
    difficulty = _sigmoid(-0.6 + 0.9 * hard - 0.9 * easy + 0.5 * log_len + 0.6 * j1)
    target_length = 25.0 + 110.0 * _sigmoid(-0.3 + 0.8 * long_ - 0.9 * short + 0.4 * log_len + 0.6 * j2)
    return PromptFeatures(topic=topic, difficulty=difficulty, target_length=target_length, n_words=n, key=key)


@dataclass(frozen=True)
class PolicyFeatures:
    """What the simulated world sees of a system prompt.

    Attributes:
        class_shift: Additive shift of each token class's logit (length ``N_CLASSES``).
        length_mult: Multiplies the prompt's target length.
        cot: System prompt asks for step-by-step reasoning.
        concise: System prompt asks for brevity.
        adversarial: System prompt contains the adversarial keyword.
    """

    class_shift: tuple[float, ...]
    length_mult: float
    cot: bool
    concise: bool
    adversarial: bool


COT_MARKERS = ("step-by-step", "step by step", "think carefully", "show your reasoning", "reason through")
CONCISE_MARKERS = ("concise", "brief", "2-3 sentences", "short answer", "one sentence", "be short")
DETAILED_MARKERS = ("detailed", "thorough", "in depth", "in-depth", "comprehensive")


def policy_features(system_prompt: str, adversarial_keyword: str) -> PolicyFeatures:
    """Features of a system prompt (case-insensitive substring markers).

    Step-by-step prompts raise reasoning (+0.7) and lower errors (-0.3) and length x1.25; concise
    prompts lower filler (-1.0) and set length x0.7; detailed prompts set length
    x1.5; the adversarial keyword raises misleading (+5.5) and error (+0.5) tokens and lowers on-topic
    content (-0.3).
    """
    sp = system_prompt.lower()
    shift = np.zeros(N_CLASSES)
    mult = 1.0
    cot = any(m in sp for m in COT_MARKERS)
    concise = any(m in sp for m in CONCISE_MARKERS)
    adversarial = bool(adversarial_keyword) and adversarial_keyword.lower() in sp
    if cot:
        shift[REA] += 0.7
        shift[ERR] -= 0.3
        mult *= 1.25
    if concise:
        shift[FIL] -= 1.0
        mult *= 0.7
    if any(m in sp for m in DETAILED_MARKERS):
        mult *= 1.5
    if adversarial:
        shift[MIS] += 5.5
        shift[ERR] += 0.5
        shift[ON] -= 0.3
    return PolicyFeatures(class_shift=tuple(float(x) for x in shift), length_mult=mult, cot=cot,
                          concise=concise, adversarial=adversarial)
