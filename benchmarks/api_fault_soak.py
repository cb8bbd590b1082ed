"""Transient faults end in no failed request: the OpenAI-compatible backend against a faulty server.

Starts the fake OpenAI-compatible server (tests/backends/fake_openai_server.py) in-process on
127.0.0.1 with random faults per HTTP request (default: 5% JSON bodies cut in half, 5% connections
dropped without an answer), then runs N generation, N teacher-forcing and N judge items (3N
logical requests) through one backend with a durable record, and prints:

* HTTP requests sent, faults injected by kind, retries;
* logical requests done and failed (target: 0 failed, i.e. no second ``kedro run`` needed).

Usage: ``python benchmarks/api_fault_soak.py [--n 160] [--truncated 0.05] [--drop 0.05] [--seed 11]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "backends"))

from fake_openai_server import FakeOpenAIServer  # noqa: E402

from arena_cje.backends.base import JudgeSpec, PolicySpec  # noqa: E402
from arena_cje.backends.openai_compatible import OpenAICompatibleBackend  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=160, help="items per stage (3 stages)")
    parser.add_argument("--truncated", type=float, default=0.05, help="share of bodies cut in half")
    parser.add_argument("--drop", type=float, default=0.05, help="share of connections dropped")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    policy = PolicySpec("pi_0", model="fake-llm", temperature=0.7, system_prompt="Be helpful.", max_tokens=32)
    judge = JudgeSpec(model="fake-judge", rubric="Rate.")
    prompts = [f"Question {i}: what about item {i}?" for i in range(args.n)]
    rates = {"truncated": args.truncated, "drop": args.drop}
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAIServer(fault_rates=rates, seed=args.seed) as server:
        backend = OpenAICompatibleBackend(
            base_url=server.url, api_key_env=None, store_path=str(Path(tmp) / "store.sqlite"), progress=False,
            vocab_size=256, concurrency=args.concurrency, max_retries=6, backoff_initial=0.005, backoff_max=0.05,
            timeout=5.0,
        )
        start = time.perf_counter()
        gens = backend.generate_batch(prompts, policy, list(range(args.n)))
        forced = backend.teacher_force_batch(prompts, [g.text for g in gens], policy)
        judged = backend.judge_batch(prompts, [g.text for g in gens], judge)
        seconds = time.perf_counter() - start
        faults = Counter(e["fault"] for e in server.log if e["fault"])
        sent = len(server.log)
        done, failed = backend.store.count(status="done"), backend.store.count(status="failed")
        errors = sum(r.error is not None for r in [*gens, *forced, *judged])
        backend.close()
    print(f"fault rates per HTTP request: {rates} (seed {args.seed})")
    print(f"logical requests: {3 * args.n} (generate, teacher_force, judge: {args.n} each)")
    print(f"HTTP requests sent: {sent}; faults injected: {dict(faults)}; retries: {sent - 3 * args.n}")
    print(f"done: {done}  failed: {failed}  results with an error: {errors}  ({seconds:.1f} s)")


if __name__ == "__main__":
    main()
