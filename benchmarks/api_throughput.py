"""Throughput of the OpenAI-compatible backend and overhead of its durable request record.

Starts the fake OpenAI-compatible server (tests/backends/fake_openai_server.py) in its own process
on 127.0.0.1 with a fixed latency per request, sends N generation requests at the given
concurrency, and prints:

* wall time vs the ideal N * latency / concurrency (target: within 1.25x);
* the durable record's cost per item: mean / p99 time of ``RequestStore.put`` (one committed
  WAL transaction per item, as during a run), and the same batch run without a store.

Usage: ``python benchmarks/api_throughput.py [--n 1000] [--concurrency 32] [--latency 0.2]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from arena_cje.backends.base import PolicySpec
from arena_cje.backends.openai_compatible import OpenAICompatibleBackend
from arena_cje.backends.store import RequestStore, make_key

ROOT = Path(__file__).resolve().parents[1]


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests/backends/fake_openai_server.py"), "--latency", str(latency)],
        stdout=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline().split()
    if not line or line[0] != "PORT":
        proc.kill()
        raise RuntimeError("fake server did not start")
    return proc, f"http://127.0.0.1:{line[1]}/v1"


def run_batch(url: str, n: int, concurrency: int, store_path: str | None, tag: str) -> tuple[float, list]:
    backend = OpenAICompatibleBackend(
        base_url=url, store_path=store_path, concurrency=concurrency, progress=False,
        api_key_env="ARENA_BENCH_NO_KEY", timeout=30,
    )
    policy = PolicySpec("pi_bench", model="fake-llm", temperature=0.7, system_prompt="Be brief.", max_tokens=32)
    prompts = [f"{tag} benchmark prompt {i}?" for i in range(n)]
    start = time.perf_counter()
    results = backend.generate_batch(prompts, policy, list(range(n)))
    elapsed = time.perf_counter() - start
    backend.close()
    failures = sum(r.error is not None for r in results)
    if failures:
        raise RuntimeError(f"{failures} requests failed")
    return elapsed, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.2)
    args = parser.parse_args()
    ideal = args.n * args.latency / args.concurrency
    proc, url = start_server(args.latency)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            store_path = str(Path(tmp) / "bench.sqlite")
            run_batch(url, 200, args.concurrency, None, "warm-up")  # threads, connections, server caches
            with_store, results = run_batch(url, args.n, args.concurrency, store_path, "a")
            without_store, _ = run_batch(url, args.n, args.concurrency, None, "b")
            # Re-running with the store: every item is served from the record, no request sent.
            resumed, _ = run_batch(url, args.n, args.concurrency, store_path, "a")

            # Per-item cost of the record: one committed WAL transaction per finished request.
            policy_spec = {"model": "fake-llm", "temperature": 0.7}
            timings = []
            with RequestStore(Path(tmp) / "puts.sqlite") as store:
                for i, result in enumerate(results):
                    key = make_key("generate", policy_spec, f"prompt {i}", str(i))
                    t0 = time.perf_counter()
                    store.put(key, "pi_bench", result, prompt_tokens=20, completion_tokens=12, cost_usd=1e-5)
                    timings.append(time.perf_counter() - t0)
    finally:
        proc.kill()
        proc.wait()
    timings_ms = sorted(t * 1000 for t in timings)
    p99 = timings_ms[int(0.99 * (len(timings_ms) - 1))]
    print(f"requests: {args.n}, concurrency: {args.concurrency}, server latency: {args.latency * 1000:.0f} ms")
    print(f"ideal time (n * latency / concurrency): {ideal:.2f} s")
    print(f"with durable store:    {with_store:.2f} s  = {with_store / ideal:.3f} x ideal  (target <= 1.25 x)"
          f"  -> {'PASS' if with_store <= 1.25 * ideal else 'FAIL'}")
    print(f"without store:         {without_store:.2f} s  = {without_store / ideal:.3f} x ideal")
    print(f"store wall-time delta: {(with_store - without_store) / args.n * 1000:+.3f} ms per item (noisy)")
    print(f"store put (commit) per item: mean {statistics.mean(timings_ms):.3f} ms, median "
          f"{statistics.median(timings_ms):.3f} ms, p99 {p99:.3f} ms  (target < 1 ms)"
          f"  -> {'PASS' if statistics.mean(timings_ms) < 1.0 else 'FAIL'}")
    print(f"rerun served from the record: {resumed:.3f} s for {args.n} items (no request sent)")


if __name__ == "__main__":
    main()
