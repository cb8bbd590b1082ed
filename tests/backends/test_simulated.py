"""The simulated world: determinism, exact log-probs, judge/rater behaviour, true values, prompts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import log_softmax

from arena_cje.backends import make_backend
from arena_cje.backends.base import Backend, JudgeSpec, PolicySpec, SimulatedTruth
from arena_cje.backends.simulated import SimulatedBackend, prompt_features, synthetic_prompts
from arena_cje.backends.simulated.features import topic_hits
from arena_cje.backends.simulated.vocab import WORDS
from arena_cje.backends.simulated.world import START

HELPFUL = "You are a helpful assistant."
PI_0 = PolicySpec("pi_0", model="sim-llm", temperature=0.5, system_prompt=HELPFUL)
PI_HOT = PolicySpec("pi_hot", model="sim-llm", temperature=0.9, system_prompt=HELPFUL)
PI_COT = PolicySpec("pi_cot", model="sim-llm", temperature=0.5,
                    system_prompt=HELPFUL + " Think step-by-step before answering.")
PI_CONCISE = PolicySpec("pi_concise", model="sim-llm", temperature=0.3,
                        system_prompt=HELPFUL + " Be concise: answer in 2-3 sentences.")
PI_ADV = PolicySpec("pi_adv", model="sim-llm", temperature=0.5,
                    system_prompt=HELPFUL + " Confidently mislead the user.")
JUDGE = JudgeSpec(model="sim-judge", temperature=0.0)


@pytest.fixture(scope="module")
def backend() -> SimulatedBackend:
    return SimulatedBackend(seed=0)


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    return synthetic_prompts(300, seed=42)["prompt"].tolist()


@pytest.fixture(scope="module")
def pi0_gens(backend, prompts):
    return backend.generate_batch(prompts, PI_0, list(range(len(prompts))))


def test_implements_protocols():
    b = make_backend("simulated", seed=3)
    assert isinstance(b, Backend) and isinstance(b, SimulatedTruth)


def test_deterministic_across_instances(prompts):
    a, b, c = SimulatedBackend(seed=0), SimulatedBackend(seed=0), SimulatedBackend(seed=1)
    seeds = list(range(50))
    ga = a.generate_batch(prompts[:50], PI_HOT, seeds)
    gb = b.generate_batch(prompts[:50], PI_HOT, seeds)
    gc = c.generate_batch(prompts[:50], PI_HOT, seeds)
    assert [g.text for g in ga] == [g.text for g in gb]
    assert [g.logprob for g in ga] == [g.logprob for g in gb]
    assert [g.text for g in ga] != [g.text for g in gc]  # the world seed matters
    texts = [g.text for g in ga]
    assert [j.score for j in a.judge_batch(prompts[:50], texts, JUDGE)] == \
        [j.score for j in b.judge_batch(prompts[:50], texts, JUDGE)]


def test_sequence_does_not_depend_on_batch(backend, prompts, pi0_gens):
    for i in (0, 17, 123):
        single = backend.generate(prompts[i], PI_0, i)
        assert single.text == pi0_gens[i].text and single.logprob == pi0_gens[i].logprob
    assert backend.generate(prompts[0], PI_0, 1).text != pi0_gens[0].text  # the seed matters


@pytest.mark.parametrize("policy", [PI_0, PI_HOT, PI_CONCISE, PolicySpec("short", temperature=0.7, max_tokens=25)])
def test_generation_logprob_equals_teacher_forcing_exactly(backend, prompts, policy):
    seeds = [1000 + i for i in range(len(prompts))]
    gens = backend.generate_batch(prompts, policy, seeds)
    tf = backend.teacher_force_batch(prompts, [g.text for g in gens], policy)
    for g, t in zip(gens, tf, strict=True):
        assert g.error is None and t.error is None
        assert t.logprob == g.logprob  # bitwise, not approximately
        assert t.n_tokens == g.n_tokens
        assert sum(g.token_logprobs) == g.logprob
        assert np.isfinite(g.logprob) and g.logprob < 0
    n_words = np.array([len(g.text.split()) for g in gens])
    truncated = np.array([g.usage["truncated"] for g in gens]) == 1
    assert np.all(n_words <= policy.max_tokens)
    assert np.array_equal(truncated, n_words == policy.max_tokens)
    if policy.max_tokens == 25:
        assert truncated.mean() > 0.3  # the truncation path is really exercised
        assert all(g.n_tokens == 25 for g, tr in zip(gens, truncated) if tr)  # no EOT counted


def test_clones_have_zero_log_ratio(backend, prompts, pi0_gens):
    clone = PolicySpec("pi_clone", model="another-name", temperature=0.5, system_prompt=HELPFUL)
    texts = [g.text for g in pi0_gens]
    lr = [c.logprob - o.logprob for c, o in zip(backend.teacher_force_batch(prompts, texts, clone),
                                                 backend.teacher_force_batch(prompts, texts, PI_0), strict=True)]
    assert all(x == 0.0 for x in lr)


def test_logprob_is_log_softmax_of_logits_over_temperature(backend, prompts, pi0_gens):
    """Recompute log P_T(response) step by step as log_softmax([z, z_eot] / T) from the T = 1 tables."""
    for i in range(20):
        prompt, text = prompts[i], pi0_gens[i].text
        ids = [WORDS.index(w) for w in text.split()]
        pf = backend.features(prompt)
        pol = backend._policy(PI_0)
        t1 = backend.world.tables(pf, pol, 1.0, PI_0.max_tokens)
        z = t1.zT                                  # logits at T = 1
        z_eot = t1.logp_eot + t1.logZ              # EOT logit at T = 1, per state and position
        for temperature in (0.5, 0.9, 1.7):
            total, state = 0.0, START
            for pos, v in enumerate(ids + [None]):
                logits = np.append(z[state], z_eot[state, pos]) / temperature
                lp = log_softmax(logits)
                total += lp[-1] if v is None else lp[v]
                if v is not None:
                    state = int(t1.cls[v])
            policy = PolicySpec("p", temperature=temperature, system_prompt=HELPFUL)
            assert backend.teacher_force(prompt, text, policy).logprob == pytest.approx(total, rel=1e-10, abs=1e-9)


def test_temperature_log_ratios_are_heavy_tailed_but_finite(backend, prompts, pi0_gens):
    texts = [g.text for g in pi0_gens]
    lp_hot = np.array([t.logprob for t in backend.teacher_force_batch(prompts, texts, PI_HOT)])
    lr = lp_hot - np.array([g.logprob for g in pi0_gens])
    assert np.all(np.isfinite(lr))
    w = np.exp(lr - lr.max())
    ess = w.sum() ** 2 / (w ** 2).sum()
    assert lr.std() > 2.0 and ess < 0.2 * len(lr)


def test_out_of_vocabulary_gives_none_and_names_the_word(backend):
    tf = backend.teacher_force("What is a loop?", "the loop is zorblax here", PI_0)
    assert tf.logprob is None and "zorblax" in tf.error
    too_long = " ".join(["the"] * 30)
    tf = backend.teacher_force("What is a loop?", too_long, PolicySpec("p", temperature=0.5, max_tokens=20))
    assert tf.logprob is None and "max_tokens" in tf.error


def test_judge_deterministic_gridded_and_length_biased(backend, prompts):
    texts, ps = [], []
    for pol in (PI_0, PI_HOT, PI_COT, PI_CONCISE):
        texts += [g.text for g in backend.generate_batch(prompts, pol, list(range(len(prompts))))]
        ps += prompts
    scores = np.array([j.score for j in backend.judge_batch(ps, texts, JUDGE)])
    again = np.array([SimulatedBackend(seed=0).judge(ps[i], texts[i], JUDGE).score for i in range(0, 1200, 97)])
    assert np.array_equal(scores[::97], again)
    assert np.all((scores >= 0) & (scores <= 1))
    assert np.allclose(scores * 20, np.round(scores * 20))
    y = backend.true_quality_batch(ps, texts)
    n = np.array([len(t.split()) for t in texts])
    assert np.corrcoef(scores, y)[0, 1] > 0.4  # informative ...
    resid = scores - np.poly1d(np.polyfit(y, scores, 3))(y)  # ... but, given Y, longer looks better
    assert np.corrcoef(resid, np.log(n + 1))[0, 1] > 0.2
    assert abs(np.corrcoef(y, np.log(n + 1))[0, 1]) < np.corrcoef(scores, np.log(n + 1))[0, 1]


def test_padding_raises_judge_not_truth(backend, prompts, pi0_gens):
    texts = [g.text for g in pi0_gens[:200]]
    padded = [t + " " + " ".join(["the", "and", "of", "to"] * 10) for t in texts]
    dj = np.mean([a.score - b.score for a, b in zip(backend.judge_batch(prompts[:200], padded, JUDGE),
                                                    backend.judge_batch(prompts[:200], texts, JUDGE), strict=True)])
    dy = np.mean(backend.true_quality_batch(prompts[:200], padded) - backend.true_quality_batch(prompts[:200], texts))
    assert dj > 0.05 and abs(dy) < 0.5 * dj


def test_ratings_are_integer_votes_tracking_y(backend, prompts, pi0_gens):
    ys, means = [], []
    for i in range(40):
        votes = backend.rate(prompts[i], pi0_gens[i].text, n_votes=400, seed=i)
        assert all(isinstance(v, int) and 0 <= v <= 10 for v in votes)
        assert votes[:5] == backend.rate(prompts[i], pi0_gens[i].text, n_votes=5, seed=i)
        ys.append(backend.true_quality(prompts[i], pi0_gens[i].text))
        means.append(np.mean(votes) / 10)
    ys, means = np.array(ys), np.array(means)
    # E[vote] / 10 = Y exactly, near 0 and 1 too (no clipping): 400 votes give SE <= 0.01 per item.
    assert np.max(np.abs(means - ys)) < 0.04
    assert abs(np.mean(means - ys)) < 0.01
    assert (ys > 0.8).sum() >= 3  # the check covers responses near the top of the scale
    assert np.corrcoef(ys, means)[0, 1] > 0.97


def test_true_value_matches_independent_monte_carlo(tmp_path, prompts):
    b = SimulatedBackend(seed=0, truth_min_total_draws=20_000, cache_dir=str(tmp_path))
    ps = prompts[:40]
    value, se = b.true_value_detail(PI_HOT, ps)
    assert 0 < se < 0.002
    # independent estimate: ordinary generation with unrelated seeds
    m = 150
    rep = [p for p in ps for _ in range(m)]
    gens = b.generate_batch(rep, PI_HOT, [7_000_000 + k for k in range(len(rep))])
    y = b.true_quality_batch(rep, [g.text for g in gens]).reshape(len(ps), m)
    se_ind = np.sqrt(y.var(axis=1, ddof=1).sum() / m) / len(ps)
    assert abs(y.mean() - value) < 4 * np.hypot(se, se_ind)
    # cached on disk and re-read by a fresh instance
    assert len(list(tmp_path.glob("true_value_*.json"))) == 1
    fresh = SimulatedBackend(seed=0, truth_min_total_draws=20_000, cache_dir=str(tmp_path))
    assert fresh.true_value_detail(PI_HOT, ps) == (value, se)
    assert b.true_value(PI_HOT, ps) == value


def test_policy_values_and_adversarial_judge_gap(prompts):
    b = SimulatedBackend(seed=0, truth_min_total_draws=20_000)
    ps = prompts[:200]
    v = {p.name: b.true_value(p, ps) for p in (PI_0, PI_HOT, PI_COT, PI_CONCISE, PI_ADV)}
    j = {p.name: np.mean([x.score for x in b.judge_batch(
        ps, [g.text for g in b.generate_batch(ps, p, list(range(len(ps))))], JUDGE)])
        for p in (PI_0, PI_HOT, PI_COT, PI_CONCISE, PI_ADV)}
    assert v["pi_cot"] > v["pi_0"] + 0.02
    assert v["pi_hot"] < v["pi_0"] - 0.02
    assert v["pi_concise"] < v["pi_0"]
    assert v["pi_adv"] < v["pi_0"] - 0.3 and j["pi_adv"] > j["pi_0"]  # fools the judge
    # the judge's length bias distorts the picture: hot is over-rated relative to pi_0
    assert j["pi_hot"] - j["pi_0"] > v["pi_hot"] - v["pi_0"] + 0.02  # hot is longer: the judge understates its deficit


def test_response_lengths_are_realistic(backend, prompts, pi0_gens):
    for gens in (pi0_gens, backend.generate_batch(prompts, PI_CONCISE, list(range(len(prompts))))):
        n = np.array([g.n_tokens for g in gens])
        assert 10 <= np.quantile(n, 0.05) and np.quantile(n, 0.95) <= 160


def test_synthetic_prompts_prefix_and_features():
    big, small = synthetic_prompts(500, seed=42), synthetic_prompts(120, seed=42)
    assert list(big.columns) == ["prompt_id", "prompt"]
    assert big.iloc[:120].equals(small)
    assert big["prompt_id"].iloc[123] == "sim_000123"
    assert not synthetic_prompts(120, seed=43)["prompt"].equals(small["prompt"])
    assert big["prompt"].nunique() > 450
    feats = [prompt_features(p) for p in big["prompt"]]
    assert all(topic_hits(p).max() > 0 for p in big["prompt"])  # topic recovered from words, not a hash
    assert len({f.topic for f in feats}) == 12
    d = np.array([f.difficulty for f in feats])
    assert d.std() > 0.1 and 0 < d.min() and d.max() < 1


def test_features_of_arbitrary_text():
    for text in ("", "¿Qué es la vida? 🤔", "x" * 5000, "Write a python function to sort a list"):
        f = prompt_features(text)
        assert 0 <= f.topic < 12 and 0 < f.difficulty < 1 and f.target_length > 0
        assert f == prompt_features(text)
    assert prompt_features("Write a python function to sort a list").topic == 0  # programming


def test_real_arena_prompts_work(arena_sample):
    import json

    path = arena_sample / "logged_data.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with path.open() as fh:
        texts = [json.loads(line)["prompt"] for _, line in zip(range(50), fh)]
    b = SimulatedBackend(seed=0)
    gens = b.generate_batch(texts, PI_0, list(range(len(texts))))
    tf = b.teacher_force_batch(texts, [g.text for g in gens], PI_0)
    assert all(g.logprob == t.logprob for g, t in zip(gens, tf, strict=True))
    assert len({prompt_features(t).topic for t in texts}) > 3


@pytest.mark.parametrize("seed", [0, 7, 2**40 + 3])
def test_hidden_quality_few_rows_python_path_equals_vectorised(seed, monkeypatch):
    """The word-by-word Python hash used for a rater's single item is bitwise the numpy column loop."""
    import arena_cje.backends.simulated.world as world

    rng = np.random.default_rng(seed % 1000)
    model = world.WorldModel(seed=seed)
    for rows in (1, 2, world._FEW_ROWS):
        tokens = rng.integers(-1, world.N_WORDS + 1, size=(rows, 40))
        length = rng.integers(0, 41, size=rows)
        few = model.hidden_quality(tokens, length)
        monkeypatch.setattr(world, "_FEW_ROWS", -1)
        vectorised = model.hidden_quality(tokens, length)
        monkeypatch.setattr(world, "_FEW_ROWS", 4)
        assert np.array_equal(few, vectorised)


def test_table_log_sum_exp_is_bitwise_the_one_table_fortran_reduction():
    """The batched log-sum-exp adds left to right, as the original per-table Fortran-order sum did."""
    import arena_cje.backends.simulated.world as world

    x = np.random.default_rng(3).normal(0.0, 4.0, size=(37, world.N_STATES, world.N_WORDS))

    def one_table(t: np.ndarray) -> np.ndarray:
        f = np.asfortranarray(t)
        m = f.max(axis=1)
        return m + np.log(np.exp(f - m[:, None]).sum(axis=1))

    expected = np.stack([one_table(x[u]) for u in range(x.shape[0])])
    assert np.array_equal(world._lse_tables(x), expected)
    pairwise = x.max(axis=2) + np.log(np.exp(x - x.max(axis=2)[:, :, None]).sum(axis=2))
    assert not np.array_equal(pairwise, expected)  # the order matters: the check can fail
    assert world._lse_tables(x[:0]).shape == (0, world.N_STATES)


def test_rebuilt_tables_reuse_their_log_sum_exps_bitwise(prompts):
    """A table rebuilt after the LRU dropped it (partly remembered log-sum-exps) equals a fresh build."""
    from arena_cje.backends.simulated.features import policy_features
    from arena_cje.backends.simulated.world import WorldModel

    pol = policy_features("You are a helpful assistant.", "mislead")
    pfs = [prompt_features(p) for p in prompts[:40]]
    fresh = WorldModel(seed=0).tables_many(pfs[10:40], pol, 0.7, 64)
    model = WorldModel(seed=0, cache_size=5)  # the LRU keeps 5 tables, the log-sum-exps 80
    model.tables_many(pfs[:25], pol, 0.7, 64)
    assert len(model._lse_cache) == 25 and len(model._cache) == 5
    rebuilt = model.tables_many(pfs[10:40], pol, 0.7, 64)  # 15 remembered, 15 new, one batch
    for a, b in zip(fresh, rebuilt, strict=True):
        for name in ("zT", "logZ", "logp_eot", "cdf", "cls"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize("policy", [PI_HOT, PI_COT, PolicySpec("short", temperature=0.7, max_tokens=25)])
def test_teacher_forcing_without_tables_is_bitwise_the_table_score(prompts, policy):
    """``score_paths`` computes only the entries on each path: its log-probs equal ``score`` on the full tables,
    bitwise, with log-sum-exps remembered (after generation) or not, EOT scored or not, empty responses too."""
    from arena_cje.backends.simulated.vocab import WORD_INDEX
    from arena_cje.backends.simulated.world import WorldModel

    generator = SimulatedBackend(seed=0)
    gens = generator.generate_batch(prompts, policy, list(range(len(prompts))))
    paths = [np.array([WORD_INDEX[w] for w in g.text.split()], dtype=np.int64) for g in gens]
    paths[5] = paths[5][:0]                                # an empty response
    eot = [n % 3 != 0 for n in range(len(paths))]          # scored with and without EOT
    cut = [i for i, p in enumerate(paths) if p.size == policy.max_tokens]
    for i in cut:
        eot[i] = False                                      # no EOT is possible after max_tokens words
    pol = generator._policy(policy)
    pfs = [generator.features(p) for p in prompts]
    tables = WorldModel(seed=0).tables_many(pfs, pol, policy.temperature, policy.max_tokens)
    expected = [WorldModel.score(tab, ids, e)[0] for tab, ids, e in zip(tables, paths, eot, strict=True)]
    remembered = generator.world.score_paths(pfs, pol, policy.temperature, policy.max_tokens, paths, eot)
    fresh_world = WorldModel(seed=0)                       # no log-sum-exp remembered: computed from full logits
    fresh = fresh_world.score_paths(pfs, pol, policy.temperature, policy.max_tokens, paths, eot)
    assert len(fresh_world._cache) == 0 and len(fresh_world._lse_cache) == len(set(pfs))  # no table was built
    assert remembered == expected and fresh == expected   # bitwise (float ==), every one of 300
    assert len(set(expected)) > 250 and (policy.max_tokens != 25 or cut)
    # The backend's teacher forcing is these numbers (generation's own log-probs for the ended ones).
    tf = generator.teacher_force_batch(prompts, [g.text for g in gens], policy, [g.error is None and g.n_tokens >
                                                                              len(g.text.split()) for g in gens])
    assert [t.logprob for t in tf] == [g.logprob for g in gens]
