"""The OpenAI-compatible backend against a local fake server (tests/backends/fake_openai_server.py).

Known truth comes from the fake server's model (FakeModel), which the client never sees.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fake_openai_server import LLAMA3_EOT, FakeModel, FakeOpenAIServer, tokenize  # noqa: E402

from arena_cje.backends import make_backend  # noqa: E402
from arena_cje.backends.base import JudgeSpec, PolicySpec  # noqa: E402
from arena_cje.backends.openai_compatible import (  # noqa: E402
    BudgetExceededError,
    ConfigurationError,
    OpenAICompatibleBackend,
    rescale_logprob,
)
from arena_cje.backends.store import RequestStore  # noqa: E402
from arena_cje.backends.templates import TEMPLATES, get_template  # noqa: E402

MODEL = FakeModel()
POLICY = PolicySpec("pi_0", model="fake-llm", temperature=1.0, system_prompt="You are a helpful assistant.", max_tokens=64)


@pytest.fixture
def server():
    with FakeOpenAIServer() as srv:
        yield srv


def backend(srv: FakeOpenAIServer, tmp_path: Path, **options) -> OpenAICompatibleBackend:
    defaults = dict(
        base_url=srv.url, api_key_env="ARENA_TEST_NO_SUCH_VAR",
        store_path=str(tmp_path / "store.sqlite"), progress=False, vocab_size=256, top_k_logprobs=5,
        timeout=0.5, max_retries=4, backoff_initial=0.005, backoff_max=0.02, concurrency=4,
    )
    return make_backend("openai_compatible", **{**defaults, **options})


def response_truth(prefix: str, response: str, eot: str, temperature: float = 1.0) -> float:
    """Exact log P(response + eot | prefix) from the fake model, two-text difference."""
    full = MODEL.text_logprobs(prefix + response + eot, temperature)
    head = MODEL.text_logprobs(prefix, temperature)
    return sum(lp for _, _, lp in full[1:]) - sum(lp for _, _, lp in head[1:])


# ------------------------------------------------------------------------------ templates


def test_templates_locate_response_span_and_custom_mapping():
    for template in TEMPLATES.values():
        text, start, end = template.render("Hi?", "Hello.", "Sys")
        assert text[start:end] == "Hello." + template.end_of_turn
        assert text.startswith(template.prefix("Hi?", "Sys"))
    custom = get_template({"system": "S:{content}\n", "user": "U:{content}\n", "assistant_header": "A:", "end_of_turn": "</s>"})
    assert custom.render("q", "r")[0] == "U:q\nA:r</s>"
    with pytest.raises(ValueError, match="unknown template"):
        get_template("llama99")


# ------------------------------------------------------------------------------ generation


def test_generation_in_input_order_with_server_logprobs(server, tmp_path):
    prompts = [f"Question number {i}?" for i in range(12)]
    seeds = list(range(100, 112))
    out = backend(server, tmp_path).generate_batch(prompts, POLICY, seeds)
    for prompt, seed, gen in zip(prompts, seeds, out):
        assert gen.error is None
        assert gen.text == MODEL.reply(prompt, POLICY.system_prompt, 1.0, seed, 64)
        prefix = TEMPLATES["llama3"].prefix(prompt, POLICY.system_prompt)
        truth = [lp for tok, off, lp in MODEL.text_logprobs(prefix + gen.text + LLAMA3_EOT)
                 if off >= len(prefix) and tok != LLAMA3_EOT]
        assert gen.token_logprobs == pytest.approx(truth, abs=1e-12)
        assert gen.logprob is None  # the policy log-prob comes from teacher forcing
    body = server.log[0]["body"]
    assert body["top_p"] == 1.0 and body["temperature"] == 1.0 and body["logprobs"] is True
    assert body["messages"][0] == {"role": "system", "content": POLICY.system_prompt}


# ------------------------------------------------------------------------------ teacher forcing


@pytest.mark.parametrize("prompt,response", [("What is it?", "Hello there."), ("Stop!", "Okay, fine"), ("Hi.", "Yes")])
def test_teacher_force_llama3_matches_server_token_logprobs(server, tmp_path, prompt, response):
    out = backend(server, tmp_path).teacher_force(prompt, response, POLICY)
    prefix = TEMPLATES["llama3"].prefix(prompt, POLICY.system_prompt)
    full = prefix + response + LLAMA3_EOT
    expected = sum(lp for _, off, lp in MODEL.text_logprobs(full) if off >= len(prefix))
    assert out.error is None
    assert out.logprob == pytest.approx(expected, abs=1e-9)
    assert out.n_tokens == len([1 for _, off in tokenize(full) if off >= len(prefix)])
    assert out.usage["two_call"] == 0.0 and out.tail_mass_bound == 0.0
    assert server.log[-1]["body"]["echo"] is True and server.log[-1]["body"]["max_tokens"] == 0


@pytest.mark.parametrize("prompt,response", [("What is it?", "Hello there."), ("Stop!", "Okay, fine"), ("Hi.", "Yes")])
def test_teacher_force_token_merge_falls_back_to_two_call_difference(server, tmp_path, prompt, response):
    policy = PolicySpec("pi_raw", model="fake-llm", temperature=1.0, system_prompt="")
    out = backend(server, tmp_path, chat_template="raw").teacher_force(prompt, response, policy)
    eot = TEMPLATES["raw"].end_of_turn
    offsets = [off for _, off in tokenize(prompt + response + eot)]
    assert len(prompt) not in offsets  # the punctuation and the first letters are one token
    assert out.error is None
    assert out.logprob == pytest.approx(response_truth(prompt, response, eot), abs=1e-9)
    assert out.usage["two_call"] == 1.0
    assert [e["body"]["prompt"] for e in server.log] == [prompt + response + eot, prompt]


@pytest.mark.parametrize("temperature", [0.5, 0.9, 1.5])
def test_temperature_rescaling_within_recorded_bound(server, tmp_path, temperature):
    policy = PolicySpec("pi_t", model="fake-llm", temperature=temperature, system_prompt="Be brief.")
    b = backend(server, tmp_path, top_k_logprobs=40)
    prompt, response = "Tell me about time.", "The answer is simple and clear because each step follows."
    out = b.teacher_force(prompt, response, policy)
    prefix = TEMPLATES["llama3"].prefix(prompt, policy.system_prompt)
    exact = response_truth(prefix, response, LLAMA3_EOT, temperature)
    at_t1 = response_truth(prefix, response, LLAMA3_EOT, 1.0)
    assert out.error is None and out.tail_mass_bound > 0
    assert abs(out.logprob - exact) <= out.tail_mass_bound
    assert abs(at_t1 - exact) > out.tail_mass_bound  # rescaling is not a no-op here
    assert server.log[-1]["body"]["logprobs"] == 40 and server.log[-1]["body"]["temperature"] == temperature


def test_provider_honouring_temperature_in_echo_is_exact(tmp_path):
    policy = PolicySpec("pi_t", model="fake-llm", temperature=0.7, system_prompt="")
    with FakeOpenAIServer(honour_temperature=True) as srv:
        out = backend(srv, tmp_path, echo_applies_temperature=True).teacher_force("Why?", "Because.", policy)
    prefix = TEMPLATES["llama3"].prefix("Why?", "")
    assert out.logprob == pytest.approx(response_truth(prefix, "Because.", LLAMA3_EOT, 0.7), abs=1e-9)
    assert out.tail_mass_bound == 0.0


def test_rescale_logprob_bound_holds_on_random_distributions():
    rng = np.random.default_rng(0)
    for _ in range(300):
        vocab = int(rng.integers(5, 400))
        logits = rng.normal(0, rng.uniform(0.5, 5), vocab)
        temperature = float(rng.choice([0.3, 0.5, 0.8, 1.3, 2.0]))
        k = int(rng.integers(1, vocab + 1))
        lp1 = logits - np.logaddexp.reduce(logits)
        lpt = logits / temperature - np.logaddexp.reduce(logits / temperature)
        order = np.argsort(-lp1)
        top = {f"t{j}": float(lp1[j]) for j in order[:k]}
        i = int(rng.integers(vocab))
        estimate, half = rescale_logprob(float(lp1[i]), f"t{i}", top, temperature, vocab)
        assert abs(estimate - lpt[i]) <= half + 1e-9
        if k == vocab:
            assert half == pytest.approx(0.0, abs=1e-9)


def test_positive_or_nonfinite_logprob_refused(server, tmp_path, monkeypatch):
    original = server.completions

    def broken(body):
        status, data = original(body)
        data["choices"][0]["logprobs"]["token_logprobs"] = [None] + [0.5] * (len(data["choices"][0]["logprobs"]["tokens"]) - 1)
        return status, data

    monkeypatch.setattr(server, "completions", broken)
    out = backend(server, tmp_path).teacher_force("Hi?", "Hello.", POLICY)
    assert out.logprob is None and "refused" in out.error


# ------------------------------------------------------------------------------ faults


def test_429_retry_after_is_honoured(tmp_path):
    with FakeOpenAIServer(retry_after=0.25) as srv:
        srv.script.extend(["429", "429"])
        gen = backend(srv, tmp_path, backoff_initial=0.001).generate("Hi?", POLICY, 1)
        times = [e["time"] for e in srv.log]
    assert gen.error is None and gen.usage["attempts"] == 3.0
    assert len(times) == 3 and min(np.diff(times)) >= 0.24


def test_retries_500_timeout_and_dropped_connection_then_succeeds(tmp_path, caplog):
    with FakeOpenAIServer(hang=1.0) as srv, caplog.at_level(logging.WARNING):
        srv.script.extend(["500", "timeout", "drop", "503"])
        gen = backend(srv, tmp_path, timeout=0.3).generate("Hi?", POLICY, 1)
        assert len(srv.log) == 5
    assert gen.error is None and gen.usage["attempts"] == 5.0
    assert gen.text == MODEL.reply("Hi?", POLICY.system_prompt, 1.0, 1, 64)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "RetryableHTTPError" in messages and "Timeout" in messages and "ConnectionError" in messages


def test_give_up_is_recorded_others_kept_and_retried_next_run(server, tmp_path):
    prompts = ["Fine one?", "Always failing FAULT:503", "Fine two?", "Broken body FAULT:malformed", "Bad shape FAULT:badshape"]
    b = backend(server, tmp_path, max_retries=2)
    out = b.generate_batch(prompts, POLICY, [1, 2, 3, 4, 5])
    assert [g.error is None for g in out] == [True, False, True, False, False]
    assert "gave up after 3 attempts" in out[1].error and "HTTP 503" in out[1].error
    assert "gave up after 3 attempts" in out[3].error and "incomplete response body" in out[3].error
    assert "malformed" in out[4].error  # well-formed JSON of the wrong shape: not retried
    per_prompt = lambda: {p: sum(p in str(e["body"]) for e in server.log) for p in prompts}  # noqa: E731
    assert per_prompt() == {prompts[0]: 1, prompts[1]: 3, prompts[2]: 1, prompts[3]: 3, prompts[4]: 1}
    assert b.store.count(status="failed") == 3 and b.store.count(status="done") == 2
    again = backend(server, tmp_path, max_retries=0).generate_batch(prompts, POLICY, [1, 2, 3, 4, 5])
    assert [g.text for g in again][::2][:2] == [out[0].text, out[2].text]
    assert per_prompt() == {prompts[0]: 1, prompts[1]: 4, prompts[2]: 1, prompts[3]: 4, prompts[4]: 2}


@pytest.mark.parametrize("fault,needle", [("401", "API key"), ("403", "permissions"), ("404", "base_url"), ("400", "top_k_logprobs")])
def test_client_errors_stop_with_what_to_fix_without_retry(server, tmp_path, fault, needle):
    prompts = ["ok first?", f"bad FAULT:{fault}", "ok last?"]
    b = backend(server, tmp_path, concurrency=1)
    with pytest.raises(ConfigurationError, match=f"HTTP {fault}") as info:
        b.generate_batch(prompts, POLICY, [1, 2, 3])
    assert needle in str(info.value) and "To fix" in str(info.value)
    assert sum("FAULT" in str(e["body"]) for e in server.log) == 1  # no retry
    assert b.store.count(status="done") == 1  # the item finished before the error is kept


def test_context_length_400_is_an_item_failure(server, tmp_path):
    out = backend(server, tmp_path).generate_batch(["short?", "huge FAULT:400ctx"], POLICY, [1, 2])
    assert out[0].error is None and "maximum context length" in out[1].error


def test_wrong_key_error_never_shows_the_key(tmp_path, monkeypatch, caplog):
    secret = "fw-SECRET-0123456789"
    monkeypatch.setenv("FIREWORKS_API_KEY", secret)
    with FakeOpenAIServer(api_key="fw-the-right-one") as srv, caplog.at_level(logging.DEBUG):
        b = backend(srv, tmp_path, api_key_env="FIREWORKS_API_KEY")
        with pytest.raises(ConfigurationError) as info:
            b.generate("Hi?", POLICY, 1)
        assert len(srv.log) == 1
    text = str(info.value)
    assert "HTTP 401" in text and "FIREWORKS_API_KEY" in text and secret not in text
    assert secret not in repr(b) and secret not in caplog.text
    assert secret.encode() not in (tmp_path / "store.sqlite").read_bytes()


def test_key_given_by_the_caller_and_no_yaml_reader(tmp_path):
    with FakeOpenAIServer(api_key="fw-from-kedro-credentials") as srv:
        gen = backend(srv, tmp_path, api_key="fw-from-kedro-credentials").generate("Hi?", POLICY, 1)
    assert gen.error is None
    with pytest.raises(TypeError, match="credentials_path"):
        OpenAICompatibleBackend(base_url="http://127.0.0.1:9/v1", credentials_path="conf/local/credentials.yml")
    with pytest.raises(TypeError, match="seed"):
        OpenAICompatibleBackend(base_url="http://127.0.0.1:9/v1", seed=1)


# ------------------------------------------------------------------------------ judging


def test_judge_sends_rubric_at_t0_and_parses_or_records_raw(server, tmp_path):
    judge = JudgeSpec(model="fake-judge", rubric="RUBRIC: helpfulness, correctness, safety. JSON only.")
    b = backend(server, tmp_path)
    out = b.judge_batch(["Q1?", "Q2? JUDGE:prose", "Q3? JUDGE:refuse"], ["A1.", "A2.", "A3."], judge)
    body = server.log[0]["body"]
    assert body["temperature"] == 0.0 and body["messages"][0] == {"role": "system", "content": judge.rubric}
    assert out[0].error is None and 0 <= out[0].score <= 1 and '"score"' in out[0].raw
    assert out[1].error is None and f"{out[1].score}" in out[1].raw  # tolerant fallback on prose
    assert out[2].score is None and out[2].raw == "I cannot evaluate this." and out[2].error


def test_judge_rescore_subset_measures_noise(server, tmp_path):
    judge = JudgeSpec(model="fake-judge", rubric="Rate.")
    prompts, responses = [f"Q{i}?" for i in range(40)], [f"A{i}." for i in range(40)]
    out = backend(server, tmp_path, judge_rescore_fraction=0.3).judge_batch(prompts, responses, judge)
    rescored = [j for j in out if "rescore_score" in j.usage]
    assert 4 <= len(rescored) <= 20  # ~30% of 40
    assert len(server.log) == 40 + len(rescored)
    assert all(j.usage["rescore_score"] == j.score for j in rescored)  # the fake judge is noiseless at T=0


# ------------------------------------------------------------------------------ store, budget, limits


def test_rerun_repeats_no_completed_call(server, tmp_path):
    prompts = [f"P{i}?" for i in range(10)]
    first = backend(server, tmp_path).generate_batch(prompts, POLICY, list(range(10)))
    tf = backend(server, tmp_path).teacher_force_batch(prompts, [g.text for g in first], POLICY)
    n = len(server.log)
    second = backend(server, tmp_path).generate_batch(prompts, POLICY, list(range(10)))
    tf2 = backend(server, tmp_path).teacher_force_batch(prompts, [g.text for g in first], POLICY)
    assert len(server.log) == n and second == first and tf2 == tf
    changed = PolicySpec(**{**POLICY.__dict__, "system_prompt": "Other."})
    backend(server, tmp_path).generate_batch(prompts[:2], changed, [0, 1])
    assert len(server.log) == n + 2  # a changed policy spec is a new request


def test_budget_cap_stops_before_exceeding(server, tmp_path):
    prices = {"fake-llm": {"prompt": 1.0, "completion": 2.0}}  # USD per 1k tokens
    b = backend(server, tmp_path, prices=prices, budget_usd=0.5, concurrency=2)
    with pytest.raises(BudgetExceededError, match="budget_usd"):
        b.generate_batch([f"Prompt {i}?" for i in range(50)], POLICY, list(range(50)))
    store = RequestStore(tmp_path / "store.sqlite")
    assert 0 < store.count() < 50 and 0 < store.total_cost() <= 0.5


def test_requests_per_minute_limit(server, tmp_path):
    start = time.monotonic()
    backend(server, tmp_path, requests_per_minute=600, concurrency=4).generate_batch(
        [f"R{i}?" for i in range(5)], POLICY, list(range(5)))
    assert time.monotonic() - start >= 0.4  # 5 starts at least 0.1 s apart


def test_connection_reuse(server, tmp_path):
    b = backend(server, tmp_path, concurrency=2)
    b.generate_batch([f"C{i}?" for i in range(20)], POLICY, list(range(20)))
    ports = {e.get("client_port") for e in server.log}
    assert 1 <= len(ports) <= 2 + 1  # two pooled connections (plus slack), not twenty


# ------------------------------------------------------------------------------ self-check


def test_self_check_passes_with_right_template_and_fails_with_wrong_one(server, tmp_path):
    ok = backend(server, tmp_path, store_path=None).self_check(POLICY, ["Hi?", "Explain tides."])
    assert ok.verdict == "PASS" and ok.max_abs_diff_per_token < 1e-9
    bad = backend(server, tmp_path, store_path=None, chat_template="chatml").self_check(POLICY, ["Hi?", "Explain tides."])
    assert bad.verdict == "FAIL"
    assert server.counts("/v1/chat/completions").total() == 4


def test_self_check_reports_access_error(tmp_path):
    with FakeOpenAIServer(api_key="right") as srv:
        report = backend(srv, tmp_path, store_path=None, api_key="wrong").self_check(POLICY, ["Hi?"])
    assert report.verdict == "ERROR" and "HTTP 401" in report.details[0]


# ------------------------------------------------------------------------------ project CLI logic


def test_check_models_and_status_commands_logic(server, tmp_path):
    from arena_cje.cli import check_models, status_lines

    store = tmp_path / "store.sqlite"
    params = {
        "backend": {"name": "openai_compatible", "openai_compatible": {
            "base_url": server.url, "store_path": str(store), "progress": False, "vocab_size": 256,
            "api_key_env": "ARENA_TEST_NO_SUCH_VAR"}},
        "policy_defaults": {"model": "fake-llm", "max_tokens": 32},
        "policies": {"pi_0": {"temperature": 0.5, "system_prompt": "Hi."}, "pi_hot": {"temperature": 0.9}},
        "judge": {"model": "fake-judge", "temperature": 0.0, "rubric": "Rate.", "max_tokens": 64},
    }
    lines, ok = check_models(params, n_samples=2)
    assert ok, lines
    assert [line.split()[0] for line in lines if not line.startswith(" ")] == ["PASS", "PASS", "PASS"]
    assert not store.exists()  # the check records nothing
    assert status_lines(store) == [f"no request record at {store} yet"]
    b = backend(server, tmp_path, prices={"default": {"prompt": 0.5, "completion": 1.0}})
    b.generate_batch(["A?", "B? FAULT:malformed"], POLICY, [1, 2])
    b.judge_batch(["A?"], ["x JUDGE:refuse"], JudgeSpec(model="fake-judge", rubric="Rate."))
    table = status_lines(store, budget_usd=5.0)
    gen_row = next(line for line in table if line.startswith("generate"))
    assert gen_row.split()[1:4] == ["pi_0", "1", "1"]
    judge_row = next(line for line in table if line.startswith("judge"))
    assert judge_row.split()[1:5] == ["judge", "1", "0", "1"]  # done, but no value (unparseable)
    assert "of budget $5.00" in table[-2]


@pytest.mark.parametrize("honour,option,verdict", [(False, False, "PASS"), (True, False, "FAIL"), (True, True, "PASS"), (False, True, "FAIL")])
def test_self_check_detects_whether_echo_applies_temperature(tmp_path, honour, option, verdict):
    policy = PolicySpec("pi_t", model="fake-llm", temperature=0.5, system_prompt="Hi.")
    with FakeOpenAIServer(honour_temperature=honour) as srv:
        report = backend(srv, tmp_path, store_path=None, echo_applies_temperature=option).self_check(policy, ["Why?"])
    assert report.verdict == verdict, report.details
    if verdict == "FAIL":
        assert f"echo_applies_temperature: {str(honour).lower()}" in report.details[-1]
