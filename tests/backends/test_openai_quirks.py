"""The OpenAI-compatible client against the documented quirks of real servers.

Each test switches on one quirk of tests/backends/fake_openai_server.py (vLLM's BOS-counting and
decoded-length offsets, byte offsets, split UTF-8 tokens, k+1 top entries, noisy echo, an
end-of-turn entry in chat log-probs, Together's reply shape, llama.cpp's refusal of echo, missing
usage, transient faults) and checks the client's number against the exact value the fake model
knows (FakeModel / exact_response_logprob), which the client never sees.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fake_openai_server import LLAMA3_BOS, LLAMA3_EOT, ONLY_NO_ECHO, FakeOpenAIServer, exact_response_logprob  # noqa: E402

from arena_cje.backends import make_backend  # noqa: E402
from arena_cje.backends.base import JudgeSpec, PolicySpec, TeacherForced, teacher_force_batch  # noqa: E402
from arena_cje.backends.openai_compatible import (  # noqa: E402
    BudgetExceededError,
    ConfigurationError,
    OpenAICompatibleBackend,
    locate_span,
    rescale_logprob,
    spells,
)
from arena_cje.backends.store import RequestStore  # noqa: E402
from arena_cje.backends.templates import LLAMA31_PREAMBLE, SMOLLM2_DEFAULT_SYSTEM, TEMPLATES, get_template  # noqa: E402

POLICY = PolicySpec("pi_0", model="fake-llm", temperature=1.0, system_prompt="You are a helpful assistant.", max_tokens=64)
LLAMA3 = TEMPLATES["llama3"]

#: Non-ASCII prompts and responses: accents, emoji, curly quotes, CJK.
NON_ASCII = [
    ("Où est le café ☕ le plus proche?", "Ça dépend: près de la gare, à côté du musée."),
    ("Explain “curly quotes” — please.", "They are ‘typographic’ quotes… like “this”."),
    ("東京はどこですか?", "東京は日本の首都です 🗼 and it is big."),
]


def backend(srv: FakeOpenAIServer, tmp_path: Path, **options) -> OpenAICompatibleBackend:
    defaults = dict(
        base_url=srv.url, api_key_env="ARENA_TEST_NO_SUCH_VAR", store_path=str(tmp_path / "store.sqlite"),
        progress=False, vocab_size=256, top_k_logprobs=5, timeout=0.5, max_retries=4, backoff_initial=0.005,
        backoff_max=0.02, concurrency=4,
    )
    return make_backend("openai_compatible", **{**defaults, **options})


def echo_bodies(srv: FakeOpenAIServer) -> list[str]:
    return [e["body"]["prompt"] for e in srv.log if e["path"] == "/v1/completions"]


# ------------------------------------------------------------------------------ 1. truncation


def test_truncated_response_is_scored_without_an_end_of_turn_it_never_produced(tmp_path):
    policy = PolicySpec("pi_cut", model="fake-llm", temperature=1.0, system_prompt="Be brief.", max_tokens=3)
    with FakeOpenAIServer() as srv:
        b = backend(srv, tmp_path)
        gen = b.generate("Tell me about time.", policy, 7)
        assert gen.usage["truncated"] == 1.0  # finish_reason "length"
        prefix = LLAMA3.prefix("Tell me about time.", policy.system_prompt)
        cut = b.teacher_force("Tell me about time.", gen.text, policy, ended=False)
        assert echo_bodies(srv)[-1] == prefix + gen.text  # no end-of-turn marker sent
        whole = b.teacher_force("Tell me about time.", gen.text, policy, ended=True)
        assert echo_bodies(srv)[-1] == prefix + gen.text + LLAMA3_EOT
        n_echo = len(echo_bodies(srv))
        again = b.teacher_force_batch(["Tell me about time."] * 2, [gen.text] * 2, policy, [False, True])
        assert len(echo_bodies(srv)) == n_echo  # each case recorded under its own key, none repeated
    assert cut.logprob == pytest.approx(exact_response_logprob(prefix, gen.text, ""), abs=1e-9)
    assert whole.logprob == pytest.approx(exact_response_logprob(prefix, gen.text, LLAMA3_EOT), abs=1e-9)
    assert abs(cut.logprob - whole.logprob) > 0.1 and cut.n_tokens == whole.n_tokens - 1
    assert again == [cut, whole]


def test_generation_node_passes_ended_from_the_truncated_column(monkeypatch):
    from arena_cje.pipelines.generation import nodes

    seen: dict[str, list[bool]] = {}

    class Recorder:
        def teacher_force_batch(self, prompts, responses, policy, ended=None):
            seen[policy.name] = list(ended)
            return [TeacherForced(-1.0, n_tokens=1) for _ in prompts]

    monkeypatch.setattr(nodes, "backends_from_params", lambda blocks: {name: Recorder() for name in blocks})
    prompts = pd.DataFrame({"prompt_id": ["a", "b", "c"], "prompt": ["A?", "B?", "C?"]})
    responses = pd.DataFrame({"prompt_id": ["a", "b", "c"], "policy": "pi_0", "draw_idx": 0,
                              "response": ["x", "y", "z"], "logprob": np.nan, "n_tokens": None,
                              "truncated": [False, True, False], "error": None})
    out = nodes.teacher_force_logged_responses(prompts, responses, {"name": "x"}, {"pi_0": {}, "pi_1": {}},
                                               {"model": "m"}, "pi_0")
    assert seen == {"pi_0": [True, False, True], "pi_1": [True, False, True]}
    assert len(out) == 6


def test_simulated_backend_accepts_ended_and_refuses_an_impossible_one():
    from arena_cje.backends.simulated.backend import SimulatedBackend

    sim = SimulatedBackend(seed=3)
    policy = PolicySpec("pi_s", temperature=0.8, max_tokens=40)
    gens = sim.generate_batch(["What is two plus two?"] * 8, policy, list(range(8)))
    ended = [not g.usage["truncated"] for g in gens]
    assert 0 < sum(ended) < len(ended)  # both cases present
    with_flags = teacher_force_batch(sim, ["What is two plus two?"] * 8, [g.text for g in gens], policy, ended)
    assert [t.logprob for t in with_flags] == pytest.approx([g.logprob for g in gens], abs=1e-12)
    cut = gens[ended.index(False)]
    bad = sim.teacher_force("What is two plus two?", cut.text, policy, ended=True)
    assert bad.logprob is None and "no end of turn" in bad.error  # max_tokens words cannot have ended
    done = gens[ended.index(True)]
    assert sim.teacher_force("What is two plus two?", done.text, policy, ended=False).logprob > done.logprob


# ------------------------------------------------------------------------------ 2. span by verified text


QUIRKY_SERVERS = {
    "vllm_bos_decoded_offsets": dict(bos=LLAMA3_BOS, offsets="decoded"),
    "byte_offsets": dict(offsets="bytes"),
    "vllm_split_utf8": dict(bos=LLAMA3_BOS, offsets="decoded", split_utf8=True),
    "split_utf8_char_offsets": dict(split_utf8=True),
}


@pytest.mark.parametrize("quirk", sorted(QUIRKY_SERVERS))
@pytest.mark.parametrize("prompt,response", NON_ASCII)
def test_span_found_by_token_text_whatever_the_offsets(tmp_path, quirk, prompt, response):
    options = QUIRKY_SERVERS[quirk]
    with FakeOpenAIServer(**options) as srv:
        out = backend(srv, tmp_path).teacher_force(prompt, response, POLICY)
    prefix = LLAMA3.prefix(prompt, POLICY.system_prompt)
    exact = exact_response_logprob(prefix, response, LLAMA3_EOT, bos=options.get("bos"),
                                   split_utf8=options.get("split_utf8", False))
    assert out.error is None, out.error
    assert out.logprob == pytest.approx(exact, abs=1e-9)
    assert out.usage["two_call"] == 0.0  # the template boundary is a token boundary: one call


def test_merged_boundary_with_bos_falls_back_to_two_calls_and_sums_no_prompt_token(tmp_path):
    policy = PolicySpec("pi_raw", model="fake-llm", temperature=1.0, system_prompt="")
    with FakeOpenAIServer(bos=LLAMA3_BOS, offsets="decoded") as srv:
        out = backend(srv, tmp_path, chat_template="raw").teacher_force("Où est-il?", "Voilà, c'est ça.", policy)
        assert echo_bodies(srv) == ["Où est-il?Voilà, c'est ça.<|endoftext|>", "Où est-il?"]
    exact = exact_response_logprob("Où est-il?", "Voilà, c'est ça.", "<|endoftext|>", bos=LLAMA3_BOS)
    assert out.error is None and out.usage["two_call"] == 1.0
    assert out.logprob == pytest.approx(exact, abs=1e-9)


def test_spells_and_locate_span_units():
    assert spells(["caf", "\ufffd", "\ufffd!"], "café!")  # é split into two byte pieces
    assert not spells(["caf", "\ufffd", "\ufffd!"], "cafe!")
    assert not spells(["ab"], "abc")
    tokens = ["<s>", "Hi", "?", " Yes", "."]
    assert locate_span(tokens, "Hi? Yes.", 3, first=1) == 3
    assert locate_span(tokens, "Hi? Yes.", 5, first=1) is None  # starts inside a token
    assert locate_span(["Hi", "?", " Yes"], "Hi? Yes", 0) is None  # the first token has no log-prob
    # "\n\n" then "Ça" split into two byte pieces: only one boundary spells both sides.
    assert locate_span(["A:", "\n\n", "\ufffd", "\ufffda"], "A:\n\nÇa", 4) == 2
    # "é" ends the prompt and "ü" starts the reply, both split: two boundaries spell it.
    assert locate_span(["x", "\ufffd", "\ufffd\ufffd", "\ufffd"], "xéü", 2) is None


# ------------------------------------------------------------------------------ 3. echo shapes


def test_together_reply_shape_is_parsed(tmp_path):
    prompt, response = NON_ASCII[0]
    with FakeOpenAIServer(echo_shape="together") as srv:
        out = backend(srv, tmp_path).teacher_force(prompt, response, POLICY)
    prefix = LLAMA3.prefix(prompt, POLICY.system_prompt)
    assert out.error is None
    assert out.logprob == pytest.approx(exact_response_logprob(prefix, response), abs=1e-9)


@pytest.mark.parametrize("shape", ["ignored", "empty"])
def test_missing_or_ignored_echo_is_never_zero(tmp_path, shape):
    with FakeOpenAIServer(echo_shape=shape) as srv:
        b = backend(srv, tmp_path)
        out = b.teacher_force("Hi?", "Hello.", POLICY)
        cut = b.teacher_force("Hi?", "Hello.", PolicySpec("pi_t", model="fake-llm", temperature=0.5), ended=False)
    for result in (out, cut):
        assert result.logprob is None and result.n_tokens is None
        assert "echo" in result.error and "teacher forcing failed" in result.error
    assert b.store.count(status="failed") == 2  # retried on the next run, not kept as done


# ------------------------------------------------------------------------------ 4. k+1 top entries


@pytest.mark.parametrize("temperature", [0.3, 0.5, 0.8, 1.5, 2.0])
def test_rescale_bound_holds_with_the_scored_token_added_to_top_k(temperature):
    rng = np.random.default_rng(1)
    for _ in range(300):
        vocab = int(rng.integers(20, 400))
        logits = rng.normal(0, rng.uniform(0.5, 5), vocab)
        k = int(rng.integers(1, 8))
        lp1 = logits - np.logaddexp.reduce(logits)
        lpt = logits / temperature - np.logaddexp.reduce(logits / temperature)
        order = np.argsort(-lp1)
        i = int(order[int(rng.integers(k, vocab))])  # a scored token outside the top k
        top = {f"t{j}": float(lp1[j]) for j in order[:k]}
        top[f"t{i}"] = float(lp1[i])  # vLLM / Fireworks: k + 1 entries
        estimate, half = rescale_logprob(float(lp1[i]), f"t{i}", top, temperature, vocab)
        assert abs(estimate - lpt[i]) <= half + 1e-9


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_server_with_k_plus_1_entries_stays_within_recorded_bound(tmp_path, temperature):
    policy = PolicySpec("pi_t", model="fake-llm", temperature=temperature, system_prompt="Be brief.")
    prompt, response = "Tell me about time.", "The answer is simple and clear because each step follows."
    with FakeOpenAIServer(top_extra=True) as srv:
        out = backend(srv, tmp_path, top_k_logprobs=3).teacher_force(prompt, response, policy)
    exact = exact_response_logprob(LLAMA3.prefix(prompt, policy.system_prompt), response, LLAMA3_EOT, temperature)
    assert out.error is None and out.tail_mass_bound > 0
    assert abs(out.logprob - exact) <= out.tail_mass_bound


# ------------------------------------------------------------------------------ 5. echo noise, 1/T


@pytest.mark.parametrize("honour,option", [(False, False), (True, True)])
def test_noisy_echo_does_not_fake_a_temperature_and_noise_is_reported(tmp_path, honour, option):
    policy = PolicySpec("pi_t", model="fake-llm", temperature=0.8, system_prompt="Hi.", max_tokens=64)
    with FakeOpenAIServer(honour_temperature=honour, echo_noise=0.05, seed=5) as srv:
        report = backend(srv, tmp_path, store_path=None, echo_applies_temperature=option,
                         check_tolerance=0.5).self_check(policy, ["Why?", "Explain tides."])
    assert report.verdict == "PASS", report.details
    assert report.echo_noise_mean > 1e-3 and report.echo_noise_max >= report.echo_noise_mean
    assert any("echo noise" in d for d in report.details)
    assert report.echo_temperature_slope == pytest.approx(1 / 0.8 if honour else 1.0, abs=0.05)


def test_deterministic_echo_reports_zero_noise(tmp_path):
    with FakeOpenAIServer() as srv:
        report = backend(srv, tmp_path, store_path=None).self_check(POLICY, ["Why?"])
    assert report.verdict == "PASS" and report.echo_noise_mean == 0.0 and report.echo_noise_max == 0.0


# ------------------------------------------------------------------------------ 6. retries


@pytest.mark.parametrize("fault", ["408", "409", "finish_error", "truncated", "cut", "drop"])
def test_transient_faults_are_retried(tmp_path, fault):
    with FakeOpenAIServer() as srv:
        srv.script.extend([fault, fault])
        b = backend(srv, tmp_path)
        gen = b.generate("Hi?", POLICY, 1)
    assert gen.error is None and gen.text and gen.usage["attempts"] == 3.0
    assert b.store.count(status="done") == 1 and b.store.count(status="failed") == 0


def test_retry_after_ms_is_honoured(tmp_path):
    with FakeOpenAIServer(retry_after_ms=300) as srv:
        srv.script.extend(["429ms", "429ms"])
        gen = backend(srv, tmp_path, backoff_initial=0.001).generate("Hi?", POLICY, 1)
        times = [e["time"] for e in srv.log]
    assert gen.error is None and len(times) == 3 and min(np.diff(times)) >= 0.29


def test_persistent_finish_reason_error_is_a_recorded_failure_never_a_response(tmp_path):
    with FakeOpenAIServer() as srv:
        b = backend(srv, tmp_path, max_retries=2)
        gen = b.generate("Hi? FAULT:finish_error", POLICY, 1)
        judged = b.judge("Q? FAULT:finish_error", "A.", JudgeSpec(model="fake-judge", rubric="Rate."))
    assert gen.text == "" and "finish_reason 'error'" in gen.error and "gave up after 3 attempts" in gen.error
    assert judged.score is None and "finish_reason 'error'" in judged.error
    assert b.store.count(status="failed") == 2 and b.store.count(status="done") == 0


def test_480_requests_with_5pct_truncated_bodies_and_5pct_dropped_connections_end_with_none_failed(tmp_path):
    prompts = [f"Question {i}: what about item {i}?" for i in range(160)]
    with FakeOpenAIServer(fault_rates={"truncated": 0.05, "drop": 0.05}, seed=11) as srv:
        b = backend(srv, tmp_path, concurrency=8, max_retries=6, timeout=2.0)
        gens = b.generate_batch(prompts, POLICY, list(range(160)))
        forced = b.teacher_force_batch(prompts, [g.text for g in gens], POLICY)
        judged = b.judge_batch(prompts, [g.text for g in gens], JudgeSpec(model="fake-judge", rubric="Rate."))
        faults = sum(e["fault"] in {"truncated", "drop"} for e in srv.log)
    assert faults >= 20  # the faults did happen (~10% of ~530 requests)
    assert all(x.error is None for x in [*gens, *forced, *judged])
    assert b.store.count(status="failed") == 0 and b.store.count(status="done") == 480


# ------------------------------------------------------------------------------ 7. templates, llama.cpp


def test_llama31_template_writes_the_system_preamble_always():
    t = get_template("llama3.1")
    assert t.prefix("Hi?", "", with_bos=True) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert LLAMA31_PREAMBLE + "Be brief.<|eot_id|>" in t.prefix(" Hi? \n", " Be brief. ")
    assert "\n\nHi?<|eot_id|>" in t.prefix(" Hi? \n")  # messages are trimmed, like the template's | trim
    assert "system" not in get_template("llama3").prefix("Hi?")  # Llama 3.0: no system turn without one


def test_smollm2_writes_its_default_system_prompt_and_chatml_none():
    smol = get_template("smollm2").prefix("Hi?")
    assert smol == (f"<|im_start|>system\n{SMOLLM2_DEFAULT_SYSTEM}<|im_end|>\n"
                    "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n")
    assert get_template("smollm2").prefix("Hi?", "Be brief.").startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert get_template("chatml").prefix("Hi?") == "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    custom = get_template({"system": "S:{content}\n", "user": "U:{content}\n", "assistant_header": "A:",
                           "end_of_turn": "</s>", "default_system": "Default."})
    assert custom.prefix("q") == "S:Default.\nU:q\nA:"


def test_llama_cpp_refusal_of_echo_is_a_configuration_error(tmp_path):
    with FakeOpenAIServer(reject_echo=True) as srv:
        with pytest.raises(ConfigurationError, match="cannot teacher-force") as info:
            backend(srv, tmp_path).teacher_force_batch(["Hi?", "Ho?"], ["Hello.", "Hey."], POLICY)
        assert sum(e["path"] == "/v1/completions" for e in srv.log) <= 4  # not retried
    assert ONLY_NO_ECHO in str(info.value)


# ------------------------------------------------------------------------------ 8. budget without usage


def test_budget_cap_holds_when_the_provider_omits_usage(tmp_path):
    prices = {"fake-llm": {"prompt": 1.0, "completion": 2.0}}
    with FakeOpenAIServer(omit_usage=True) as srv:
        b = backend(srv, tmp_path, prices=prices, budget_usd=0.5, concurrency=2)
        with pytest.raises(BudgetExceededError):
            b.generate_batch([f"Prompt {i}?" for i in range(50)], POLICY, list(range(50)))
    store = RequestStore(tmp_path / "store.sqlite")
    assert 0 < store.count() < 50 and 0 < store.total_cost() <= 0.5  # charged, and capped


def test_missing_usage_is_flagged_and_charged(tmp_path):
    prices = {"default": {"prompt": 1.0, "completion": 2.0}}
    with FakeOpenAIServer(omit_usage=True) as srv:
        gen = backend(srv, tmp_path, prices=prices).generate("Hi?", POLICY, 1)
    assert gen.usage["usage_estimated"] == 1.0 and gen.usage["cost_usd"] > 0
    assert gen.usage["completion_tokens"] == POLICY.max_tokens  # the pre-request upper estimate


# ------------------------------------------------------------------------------ 9. structured judge


@pytest.mark.parametrize("options", [{"judge_response_format": "json_schema"}, {"judge_json_mode": True}])
def test_judge_uses_structured_output(tmp_path, options):
    judge = JudgeSpec(model="fake-judge", rubric="Rate. JSON only.")
    with FakeOpenAIServer() as srv:
        out = backend(srv, tmp_path, **options).judge("Q? JUDGE:prose", "A.", judge)
        body = srv.log[-1]["body"]
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "judge_score"
    score = fmt["json_schema"]["schema"]["properties"]["score"]
    assert score == {"type": "number", "minimum": 0, "maximum": 1}
    assert out.error is None and out.raw.startswith("{")


def test_judge_without_structured_output_sends_no_response_format(tmp_path):
    with FakeOpenAIServer() as srv:
        backend(srv, tmp_path).judge("Q?", "A.", JudgeSpec(model="fake-judge", rubric="Rate."))
        assert "response_format" not in srv.log[-1]["body"]
    with pytest.raises(ValueError, match="judge_response_format"):
        OpenAICompatibleBackend(base_url="http://127.0.0.1:9/v1", judge_response_format="yaml", store_path=None)


# ------------------------------------------------------------------------------ 10. chat EOT entry


@pytest.mark.parametrize("eot_entry", [False, True])
def test_self_check_detects_whether_chat_logprobs_include_the_end_of_turn(tmp_path, eot_entry):
    with FakeOpenAIServer(chat_eot_entry=eot_entry) as srv:
        report = backend(srv, tmp_path, store_path=None).self_check(POLICY, ["Hi?", "Explain tides."])
    assert report.verdict == "PASS", report.details
    assert report.chat_includes_eot is eot_entry
    assert report.max_abs_diff_per_token < 1e-9


def test_self_check_passes_on_responses_cut_at_max_tokens(tmp_path):
    policy = PolicySpec("pi_cut", model="fake-llm", temperature=1.0, system_prompt="Hi.", max_tokens=3)
    with FakeOpenAIServer(chat_eot_entry=True) as srv:
        report = backend(srv, tmp_path, store_path=None).self_check(policy, ["Explain tides.", "Why?"])
    assert report.verdict == "PASS", report.details
    assert all("cut at max_tokens" in d for d in report.details if d.startswith("ok"))


# ------------------------------------------------------------------------------ undecoded token texts


def test_undecoded_byte_level_and_sentencepiece_tokens_still_spell_the_text():
    from arena_cje.backends.openai_compatible import echo_text_start, token_text_variants

    text = "Hi café\nthere"
    byte_level = ["Hi", "Ġcaf", "Ã©", "Ċ", "there"]  # GPT-2 byte-level pieces, undecoded
    assert echo_text_start(byte_level, text) is None
    assert any(echo_text_start(v, text) == 0 for v in token_text_variants(byte_level))
    sentencepiece = ["<s>", "▁Hi", "▁café", "<0x0A>", "there"]  # dummy prefix, byte fallback
    assert any(echo_text_start(v, text) == 1 for v in token_text_variants(sentencepiece))
    assert not any(echo_text_start(v, "Hi cafe\nthere") is not None for v in token_text_variants(byte_level))


# ------------------------------------------------------------------------------ seen on vLLM 0.32 (CPU)


def test_locate_span_with_vllm_empty_pieces_of_a_split_character():
    """vLLM decodes each token alone: the leading bytes of 良 come back as "", "" and then "良".

    The boundary after the assistant header is a token boundary; the empty pieces belong to the
    reply (the prompt side ends in a whole character), so the earliest candidate is the span.
    """
    head = "<|im_start|>assistant\n"
    tokens = ["<|im_start|>", "assistant", "\n", "", "", "良", "く", "!"]
    text = head + "良く!"
    assert locate_span(tokens, text, len(head)) == 3
    # A reply starting with a whole character is unaffected.
    assert locate_span(["<|im_start|>", "assistant", "\n", "Hi", "!"], head + "Hi!", len(head)) == 3


@pytest.mark.parametrize("temperature", [0.3, 0.5, 0.9])
def test_rescale_bound_holds_when_tokens_of_the_same_text_collapse_in_the_top_k(temperature):
    """Top-k maps keyed by text lose entries (vLLM: several pieces of split characters are all "").

    Flagged incomplete, the bound must still hold, whichever entry the server kept.
    """
    rng = np.random.default_rng(3)
    for _ in range(400):
        vocab = int(rng.integers(30, 300))
        logits = rng.normal(0, rng.uniform(0.5, 5), vocab)
        k = int(rng.integers(3, 10))
        lp1 = logits - np.logaddexp.reduce(logits)
        lpt = logits / temperature - np.logaddexp.reduce(logits / temperature)
        order = [int(j) for j in np.argsort(-lp1)]
        i = order[int(rng.integers(0, min(vocab, 2 * k)))]
        shown = order[:k] + ([i] if i not in order[:k] else [])
        # Some shown tokens, the scored one possibly among them, decode to "" and collapse.
        blank = {j for j in shown if rng.random() < 0.4}
        top: dict[str, float] = {}
        for j in shown:
            top["" if j in blank else f"t{j}"] = float(lp1[j])  # later entries overwrite earlier
        name = "" if i in blank else f"t{i}"
        from arena_cje.backends.openai_compatible.temperature import _top_complete

        estimate, half = rescale_logprob(float(lp1[i]), name, top, temperature, vocab,
                                         complete=_top_complete(top, k))
        assert abs(estimate - lpt[i]) <= half + 1e-9


# ------------------------------------------------------------------------------ echo noise in the run


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_run_measures_echo_noise_once_and_reports_it(tmp_path, noise):
    """The generation stage repeats T=1 echoes of a few logged rows; a rerun sends none again."""
    from arena_cje.pipelines.generation.nodes import check_teacher_forcing, measure_echo_noise

    prompts = pd.DataFrame({"prompt_id": ["a", "b"], "prompt": ["Why is the sea salty?", "Name a colour."]})
    responses = pd.DataFrame({
        "prompt_id": ["a", "b"], "policy": "pi_0", "draw_idx": 0,
        "response": ["Because rivers carry salts into it.", "Blue"], "logprob": np.nan, "n_tokens": 5,
        "truncated": [False, True], "error": None,
    })
    policies = {"pi_0": {"temperature": 0.5, "system_prompt": "Be brief."}}
    defaults = {"model": "fake-llm", "max_tokens": 64}
    with FakeOpenAIServer(echo_noise=noise, seed=2) as srv:
        block = {"name": "openai_compatible", "openai_compatible": {
            "base_url": srv.url, "api_key_env": None, "store_path": str(tmp_path / "store.sqlite"),
            "progress": False, "vocab_size": 256, "check_echo_repeats": 3, "chat_template": "llama3"}}
        figures = measure_echo_noise(prompts, responses, block, policies, defaults, "pi_0")
        sent = sum(srv.counts().values())
        again = measure_echo_noise(prompts, responses, block, policies, defaults, "pi_0")
        assert sum(srv.counts().values()) == sent  # recorded: the rerun sends nothing
    assert figures == again and figures["echo_repeats"] == 3 and figures["echo_noise_rows"] == 2
    if noise:
        assert figures["echo_noise_mean"] > 1e-3 and figures["echo_noise_max"] >= figures["echo_noise_mean"]
    else:
        assert figures["echo_noise_mean"] == 0.0
    report = check_teacher_forcing(responses, pd.DataFrame({"prompt_id": ["a", "b"], "policy": "pi_0",
                                                            "logprob": [-3.0, -1.0]}), "pi_0", figures)
    assert report["echo_noise_mean"] == figures["echo_noise_mean"]
