"""The simulated world's coefficients: :class:`WorldParameters` (every number of the quality, judge
and prompt-shift formulas, with the formulas in its docstring) and :data:`DEFAULT_WORLD`.

The formulas that read them: :mod:`.quality` (true quality and judge) and :mod:`.world` (the
per-prompt class shifts of the language model).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorldParameters:
    """Every coefficient of the world's quality, judge and prompt-shift formulas, in one place.

    The defaults are the world the tests, docs and cached true values describe (``WORLD_VERSION``
    in ``backend.py``); pass another instance to ``SimulatedBackend(world_parameters=...)`` to
    explore a different world (it is part of the true-value cache key). Formulas, with ``d`` the
    prompt difficulty, ``n`` the number of words, ``n_x`` the count of words of class ``x`` and
    ``sat(x, c) = 1 - exp(-x / c)`` (content saturates while errors accumulate):

    * true-quality logit ``s = quality_intercept + coverage_weight sat(distinct_on, coverage_scale)
      + (reasoning_weight + reasoning_difficulty_weight d) sat(n_rea, reasoning_scale)
      + generic_weight sat(n_gen, generic_scale) - error_penalty n_err - misleading_penalty n_mis
      - filler_penalty n_fil / max(n, 1) - off_topic_penalty n_off / max(n, 1)``;
      ``Y = sigmoid(s + hidden)`` (``hidden`` scaled by the backend's ``hidden_quality_sd``);
    * judge latent ``s_J = judge_compression (s + judge_misleading_blindness n_mis)
      + judge_misleading_bonus sat(n_mis, judge_misleading_scale)
      + judge_length_bonus log((n + 1) / judge_length_reference)``;
    * judge score ``round(judge_grid_steps sigmoid(s_J + noise) ** judge_exponent) / judge_grid_steps``;
    * per-prompt class shifts of the language model: errors ``+ error_difficulty_shift d +
      error_shift_offset`` (and ``+ cot_error_difficulty_shift d`` under step-by-step prompts),
      reasoning ``+ reasoning_difficulty_shift d``; error words' per-prompt logit noise is
      ``error_noise_multiplier`` times wider; word weights within a class are Zipf-like,
      ``-zipf_exponent log(rank)``.

    Attributes:
        quality_intercept: Logit of a response with no content at all (-1.6: quality ~0.17).
        coverage_weight: Value of covering the topic (distinct on-topic words), saturating.
        coverage_scale: Distinct on-topic words at which coverage reaches 63% of its value.
        reasoning_weight: Value of reasoning words on an easy prompt (d = 0).
        reasoning_difficulty_weight: Extra value of reasoning per unit difficulty.
        reasoning_scale: Reasoning words at which their value reaches 63%.
        generic_weight: Value of generic (on-subject but unspecific) words.
        generic_scale: Generic words at which their value reaches 63%.
        error_penalty: Logit cost of each error word (errors accumulate, never saturate).
        misleading_penalty: Logit cost of each misleading (confident-but-wrong) word.
        filler_penalty: Logit cost of the filler-word share of the response.
        off_topic_penalty: Logit cost of the off-topic-word share of the response.
        judge_compression: Slope of the judge's latent in the true logit (< 1: a compressed judge).
        judge_misleading_blindness: Misleading penalty the judge adds back to the true logit
            (equal to ``misleading_penalty``: the judge does not see the harm of misleading words).
        judge_misleading_bonus: Reward the judge gives confident misleading words (saturating).
        judge_misleading_scale: Misleading words at which that reward reaches 63%.
        judge_length_bonus: Judge's preference for long answers (per unit of log length).
        judge_length_reference: Length (words + 1) at which the length bonus is zero.
        judge_exponent: Exponent on the judge's probability (< 1: a generous judge).
        judge_grid_steps: Steps of the reported judge score on [0, 1] (20: a 0.05 grid).
        error_difficulty_shift: Error-class logit shift per unit difficulty (hard prompts, more errors).
        error_shift_offset: Error-class logit shift at difficulty 0.
        reasoning_difficulty_shift: Reasoning-class logit shift per unit difficulty.
        cot_error_difficulty_shift: Error-class shift per unit difficulty under step-by-step
            prompts (negative: reasoning helps most where the prompt is hard).
        error_noise_multiplier: Width of error words' per-prompt logit noise relative to other
            words (prompt-specific hallucinations stay likely at low temperature).
        zipf_exponent: Slope of the word weights in the log of their (seeded) rank within a class.
    """

    quality_intercept: float = -1.6
    coverage_weight: float = 2.4
    coverage_scale: float = 2.5
    reasoning_weight: float = 0.1
    reasoning_difficulty_weight: float = 1.6
    reasoning_scale: float = 2.0
    generic_weight: float = 0.5
    generic_scale: float = 5.0
    error_penalty: float = 0.55
    misleading_penalty: float = 0.9
    filler_penalty: float = 2.0
    off_topic_penalty: float = 1.5
    judge_compression: float = 0.8
    judge_misleading_blindness: float = 0.9
    judge_misleading_bonus: float = 2.4
    judge_misleading_scale: float = 3.0
    judge_length_bonus: float = 0.9
    judge_length_reference: float = 40.0
    judge_exponent: float = 0.7
    judge_grid_steps: int = 20
    error_difficulty_shift: float = 1.2
    error_shift_offset: float = -0.4
    reasoning_difficulty_shift: float = 0.5
    cot_error_difficulty_shift: float = -0.5
    error_noise_multiplier: float = 4.0
    zipf_exponent: float = 0.6


#: The default world (the one every documented figure and cached true value describes).
DEFAULT_WORLD = WorldParameters()
