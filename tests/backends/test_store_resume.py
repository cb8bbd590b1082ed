"""Kill -9 a generation run midway, rerun it: no completed request repeated, nothing lost or doubled."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from fake_openai_server import FakeOpenAIServer  # noqa: E402

from arena_cje.backends.base import PolicySpec  # noqa: E402
from arena_cje.backends.store import RequestStore, make_key  # noqa: E402

N = 60
SCRIPT = textwrap.dedent(
    """
    import json, sys
    from arena_cje.backends import make_backend
    from arena_cje.backends.base import PolicySpec, generate_batch
    url, store, out = sys.argv[1:4]
    backend = make_backend("openai_compatible", base_url=url, store_path=store, concurrency=4, progress=False,
                           api_key_env="ARENA_TEST_NO_SUCH_VAR")
    policy = PolicySpec("pi_0", model="fake-llm", temperature=0.7, system_prompt="Be helpful.", max_tokens=32)
    prompts = [f"Prompt number {i}?" for i in range(%d)]
    results = generate_batch(backend, prompts, policy, [1000 + i for i in range(len(prompts))])
    with open(out, "w") as fh:
        json.dump([r.to_dict() for r in results], fh)
    """
    % N
)


def _run(script: Path, url: str, store: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(script), url, str(store), str(out)], env=env)


def _done_keys(store: Path) -> set[tuple]:
    if not store.exists():
        return set()
    with sqlite3.connect(store) as conn:
        try:
            rows = conn.execute("SELECT stage, spec_hash, prompt_hash, item_key FROM requests WHERE status='done'")
            return set(rows.fetchall())
        except sqlite3.OperationalError:  # table not created yet
            return set()


def test_kill_9_midway_then_rerun_repeats_no_completed_request(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    store, out = tmp_path / "store.sqlite", tmp_path / "out.json"
    with FakeOpenAIServer(latency=0.05) as srv:
        proc = _run(script, srv.url, store, out)
        deadline = time.monotonic() + 60
        while len(_done_keys(store)) < N // 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL and not out.exists()
        completed = _done_keys(store)
        assert N // 3 <= len(completed) < N  # killed midway

        rerun = _run(script, srv.url, store, out)
        assert rerun.wait(timeout=120) == 0
        resumed = json.loads(out.read_text())
        seen = srv.counts("/v1/chat/completions")

        reference_out = tmp_path / "ref.json"
        reference = _run(script, srv.url, tmp_path / "ref.sqlite", reference_out)
        assert reference.wait(timeout=120) == 0
        uninterrupted = json.loads(reference_out.read_text())

    policy = PolicySpec("pi_0", model="fake-llm", temperature=0.7, system_prompt="Be helpful.", max_tokens=32)
    body_of = {}
    for entry in srv.log[: sum(seen.values())]:
        user = entry["body"]["messages"][-1]["content"]
        body_of[(user, entry["body"]["seed"])] = json.dumps(entry["body"], sort_keys=True)
    # Every request completed before the kill was sent exactly once in total.
    spec = {k: v for k, v in policy.__dict__.items() if k != "name"} | {"base_url": srv.url}
    for i in range(N):
        prompt, seed = f"Prompt number {i}?", 1000 + i
        key = make_key("generate", spec, prompt, str(seed))
        count = seen[body_of[(prompt, seed)]]
        if (key.stage, key.spec_hash, key.prompt_hash, key.item_key) in completed:
            assert count == 1, f"item {i} completed before the kill but was sent {count} times"
        else:
            assert count in (1, 2)  # in flight at the kill (sent twice) or never started (once)
    assert resumed == uninterrupted
    assert all(r["error"] is None and r["text"] for r in resumed)
    with sqlite3.connect(store) as conn:
        total, distinct = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT stage || spec_hash || prompt_hash || item_key) FROM requests").fetchone()
    assert total == distinct == N


def test_rerun_sends_only_the_failed_items_and_the_record_counts_them(tmp_path):
    """Through the real path (the openai_compatible backend and its store_path): a finished call is
    recorded ``done`` and never sent again; an item that failed after its retries is recorded
    ``failed`` and sent again by the next run; ``summary`` counts both per stage and policy."""
    from arena_cje.backends import make_backend

    n = 5
    policy = PolicySpec("pi_x", model="fake-llm", temperature=0.7, max_tokens=16)
    prompts = [f"p{i}?" for i in range(n)] + ["fail me FAULT:503"]
    with FakeOpenAIServer() as srv:
        def run() -> list:
            backend = make_backend("openai_compatible", base_url=srv.url, api_key_env="ARENA_TEST_NO_SUCH_VAR",
                                   store_path=str(tmp_path / "s.sqlite"), progress=False, max_retries=0, concurrency=2)
            try:
                return backend.generate_batch(prompts, policy, list(range(n + 1)))
            finally:
                backend.close()

        first, second = run(), run()
        sent = [e["body"]["messages"][-1]["content"] for e in srv.log if e["path"].endswith("/chat/completions")]
    assert first == second and all(g.error is None and g.text for g in first[:n]) and "HTTP 503" in first[-1].error
    assert sorted(sent) == sorted([*prompts, prompts[-1]])  # the done ones once, the failed one again
    with RequestStore(tmp_path / "s.sqlite") as store:
        rows = {(r.stage, r.policy): (r.done, r.failed) for r in store.summary()}
    assert rows == {("generate", "pi_x"): (n, 1)}
