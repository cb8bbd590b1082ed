"""The local transformers backend on the real SmolLM2-135M-Instruct model (CPU, offline).

Truth used here: an independent reference that scores a response one token at a time (a fresh
forward pass over ``prefix + response[:j]`` for every j, no padding, no batching, no
``logits_to_keep``) and applies ``scipy.special.log_softmax(z / T)``. The backend's sampled and
teacher-forced log-probs must agree with it and with each other.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")
scipy_special = pytest.importorskip("scipy.special")

from arena_cje.backends import make_backend  # noqa: E402
from arena_cje.backends.base import JudgeSpec, PolicySpec  # noqa: E402

lt = pytest.importorskip("arena_cje.backends.local_transformers")

try:
    lt.shipped_gguf_path()
except FileNotFoundError as exc:  # the optional extra is not installed
    pytest.skip(str(exc), allow_module_level=True)

pytestmark = pytest.mark.slow

PROMPTS = [
    "What is the capital of France? Answer in one sentence.",
    "Reply with one word: what colour is the sky?",
    "Name a fruit.",
    "Hi!",
]
SYSTEM = "You are a helpful assistant."
PI_0 = PolicySpec("pi_0", temperature=0.7, system_prompt=SYSTEM, max_tokens=32)
PI_HOT = PolicySpec("pi_hot", temperature=0.9, system_prompt=SYSTEM, max_tokens=32)


@pytest.fixture(scope="module")
def backend():
    # The default cache folder is shared with other runs: the GGUF is converted only once per machine.
    return make_backend("local_transformers", token_store=None, progress=False, batch_size=8)


@pytest.fixture(scope="module")
def generations(backend):
    return backend.generate_batch(PROMPTS, PI_HOT, [11, 12, 13, 14])


def reference_token_logprobs(backend, prefix_ids: list[int], response_ids: list[int], temperature: float) -> np.ndarray:
    """log_softmax(z/T)[y_j] for each response token, one unpadded forward pass per position."""
    out = []
    with torch.inference_mode():
        for j, token in enumerate(response_ids):
            ids = torch.tensor([prefix_ids + response_ids[:j]])
            z = backend.model(input_ids=ids).logits[0, -1].double().numpy()
            out.append(scipy_special.log_softmax(z / temperature)[token])
    return np.array(out)


def test_sampled_logprob_equals_teacher_forced_logprob(backend, generations):
    forced = backend.teacher_force_batch(PROMPTS, [g.text for g in generations], PI_HOT)
    for gen, tf in zip(generations, forced, strict=True):
        assert gen.error is None and tf.error is None
        assert gen.logprob is not None and tf.logprob is not None
        assert tf.n_tokens == gen.n_tokens == len(gen.token_logprobs)
        assert tf.logprob == pytest.approx(gen.logprob, abs=1e-4)
        # The sampler's own (KV-cache) log-probs, not just the reported scoring pass, agree too.
        assert tf.logprob == pytest.approx(gen.usage["sampling_logprob"], abs=1e-4)
        assert gen.usage["sampling_max_token_gap"] < 1e-4
        assert math.isclose(sum(gen.token_logprobs), gen.logprob)
    # At least one response ended by itself, so the end-of-turn token was part of the check.
    assert any(g.usage["truncated"] == 0.0 for g in generations)


def test_generation_logprobs_match_reference_including_end_of_turn(backend, generations):
    gen = min((g for g in generations if g.usage["truncated"] == 0.0), key=lambda g: g.n_tokens)
    prompt = PROMPTS[generations.index(gen)]
    tokens = backend.response_tokens(gen.text)
    ref = reference_token_logprobs(backend, backend.prompt_ids(prompt, SYSTEM), list(tokens.ids) + [backend.eot_id], PI_HOT.temperature)
    np.testing.assert_allclose(gen.token_logprobs, ref, atol=1e-4)


def test_generation_is_reproducible_per_item_seed_regardless_of_batch(backend, generations):
    alone = backend.generate(PROMPTS[0], PI_HOT, 11)
    assert alone.text == generations[0].text
    assert alone.logprob == pytest.approx(generations[0].logprob, abs=1e-4)
    other_seed = backend.generate(PROMPTS[0], PI_HOT, 99)
    assert other_seed.text != alone.text


def test_clone_policy_gives_weights_of_exactly_one(backend, generations):
    clone = PolicySpec("pi_clone", temperature=PI_HOT.temperature, system_prompt=SYSTEM, max_tokens=PI_HOT.max_tokens)
    responses = [g.text for g in generations]
    base = backend.teacher_force_batch(PROMPTS, responses, PI_HOT)
    cloned = backend.teacher_force_batch(PROMPTS, responses, clone)
    weights = np.exp(np.array([c.logprob for c in cloned]) - np.array([b.logprob for b in base]))
    assert np.array_equal(weights, np.ones(len(PROMPTS)))


def test_temperature_change_follows_log_softmax_of_scaled_logits(backend, generations):
    prompt, response = PROMPTS[0], generations[0].text
    tokens = list(backend.response_tokens(response).ids) + [backend.eot_id]
    prefix = backend.prompt_ids(prompt, SYSTEM)
    with torch.inference_mode():
        ids = torch.tensor([prefix + tokens])
        z = backend.model(input_ids=ids).logits[0, len(prefix) - 1 : -1].double().numpy()  # raw logits, T=1
    targets = np.array(tokens)
    results = {}
    for temperature in (0.4, 1.0, 1.7):
        policy = PolicySpec("pi_t", temperature=temperature, system_prompt=SYSTEM)
        results[temperature] = backend.teacher_force(prompt, response, policy).logprob
        predicted = scipy_special.log_softmax(z / temperature, axis=-1)[np.arange(len(targets)), targets].sum()
        assert results[temperature] == pytest.approx(predicted, abs=1e-4)
    assert len({round(v, 3) for v in results.values()}) == 3


def test_prompt_ending_in_punctuation_is_scored_on_exactly_the_response_tokens(backend):
    prompt, response = "What is 2+2?", "Four. It is simple arithmetic."
    result = backend.teacher_force(prompt, response, PI_0)
    response_ids = backend.tokenizer(response, add_special_tokens=False)["input_ids"]
    assert result.n_tokens == len(response_ids) + 1  # + end of turn
    ref = reference_token_logprobs(backend, backend.prompt_ids(prompt, SYSTEM), response_ids + [backend.eot_id], PI_0.temperature)
    assert result.logprob == pytest.approx(ref.sum(), abs=1e-4)


def test_scoring_concatenates_ids_where_joint_tokenisation_would_merge(backend):
    encode = lambda text: backend.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prefix, response = encode("Say it: Hel"), encode("lo there.")
    assert encode("Say it: Hello there.") != prefix + response  # a joint encoding merges "Hel"+"lo"
    scored = backend.score_ids([prefix], [response], 0.8)[0]
    np.testing.assert_allclose(scored, reference_token_logprobs(backend, prefix, response, 0.8), atol=1e-5)


def test_batch_of_eight_with_padding_equals_batch_of_one(backend):
    prompts = [f"Question {i}: " + "tell me something interesting. " * (i % 4 + 1) for i in range(8)]
    responses = ["Sure.", "Honey never spoils.", "Octopuses have three hearts and blue blood.", "No.",
                 "The Eiffel Tower grows in summer.", "Bananas are berries.", "Yes!", "Water expands when it freezes."]
    backend.batch_size = 8
    batched = backend.teacher_force_batch(prompts, responses, PI_0)
    backend.batch_size = 1
    try:
        single = backend.teacher_force_batch(prompts, responses, PI_0)
    finally:
        backend.batch_size = 8
    np.testing.assert_allclose([b.logprob for b in batched], [s.logprob for s in single], atol=1e-4)
    assert [b.n_tokens for b in batched] == [s.n_tokens for s in single]


def test_truncated_generation_is_scored_as_the_sampled_prefix(backend):
    short = PolicySpec("pi_short", temperature=1.0, system_prompt=SYSTEM, max_tokens=4)
    gen = backend.generate("Tell me a long story about a dragon.", short, 5)
    assert gen.usage["truncated"] == 1.0 and gen.n_tokens == 4
    tf = backend.teacher_force("Tell me a long story about a dragon.", gen.text, short)
    assert tf.n_tokens == 4 and tf.logprob == pytest.approx(gen.logprob, abs=1e-4)


def test_recorded_noncanonical_ids_are_scored_and_ambiguity_is_an_error():
    b = make_backend("local_transformers", token_store=None, progress=False)
    text = "Hello"
    noncanonical = b.tokenizer("Hel", add_special_tokens=False)["input_ids"] + b.tokenizer("lo", add_special_tokens=False)["input_ids"]
    canonical = b.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert b.decode(noncanonical) == text and noncanonical != canonical
    assert b.teacher_force("Hi", text, PI_0).n_tokens == len(canonical) + 1
    b.token_store.add(b.model_key, text, noncanonical, True)
    scored = b.teacher_force("Hi", text, PI_0)
    ref = reference_token_logprobs(b, b.prompt_ids("Hi", SYSTEM), noncanonical + [b.eot_id], PI_0.temperature)
    assert scored.n_tokens == len(noncanonical) + 1 and scored.logprob == pytest.approx(ref.sum(), abs=1e-4)
    assert scored.usage["recorded_token_ids"] == 1.0
    b.token_store.add(b.model_key, text, canonical, True)
    ambiguous = b.teacher_force("Hi", text, PI_0)
    assert ambiguous.logprob is None and "ambiguous" in ambiguous.error


def test_failures_are_recorded_not_defaulted(backend):
    cold = PolicySpec("pi_cold", temperature=0.0, system_prompt=SYSTEM)
    assert backend.teacher_force("Hi", "Hello", cold).logprob is None
    assert backend.generate("Hi", cold, 1).logprob is None
    backend.max_prompt_tokens, limit = 5, backend.max_prompt_tokens
    try:
        too_long = backend.teacher_force("Hi", "Hello", PI_0)
    finally:
        backend.max_prompt_tokens = limit
    assert too_long.logprob is None and "max_prompt_tokens" in too_long.error


def test_judge_is_greedy_and_parsed_by_the_shared_parser(backend, generations):
    judge = JudgeSpec(temperature=0.0, max_tokens=16, rubric='Rate the response from 0 to 1. Answer with JSON only: {"score": <number>}')
    prompts, responses = PROMPTS[:2], [g.text for g in generations[:2]]
    first = backend.judge_batch(prompts, responses, judge)
    again = backend.judge_batch(prompts, responses, judge)
    assert [j.raw for j in first] == [j.raw for j in again]  # T=0: deterministic
    for j in first:
        assert j.raw.startswith(backend.judge_prefill)
        if j.score is None:
            assert j.error
        else:
            assert 0.0 <= j.score <= 1.0 and j.error is None
