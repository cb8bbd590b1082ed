import logging

import numpy as np
import pandas as pd

from arena_cje.prompts import sample_pool, seeded_rank_key


def _prompts(n: int, start: int = 0) -> pd.DataFrame:
    ids = [f"arena-{i:06d}" for i in range(start, start + n)]
    return pd.DataFrame({"prompt_id": ids, "prompt": [f"p{i}" for i in range(start, start + n)], "index": range(start, start + n)})


def test_pool_is_seeded_and_prefix_stable():
    prompts = _prompts(2000)
    a = sample_pool(prompts, 500, seed=1)
    assert a.equals(sample_pool(prompts, 500, seed=1))
    assert list(a["pool_rank"]) == list(range(500))
    bigger = sample_pool(prompts, 1000, seed=1)
    pd.testing.assert_frame_equal(a, bigger.iloc[:500])
    other = sample_pool(prompts, 500, seed=2)
    assert len(set(a["prompt_id"]) & set(other["prompt_id"])) < 250  # expected overlap 125


def test_pool_order_does_not_depend_on_input_order_or_on_new_rows():
    prompts = _prompts(1000)
    a = sample_pool(prompts, 1000, seed=5)
    b = sample_pool(prompts.sample(frac=1.0, random_state=0), 1000, seed=5)
    assert list(a["prompt_id"]) == list(b["prompt_id"])
    # A newer export with more rows: the old prompts keep their relative order.
    grown = sample_pool(pd.concat([prompts, _prompts(300, start=1000)]), 1300, seed=5)
    old = grown[grown["prompt_id"].isin(prompts["prompt_id"])]
    assert list(old["prompt_id"]) == list(a["prompt_id"])


def test_pool_prefix_is_a_uniform_sample():
    prompts = _prompts(5000)
    head = sample_pool(prompts, 400, seed=9)["index"]
    # Mean of 400 draws without replacement from 0..4999: 2499.5, sd ~ 1443/sqrt(400)*sqrt(1-400/5000) ~ 69.
    assert abs(head.mean() - 2499.5) < 4 * 69
    # The keys themselves are uniform: a Kolmogorov-Smirnov-style check on 5,000 keys.
    u = np.sort(seeded_rank_key(prompts["prompt_id"], 9).astype(np.float64) / 2.0**64)
    assert np.max(np.abs(u - (np.arange(1, 5001) - 0.5) / 5000)) < 1.63 / np.sqrt(5000)  # 1% critical value


def test_pool_larger_than_available_keeps_all_and_warns(caplog):
    with caplog.at_level(logging.WARNING):
        pool = sample_pool(_prompts(30), 100, seed=0)
    assert len(pool) == 30
    assert "only 30 prompts pass the filters" in caplog.text
