"""The simulated world's word vocabulary, grouped in token classes.

Every token is one whitespace-free string (punctuation is part of the token), so a response is its
tokens joined by single spaces and tokenisation is ``str.split()``.  The end-of-turn token is not a
word: it never appears in a response text.

Classes (``CLASS_NAMES``): function words, topic content words (on-topic for the prompt's topic,
off-topic otherwise), generic content words, filler, reasoning steps, errors / hallucinations and
confident-but-misleading words.
"""

from __future__ import annotations

import re

import numpy as np

#: Topic name -> content words that a good answer on that topic uses.  These words also identify a
#: prompt's topic (see ``features.prompt_features``).  Every word belongs to exactly one topic.
TOPIC_WORDS: dict[str, tuple[str, ...]] = {
    "programming": ("python", "function", "variable", "loop", "compiler", "recursion", "algorithm", "array",
                    "debugging", "syntax", "library", "runtime", "pointer", "thread", "javascript"),
    "math": ("equation", "integral", "derivative", "matrix", "theorem", "polynomial", "probability", "vector",
             "prime", "limit", "geometry", "algebra", "fraction", "logarithm", "calculus"),
    "cooking": ("recipe", "oven", "flour", "garlic", "simmer", "sauce", "dough", "spice", "butter", "roast",
                "knife", "boil", "vegetables", "bake", "seasoning"),
    "history": ("empire", "revolution", "treaty", "dynasty", "century", "war", "king", "colonial", "medieval",
                "republic", "archive", "monarchy", "battle", "ancient", "civilization"),
    "health": ("sleep", "exercise", "vitamin", "symptoms", "doctor", "blood", "immune", "diet", "heart",
               "stress", "hydration", "muscle", "calories", "therapy", "nutrition"),
    "travel": ("flight", "passport", "hotel", "itinerary", "luggage", "visa", "train", "beach", "museum",
               "destination", "airport", "tourist", "backpacking", "booking", "trip"),
    "finance": ("budget", "interest", "loan", "stock", "savings", "inflation", "tax", "mortgage", "portfolio",
                "dividend", "credit", "retirement", "investment", "bond", "expenses"),
    "physics": ("energy", "momentum", "gravity", "quantum", "velocity", "friction", "photon", "entropy", "force",
                "mass", "wavelength", "relativity", "electron", "magnetic", "acceleration"),
    "writing": ("essay", "paragraph", "story", "character", "plot", "poem", "draft", "narrative", "dialogue",
                "metaphor", "outline", "grammar", "thesis", "chapter", "tone"),
    "music": ("melody", "chord", "rhythm", "guitar", "piano", "tempo", "harmony", "song", "lyrics", "scale",
              "album", "drum", "concert", "genre", "composer"),
    "law": ("contract", "court", "lawyer", "lawsuit", "liability", "statute", "copyright", "tenant", "rights",
            "plaintiff", "evidence", "regulation", "clause", "verdict", "legal"),
    "biology": ("cell", "gene", "evolution", "species", "dna", "enzyme", "bacteria", "organism",
                "photosynthesis", "mitochondria", "ecosystem", "neuron", "mutation", "virus", "membrane"),
}
TOPICS: tuple[str, ...] = tuple(TOPIC_WORDS)

FUNCTION_WORDS = ("the", "a", "an", "of", "to", "and", "is", "in", "it", "that", "for", "this", "with", "as",
                  "can", "be", "on", "you", "your", "are", "by", "or", "when", "if", "not", "use", "also",
                  "more", "will", "has")
GENERIC_WORDS = ("example", "important", "approach", "method", "result", "answer", "process", "system",
                 "value", "idea", "detail", "key", "point", "option", "part", "way", "case", "reason",
                 "solution", "problem", "data", "information", "model", "level", "change", "effect",
                 "structure", "basic", "general", "specific")
FILLER_WORDS = ("basically", "honestly", "really", "just", "actually", "well,", "like,", "literally",
                "certainly!", "great", "question!", "of-course", "anyway,", "kind", "sort", "stuff", "things",
                "totally", "pretty", "very", "quite", "um,", "perhaps", "maybe", "somewhat", "hopefully",
                "you-know", "overall,")
REASONING_WORDS = ("first,", "second,", "third,", "then", "therefore,", "because", "next,", "thus", "hence",
                   "step", "since", "consequently,", "finally,", "which", "implies", "means", "given",
                   "assume", "check:", "so")
ERROR_WORDS = ("incorrectly", "wrongly", "contradicts", "miscalculated", "nonexistent", "fabricated",
               "invented", "misquoted", "outdated", "1887", "42%", "approximately-zero", "reversed",
               "unrelated", "mistaken", "falsely", "bogus", "erroneous", "confused", "typo")
MISLEADING_WORDS = ("absolutely", "guaranteed", "undeniably", "proven", "scientifically", "definitively",
                    "experts", "unanimously", "100%", "always", "never", "trust", "certainty", "flawless",
                    "indisputable")

#: Response-relative token classes.  TOPIC words are ON or OFF depending on the prompt's topic.
FUNC, ON, OFF, GEN, FIL, REA, ERR, MIS = range(8)
CLASS_NAMES: tuple[str, ...] = ("function", "on_topic", "off_topic", "generic", "filler", "reasoning",
                                "error", "misleading")
N_CLASSES = len(CLASS_NAMES)

#: Word vocabulary (EOT excluded).  Index order is fixed: changing it changes the world.
WORDS: tuple[str, ...] = (
    FUNCTION_WORDS
    + tuple(w for t in TOPICS for w in TOPIC_WORDS[t])
    + GENERIC_WORDS + FILLER_WORDS + REASONING_WORDS + ERROR_WORDS + MISLEADING_WORDS
)
N_WORDS = len(WORDS)
WORD_INDEX: dict[str, int] = {w: i for i, w in enumerate(WORDS)}
if len(WORD_INDEX) != N_WORDS or any(re.search(r"\s", w) for w in WORDS):  # pragma: no cover - static data
    raise RuntimeError("simulated vocabulary words must be unique and whitespace-free")

#: Topic of each word (-1 for non-topic words) and its topic-independent class (ON for topic words).
WORD_TOPIC = np.full(N_WORDS, -1, dtype=np.int64)
WORD_BASE_CLASS = np.empty(N_WORDS, dtype=np.int64)
_pos = 0
for _cls, _group in ((FUNC, FUNCTION_WORDS),):
    WORD_BASE_CLASS[_pos:_pos + len(_group)] = _cls
    _pos += len(_group)
for _k, _t in enumerate(TOPICS):
    n = len(TOPIC_WORDS[_t])
    WORD_BASE_CLASS[_pos:_pos + n] = ON
    WORD_TOPIC[_pos:_pos + n] = _k
    _pos += n
for _cls, _group in ((GEN, GENERIC_WORDS), (FIL, FILLER_WORDS), (REA, REASONING_WORDS), (ERR, ERROR_WORDS),
                     (MIS, MISLEADING_WORDS)):
    WORD_BASE_CLASS[_pos:_pos + len(_group)] = _cls
    _pos += len(_group)
del _pos, _cls, _group, _k, _t, n

#: Topic -> index of its first word in WORDS (its words are contiguous).
TOPIC_OFFSET = np.array([int(np.flatnonzero(WORD_TOPIC == k)[0]) for k in range(len(TOPICS))])
TOPIC_SIZE = len(TOPIC_WORDS[TOPICS[0]])
if any(len(v) != TOPIC_SIZE for v in TOPIC_WORDS.values()):  # pragma: no cover - static data
    raise RuntimeError("every topic needs the same number of words")


def word_classes(topic: int) -> np.ndarray:
    """Class of every vocabulary word relative to a prompt of topic ``topic`` (ON vs OFF)."""
    cls = WORD_BASE_CLASS.copy()
    cls[(WORD_TOPIC >= 0) & (WORD_TOPIC != topic)] = OFF
    return cls
