"""The true quality of a simulated response and what the judge makes of it.

A response is reduced to counts of its words by class (:func:`text_stats`); the true-quality logit
(:func:`quality_logit`), the true quality ``Y = sigmoid(s + hidden)`` and the judge's latent and
gridded score are closed-form functions of those counts and the prompt's difficulty, with every
coefficient in :class:`~arena_cje.backends.simulated.parameters.WorldParameters` (the formulas are
in its docstring and in each function's).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from arena_cje.backends.simulated.parameters import DEFAULT_WORLD, WorldParameters
from arena_cje.backends.simulated.vocab import (
    ERR,
    FIL,
    GEN,
    MIS,
    N_CLASSES,
    N_WORDS,
    OFF,
    ON,
    REA,
    TOPIC_OFFSET,
    TOPIC_SIZE,
    WORD_BASE_CLASS,
)

UNKNOWN = N_CLASSES        # class of an out-of-vocabulary word in quality/judge features
OOV_ID = N_WORDS           # token id used for out-of-vocabulary words in quality/judge features


@dataclass(frozen=True)
class TextStats:
    """Per-response counts used by the true quality and the judge (arrays over responses).

    Attributes:
        n: Number of words (out-of-vocabulary words included).
        counts: (B, N_CLASSES + 1) counts per class (last column: out-of-vocabulary words).
        n_on_distinct: Number of distinct on-topic words.
    """

    n: np.ndarray
    counts: np.ndarray
    n_on_distinct: np.ndarray


def text_stats(tokens: np.ndarray, length: np.ndarray, topics: np.ndarray) -> TextStats:
    """Counts from a padded token matrix (entries beyond ``length`` ignored, ``OOV_ID`` = unknown word).

    Args:
        tokens: (B, Tm) token ids.
        length: (B,) number of words per row.
        topics: (B,) prompt topic per row.
    """
    B, Tm = tokens.shape
    r, j = np.nonzero(np.arange(Tm)[None, :] < length[:, None])
    tok = tokens[r, j].astype(np.int64)
    base = np.append(WORD_BASE_CLASS, UNKNOWN)[tok]
    first = int(TOPIC_OFFSET[0])  # topic words are contiguous blocks of TOPIC_SIZE
    is_topic = base == ON
    local = (tok - first) % TOPIC_SIZE
    word_topic = (tok - first) // TOPIC_SIZE
    on = is_topic & (word_topic == topics[r])
    cls = np.where(is_topic & ~on, OFF, base)
    nc = N_CLASSES + 1
    counts = np.bincount(r * nc + cls, minlength=B * nc).reshape(B, nc)
    seen = np.bincount(r[on] * TOPIC_SIZE + local[on], minlength=B * TOPIC_SIZE).reshape(B, TOPIC_SIZE) > 0
    return TextStats(n=length.astype(np.int64), counts=counts, n_on_distinct=seen.sum(axis=1))


def _sat(x: np.ndarray, scale: float) -> np.ndarray:
    return 1.0 - np.exp(-x / scale)


def quality_logit(st: TextStats, difficulty: np.ndarray, params: WorldParameters = DEFAULT_WORLD) -> np.ndarray:
    """The logit ``s`` of the true quality (see :func:`true_quality_from_stats`)."""
    p = params
    c = st.counts.astype(np.float64)
    n = np.maximum(st.n, 1).astype(np.float64)
    return (p.quality_intercept + p.coverage_weight * _sat(st.n_on_distinct, p.coverage_scale)
            + (p.reasoning_weight + p.reasoning_difficulty_weight * difficulty) * _sat(c[:, REA], p.reasoning_scale)
            + p.generic_weight * _sat(c[:, GEN], p.generic_scale) - p.error_penalty * c[:, ERR]
            - p.misleading_penalty * c[:, MIS] - p.filler_penalty * c[:, FIL] / n - p.off_topic_penalty * c[:, OFF] / n)


def true_quality_from_stats(st: TextStats, difficulty: np.ndarray, hidden: np.ndarray | float = 0.0,
                            params: WorldParameters = DEFAULT_WORLD) -> np.ndarray:
    """True quality ``Y = sigmoid(s + hidden)`` (``hidden``: what the judge cannot see) with, at the
    default :class:`WorldParameters`,

    ``s = -1.6 + 2.4 cov + (0.1 + 1.6 d) rea + 0.5 gen - 0.55 n_err - 0.9 n_mis - 2.0 f_fil
    - 1.5 f_off``, where ``cov = 1 - exp(-distinct_on / 2.5)``, ``rea = 1 - exp(-n_rea / 2)``,
    ``gen = 1 - exp(-n_gen / 5)``, ``f_x = n_x / max(n, 1)`` and ``d`` the prompt difficulty.
    Content saturates while errors accumulate, so length alone is roughly neutral.
    """
    return 1.0 / (1.0 + np.exp(-(quality_logit(st, difficulty, params) + hidden)))


def judge_latent_from_stats(st: TextStats, difficulty: np.ndarray, params: WorldParameters = DEFAULT_WORLD) -> np.ndarray:
    """The judge's perceived quality (before noise), at the default :class:`WorldParameters`
    ``s_J = 0.8 (s + 0.9 n_mis) + 2.4 (1 - exp(-n_mis / 3)) + 0.9 log((n + 1) / 40)``.

    Apart from misleading words the judge sees what the truth sees, compressed (0.8), plus a
    length bonus (last term): given the response length, the judge-to-oracle relation is the
    same for every ordinary policy, so a calibration on judge score *and length* transports while
    one on the judge score alone does not (policies differ in length). Confident misleading words
    are not penalised but rewarded: an adversarial policy breaks transport, which only an oracle
    probe of its own responses can reveal.
    """
    p = params
    c = st.counts.astype(np.float64)
    return (p.judge_compression * (quality_logit(st, difficulty, p) + p.judge_misleading_blindness * c[:, MIS])
            + p.judge_misleading_bonus * _sat(c[:, MIS], p.judge_misleading_scale)
            + p.judge_length_bonus * np.log((st.n + 1.0) / p.judge_length_reference))


def judge_score_from_latent(latent: np.ndarray, noise: np.ndarray, params: WorldParameters = DEFAULT_WORLD) -> np.ndarray:
    """Judge score ``round_0.05( sigmoid(latent + noise) ** 0.7 )`` at the default parameters
    (``judge_exponent``, ``judge_grid_steps``): monotone, generous, gridded."""
    steps = float(params.judge_grid_steps)
    prob = 1.0 / (1.0 + np.exp(-(latent + noise)))
    return np.round(steps * prob ** params.judge_exponent) / steps
