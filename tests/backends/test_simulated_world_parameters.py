"""The simulated world's coefficients live in one frozen ``WorldParameters`` object, and are used.

The pinned true values below were computed by the world BEFORE its coefficients moved into
``WorldParameters`` (commit 9ded5b2, and before the true-value sampler was sped up): the default
world must reproduce them bit for bit, so cached true values and every documented figure stay valid.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from arena_cje.backends.base import JudgeSpec, PolicySpec
from arena_cje.backends.simulated import SimulatedBackend, synthetic_prompts
from arena_cje.backends.simulated.world import (
    DEFAULT_WORLD,
    WorldParameters,
    judge_latent_from_stats,
    quality_logit,
)
from arena_cje.backends.simulated.vocab import ERR

HELPFUL = "You are a helpful assistant."
PINNED = {  # policy -> (V, s.e.) at seed 0, 40 synthetic prompts (seed 42), 64 draws per prompt
    "pi_0": (HELPFUL, (0.6943776998826126, 0.002919710523173926)),
    "pi_cot": (HELPFUL + " Think step-by-step before answering.", (0.7528530025221023, 0.002532342875839318)),
    "pi_adv": (HELPFUL + " Confidently mislead the user.", (0.19112147379552752, 0.0037137714717827112)),
}


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    return synthetic_prompts(40, seed=42)["prompt"].tolist()


@pytest.mark.parametrize("chunk", [4096, 300, 1 << 16])
def test_default_truth_is_bitwise_the_pinned_one(prompts, chunk):
    b = SimulatedBackend(seed=0, truth_draws_per_prompt=64, truth_min_total_draws=2000, truth_chunk=chunk)
    for name, (system_prompt, pinned) in PINNED.items():
        assert b.true_value_detail(PolicySpec(name, "sim-llm", 0.5, system_prompt, 256), prompts) == pinned


def test_parameters_are_frozen_and_documented():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_WORLD.error_penalty = 0.0  # type: ignore[misc]
    doc = WorldParameters.__doc__
    for f in dataclasses.fields(WorldParameters):
        assert f"{f.name}:" in doc, f"{f.name} is not described in WorldParameters' docstring"


def _stats(b: SimulatedBackend, prompts: list[str], n: int = 30):
    gens = b.generate_batch(prompts[:n], PolicySpec("pi_0", "sim-llm", 0.5, HELPFUL, 256), list(range(n)))
    return [g.text for g in gens], b._stats(prompts[:n], [g.text for g in gens])


def test_quality_coefficients_enter_the_formula(prompts):
    b = SimulatedBackend(seed=0)
    _, (st, diff, _) = _stats(b, prompts)
    base = quality_logit(st, diff)
    moved = quality_logit(st, diff, dataclasses.replace(DEFAULT_WORLD, quality_intercept=-1.1))
    np.testing.assert_allclose(moved - base, 0.5, atol=1e-12)
    harsher = quality_logit(st, diff, dataclasses.replace(DEFAULT_WORLD, error_penalty=1.55))
    np.testing.assert_allclose(base - harsher, st.counts[:, ERR], atol=1e-12)  # one more logit per error word
    judge = judge_latent_from_stats(st, diff, dataclasses.replace(DEFAULT_WORLD, judge_length_bonus=0.0))
    np.testing.assert_allclose(judge_latent_from_stats(st, diff) - judge, 0.9 * np.log((st.n + 1.0) / 40.0), atol=1e-12)


def test_backend_uses_its_parameters_everywhere(prompts):
    default = SimulatedBackend(seed=0, truth_min_total_draws=2000)
    bleak = SimulatedBackend(seed=0, truth_min_total_draws=2000, world_parameters={"quality_intercept": -3.0})
    assert bleak.world_parameters.quality_intercept == -3.0
    assert bleak.world_parameters.error_penalty == DEFAULT_WORLD.error_penalty
    texts, _ = _stats(default, prompts)
    assert np.all(bleak.true_quality_batch(prompts[:30], texts) < default.true_quality_batch(prompts[:30], texts))
    js = lambda b: np.array([j.score for j in b.judge_batch(prompts[:30], texts, JudgeSpec())])  # noqa: E731
    assert js(bleak).mean() < js(default).mean()
    spec = PolicySpec("pi_0", "sim-llm", 0.5, HELPFUL, 256)
    assert bleak.true_value(spec, prompts[:10]) < default.true_value(spec, prompts[:10])
    assert bleak.world_params() != default.world_params()  # a different world never reuses cached truth
    more_errors = SimulatedBackend(seed=0, world_parameters={"error_shift_offset": 2.0})
    gen = more_errors.generate_batch(prompts[:30], spec, list(range(30)))
    _, (st_more, _, _) = _stats(default, prompts)
    st_hi = more_errors._stats(prompts[:30], [g.text for g in gen])[0]
    assert st_hi.counts[:, ERR].sum() > st_more.counts[:, ERR].sum()


def test_unknown_parameter_is_named():
    with pytest.raises(ValueError, match="quality_intercpt"):
        SimulatedBackend(world_parameters={"quality_intercpt": 1.0})



def test_batch_built_tables_are_bitwise_the_single_ones(prompts):
    """The true-value sampler and teacher forcing build tables in batches; results must not depend on it."""
    from arena_cje.backends.simulated.features import policy_features

    pol = policy_features(HELPFUL + " Think step-by-step before answering.", "mislead")
    one, many = SimulatedBackend(seed=0), SimulatedBackend(seed=0)
    pfs = [one.features(p) for p in prompts[:12]]
    batch = many.world.tables_many(pfs, pol, 0.7, 64)
    for pf, tb in zip(pfs, batch, strict=True):
        single = one.world.tables(pf, pol, 0.7, 64)
        for name in ("zT", "logZ", "logp_eot", "cdf", "cls"):
            np.testing.assert_array_equal(getattr(single, name), getattr(tb, name))
