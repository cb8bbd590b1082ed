"""Report pieces against known truth: verdict directions, sign flips, the budget formula, sections."""

from html.parser import HTMLParser

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from arena_cje.cje import CJEDataset, EstimationConfig, estimate_policies
from arena_cje.report import (
    SECTION_IDS,
    build_report,
    differences_vs_baseline,
    plot_calibration,
    plot_differences,
    plot_forest,
    plot_weight_diagnostics,
    policy_verdicts,
    stage_summary,
)

from ..cje.cje_synthetic import simulate, true_value

CONFIGURATION = {"logging_policy": "pi_0", "judge": {"scale": [0, 1]}}


@pytest.fixture(scope="module")
def run():
    """A synthetic world where pi_better beats pi_0 clearly and pi_worse's judge is biased (no transport)."""
    d = simulate(n=1500, oracle_fraction=0.3, seed=3, judge_bias={"pi_worse": 0.25}, probe_size=60,
                 fresh_labels_for_logging=True)
    data = CJEDataset.from_frames(d.logged, fresh_draws=d.fresh, probes=d.probes)
    result = estimate_policies(data, EstimationConfig.from_params({"estimators": ["naive", "snips", "direct"], "transport_rule": "refuse"}))
    truth = pd.DataFrame({"policy": ["pi_0", "pi_hot", "pi_better", "pi_worse"]})
    truth["truth"] = [true_value(p) for p in truth["policy"]]
    estimates = result.estimates.merge(truth, on="policy", how="left")
    return result, estimates, truth


def test_verdicts_follow_the_truth_and_refuse_what_does_not_transport(run):
    result, estimates, truth = run
    v = policy_verdicts(estimates, result.differences, "pi_0", result.transport_table).set_index("policy")
    t = truth.set_index("policy")["truth"]
    assert t["pi_better"] - t["pi_0"] > 0.05  # the world is built so the difference is clear
    assert v.loc["pi_better", "verdict"].startswith("pi_better vs pi_0: +")
    assert "better than pi_0" in v.loc["pi_better", "verdict"]
    assert v.loc["pi_worse", "status"] == "refused"
    assert v.loc["pi_worse", "verdict"].startswith("pi_worse: refused: calibration does not transport")
    assert v.loc["pi_0", "verdict"].startswith("pi_0 (logging policy): ")


def test_differences_are_oriented_against_the_baseline():
    d = pd.DataFrame([
        {"policy": "pi_0", "baseline": "pi_a", "estimator": "direct", "estimate": -0.10, "std_error": 0.02,
         "ci_lower": -0.15, "ci_upper": -0.06, "n": 10, "status": "ok", "reasons": ""},
        {"policy": "pi_b", "baseline": "pi_0", "estimator": "direct", "estimate": 0.03, "std_error": 0.01,
         "ci_lower": 0.01, "ci_upper": 0.05, "n": 10, "status": "ok", "reasons": ""},
        {"policy": "pi_a", "baseline": "pi_b", "estimator": "direct", "estimate": 0.5, "std_error": 0.01,
         "ci_lower": 0.4, "ci_upper": 0.6, "n": 10, "status": "ok", "reasons": ""},
    ])
    out = differences_vs_baseline(d, "pi_0").set_index("policy")
    assert list(out.index) == ["pi_a", "pi_b"]
    assert out.loc["pi_a", ["estimate", "ci_lower", "ci_upper"]].tolist() == pytest.approx([0.10, 0.06, 0.15])
    assert out.loc["pi_b", ["estimate", "ci_lower", "ci_upper"]].tolist() == pytest.approx([0.03, 0.01, 0.05])


def test_stage_summary_counts_failures_and_never_imputes():
    responses = pd.DataFrame({"policy": ["a", "a", "b"], "error": [None, "timeout", None], "n_tokens": [3, 0, 5],
                              "cost_usd": [0.1, 0.0, 0.2]})
    out = stage_summary(responses, None, None, {"labels": {"collected": 7}, "votes": {"quarantined": 1},
                                                "cost": {"received_votes": 2.5}}).set_index(["stage", "policy"])
    assert out.loc[("generation", "a"), "failed"] == 1
    assert out.loc[("generation", "a"), "failure_examples"] == "timeout"
    assert out.loc[("generation", "b"), "cost"] == pytest.approx(0.2)
    assert out.loc[("labeling", "all"), "cost"] == 2.5


def test_figures_draw_the_data(run):
    result, estimates, _ = run
    cal = plot_calibration(result.calibration)
    assert len(cal.axes) == 2 and cal.axes[0].collections[0].get_offsets().shape[0] == result.calibration.n_labelled
    w = plot_weight_diagnostics(result.weights, result.config.gates.hill_warn)
    assert len(w.axes) == 3 and len(w.axes[1].patches) == 2 * len(result.weights)
    f = plot_forest(estimates)
    assert len(f.axes[0].get_yticks()) == int(estimates["estimate"].notna().sum())
    d = plot_differences(result.differences, "pi_0")
    assert len(d.axes[0].get_yticks()) == int(differences_vs_baseline(result.differences, "pi_0")["estimate"].notna().sum())
    empty = plot_calibration(None)
    assert "no calibration" in empty.axes[0].texts[0].get_text()
    plt.close("all")


def test_weight_plot_draws_unit_and_missing_tails_without_numeric_warnings(run):
    """A clone's unit weights have Hill alpha = inf; too few weights give NaN. Both are drawn, labelled."""
    import dataclasses
    import warnings

    result, _, _ = run
    base = next(iter(result.weights.values()))
    weights = {"unit": dataclasses.replace(base, policy="unit", hill_alpha=float("inf")),
               "few": dataclasses.replace(base, policy="few", hill_alpha=float("nan"), ess_simcal=float("nan"))}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        fig = plot_weight_diagnostics(weights, result.config.gates.hill_warn)
        fig.canvas.draw()
    labels = [t.get_text() for t in fig.axes[2].texts]
    assert labels == ["∞ (no tail)", "n/a"]
    heights = [p.get_height() for p in fig.axes[2].patches]
    assert np.isfinite(heights).all() and heights[0] > 2.0 and heights[1] == 0.0
    plt.close("all")


class _Sections(HTMLParser):
    """Text, images and tables per <section id=...>."""

    def __init__(self):
        super().__init__()
        self.current, self.content, self.img_srcs = None, {}, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.current = a["id"]
            self.content[self.current] = {"text": "", "img": 0, "table": 0}
        elif self.current and tag in ("img", "table"):
            self.content[self.current][tag] += 1
            if tag == "img":
                self.img_srcs.append(a["src"])

    def handle_endtag(self, tag):
        if tag == "section":
            self.current = None

    def handle_data(self, data):
        if self.current:
            self.content[self.current]["text"] += data


def check_report_html(html: str) -> dict:
    """Every section present with content; every image embedded. Returns the parsed sections."""
    p = _Sections()
    p.feed(html)
    assert list(p.content) == list(SECTION_IDS)
    for sid, c in p.content.items():
        title_free = c["text"].strip()
        assert len(title_free) > 40 or c["img"] or c["table"], f"section {sid} is empty"
    assert p.img_srcs and all(s.startswith("data:image/png;base64,") for s in p.img_srcs)
    return p.content


def test_report_has_every_section_with_content(run):
    result, estimates, truth = run
    html, md, sections = build_report(
        configuration=CONFIGURATION, baseline="pi_0", policy_estimates=estimates, policy_differences=result.differences,
        estimation_result=result, policy_truth=truth, teacher_forcing_check={"passed": True, "n_compared": 10},
        stage_summary=None, prompt_filter_report={"source": "arena_local", "input_rows": 18, "eligible": 7,
                                                  "steps": [{"name": "language", "rule": "r", "removed": 2, "remaining": 7}]},
        labeling_summary=None, label_budget=budget(result, estimates),
    )
    content = check_report_html(html)
    for sid in ("estimates", "calibration", "weights", "differences"):
        assert content[sid]["img"] == 1
    assert "Optional section" in content["labeling"]["text"]
    assert "pi_worse: refused: calibration does not transport" in content["verdicts"]["text"]
    # The five-state audit: a state per audited policy, the failing one named.
    states = {p: a.state for p, a in result.transport.items()}
    assert states["pi_worse"] == "FAIL" and "FAIL pi_worse" in content["transport"]["text"]
    for policy, state in states.items():
        line = next(x for x in content["transport"]["text"].split("States: ")[1:])
        assert state in line and policy in line
    for s in sections:
        assert f"## {s.title}" in md
    assert "](calibration_plot.png)" in md and "base64" not in md
    plt.close("all")


def test_report_embeds_given_figure_pngs_as_they_are_and_draws_none(run):
    """The reporting node passes the plot nodes' PNGs: the report embeds those bytes and draws no figure again."""
    import base64

    from arena_cje.report import figure_png

    result, estimates, truth = run
    plt.close("all")
    pngs = {name: figure_png(draw()) for name, draw in {
        "forest_plot": lambda: plot_forest(estimates),
        "differences_plot": lambda: plot_differences(result.differences, "pi_0"),
        "calibration_plot": lambda: plot_calibration(result.calibration),
        "weight_diagnostics_plot": lambda: plot_weight_diagnostics(result.weights, result.config.gates.hill_warn),
    }.items()}
    plt.close("all")
    html, md, sections = build_report(configuration=CONFIGURATION, baseline="pi_0", policy_estimates=estimates,
                                      policy_differences=result.differences, estimation_result=result,
                                      policy_truth=truth, figures=pngs)
    assert plt.get_fignums() == []  # nothing drawn
    for name, png in pngs.items():
        assert f"src='data:image/png;base64,{base64.b64encode(png).decode()}'" in html, name
        assert f"]({name}.png)" in md
    shown = [b for s in sections for b in s.blocks if hasattr(b, "figure")]
    assert sorted(b.name for b in shown) == sorted(pngs) and all(b.figure is pngs[b.name] for b in shown)

    # Without them the same four figures are drawn (and embedded).
    html_drawn, _, _ = build_report(configuration=CONFIGURATION, baseline="pi_0", policy_estimates=estimates,
                                    policy_differences=result.differences, estimation_result=result, policy_truth=truth)
    assert len(plt.get_fignums()) == 4 and html_drawn.count("data:image/png;base64,") == 4
    plt.close("all")


def budget(result, estimates):
    """The budget planner's table for each policy's speaking estimator."""
    from arena_cje.report.budget import plan_budget_table

    verdicts = policy_verdicts(estimates, result.differences, "pi_0", result.transport_table)
    return plan_budget_table(result, verdicts, "pi_0", {"plan_prompt_cost": 0.01, "plan_budget_multiples": [1, 2]},
                             {"price_per_label": 0.1, "votes_per_item": 3})


def test_report_states_the_level_the_estimates_were_made_at(run):
    """alpha comes from the result's own configuration (nothing restated): a 90% run says 90%."""
    import dataclasses

    result, estimates, truth = run
    d = simulate(n=600, oracle_fraction=0.3, seed=5, probe_size=40, fresh_labels_for_logging=True)
    at_90 = estimate_policies(CJEDataset.from_frames(d.logged, fresh_draws=d.fresh, probes=d.probes),
                              EstimationConfig.from_params({"estimators": ["naive", "direct"], "alpha": 0.1}))
    assert at_90.config.alpha == 0.1
    _, md, sections = build_report(configuration=CONFIGURATION, baseline="pi_0", policy_estimates=at_90.estimates,
                                   policy_differences=at_90.differences, estimation_result=at_90)
    verdict_text = " ".join(b for b in next(s for s in sections if s.id == "verdicts").blocks if isinstance(b, str))
    assert "90% CI" in verdict_text and "95%" not in verdict_text
    config_tables = [b for b in next(s for s in sections if s.id == "configuration").blocks if isinstance(b, pd.DataFrame)]
    applied = config_tables[1].set_index("parameter")["value"]
    assert applied["estimation.alpha"] == "0.1" and applied["estimation.gates.hill_warn"] == "2.0"
    with pytest.raises(ValueError, match="carries no EstimationConfig"):
        build_report(configuration=CONFIGURATION, baseline="pi_0", policy_estimates=estimates,
                     policy_differences=result.differences, estimation_result=dataclasses.replace(result, config=None))
    plt.close("all")


def test_budget_for_no_speaking_estimator_keeps_its_columns():
    import pandas as pd

    from arena_cje.report.budget import plan_budget_table

    verdicts = pd.DataFrame({"policy": [], "estimator": []})
    plan = plan_budget_table(None, verdicts, "pi_0", {"plan_prompt_cost": 0.01, "plan_budget_multiples": [1]},
                             {"price_per_label": 0.1, "votes_per_item": 3})
    assert len(plan) == 0 and len(plan.columns) > 0  # an empty CSV with a header, readable again


def test_verdict_section_states_best_policy_runner_up_and_readiness(run):
    result, estimates, truth = run
    # pi_worse's rows are refused (its calibration does not transport): a gate failed, so no decision.
    _, _, sections = build_report(configuration=CONFIGURATION, baseline="pi_0", policy_estimates=estimates,
                                  policy_differences=result.differences, estimation_result=result, policy_truth=truth)
    blocks = next(s for s in sections if s.id == "verdicts").blocks
    assert blocks[0].startswith("Best policy: pi_better, runner-up ")
    assert "decision NOT ready" in blocks[0] and "refused rows: pi_worse" in blocks[0]
    table = blocks[2]
    assert len(table) == 6 and {"p_value", "p_bh", "p_bonferroni", "favours"} <= set(table.columns)

    # Without the biased judge nothing is refused and pi_better is clearly best: the decision is ready.
    d = simulate(n=1500, oracle_fraction=0.3, seed=3, probe_size=60, fresh_labels_for_logging=True)
    clean = estimate_policies(CJEDataset.from_frames(d.logged, fresh_draws=d.fresh, probes=d.probes),
                              EstimationConfig.from_params({"estimators": ["naive", "direct"]}))
    t = {p: true_value(p) for p in ("pi_0", "pi_hot", "pi_better", "pi_worse")}
    second = sorted(t, key=t.get)[-2]
    assert t["pi_better"] - t[second] > 0.05
    _, _, sections = build_report(configuration=CONFIGURATION, baseline="pi_0", policy_estimates=clean.estimates,
                                  policy_differences=clean.differences, estimation_result=clean)
    sentence = next(s for s in sections if s.id == "verdicts").blocks[0]
    assert sentence.startswith("Best policy: pi_better, runner-up ") and "DECISION READY" in sentence, sentence
    plt.close("all")
