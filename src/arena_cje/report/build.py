"""Assemble the run report from the run's tables, diagnostics and figures."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import pandas as pd

from arena_cje.cje.config import EstimationConfig

from .document import Figure, Section, render_html, render_markdown
from .figures import plot_calibration, plot_differences, plot_forest, plot_weight_diagnostics
from .tables import differences_vs_baseline, flatten_parameters
from .verdicts import decision_estimator, decision_sentence, policy_verdicts

#: Columns of the transport audit table shown in the report (``cje.audit.TransportAudit``).
TRANSPORT_REPORT_COLUMNS = ["policy", "state", "n_probe", "effective_clusters", "mean_residual", "std_error", "ci_lower",
                            "ci_upper", "margin", "p_equivalence_adj", "p_beyond_margin_adj"]

#: Section ids, in order (tests check each has content).
SECTION_IDS = (
    "verdicts", "estimates", "differences", "calibration", "weights", "transport", "budget", "stages",
    "teacher_forcing", "labeling", "configuration",
)


def estimation_config(estimation_result: Any) -> EstimationConfig:
    """The settings that produced ``estimation_result`` (the report restates none of them).

    Raises:
        ValueError: the result does not carry them (a pickle written before results did): re-run
            ``kedro run --pipelines estimation``.
    """
    config = getattr(estimation_result, "config", None)
    if not isinstance(config, EstimationConfig):
        raise ValueError("estimation_result carries no EstimationConfig (written by an older version): "
                         "re-run `kedro run --pipelines estimation` before rendering the report")
    return config


def build_report(
    *,
    configuration: Mapping[str, Any],
    baseline: str,
    policy_estimates: pd.DataFrame,
    policy_differences: pd.DataFrame,
    estimation_result: Any,
    policy_truth: pd.DataFrame | None = None,
    teacher_forcing_check: Mapping[str, Any] | None = None,
    stage_summary: pd.DataFrame | None = None,
    prompt_filter_report: Mapping[str, Any] | None = None,
    labeling_summary: Mapping[str, Any] | None = None,
    label_budget: pd.DataFrame | None = None,
    comparisons: pd.DataFrame | None = None,
    decisions: pd.DataFrame | None = None,
    figures: Mapping[str, bytes] | None = None,
    title: str = "Arena CJE run report",
) -> tuple[str, str, list[Section]]:
    """Build the report.

    The CI level and the Hill tail line come from the settings the estimates were made with
    (``estimation_result.config``), never from defaults restated here.

    Args:
        configuration: The run's parameter blocks, shown as the configuration table.
        baseline: The logging policy (``logging_policy``): differences and verdicts are against it.
        policy_estimates: One row per (policy, estimator) with ``truth`` where known.
        policy_differences: Paired differences (``policy - baseline`` per row).
        estimation_result: :class:`arena_cje.cje.EstimationResult` (calibration, weights, transport).
        policy_truth: True values (simulated backend), if known.
        teacher_forcing_check: The generation stage's log-prob self-check.
        stage_summary: Per stage and policy counts, failures, cost (:func:`tables.stage_summary`).
        prompt_filter_report: What the prompt filters removed.
        labeling_summary: Labels collected vs needed, agreement, QC, cost (optional).
        label_budget: Budget planner table (:func:`arena_cje.report.budget.plan_budget_table`), if one was planned.
        comparisons: Every pairwise comparison (``EstimationResult.comparisons``); taken from
            ``estimation_result`` if omitted.
        decisions: Best policy / runner-up per estimator (``EstimationResult.decisions``); taken
            from ``estimation_result`` if omitted.
        figures: PNGs of the report's figures by name (``forest_plot``, ``differences_plot``,
            ``calibration_plot``, ``weight_diagnostics_plot``), drawn from the same inputs by the
            plot nodes; a figure not given is drawn here.
        title: Page title.

    Returns:
        ``(html, markdown, sections)``.

    Raises:
        ValueError: ``estimation_result`` carries no configuration (:func:`estimation_config`).
    """
    config = estimation_config(estimation_result)
    alpha, hill_warn = config.alpha, config.gates.hill_warn
    transport = getattr(estimation_result, "transport_table", pd.DataFrame())
    calibration = getattr(estimation_result, "calibration", None)
    weights = getattr(estimation_result, "weights", {}) or {}
    sections: list[Section] = []
    rendered = dict(figures or {})

    def figure(name: str, draw: Callable[[], Any], caption: str) -> Figure:
        """The figure block ``name``: its given PNG, else drawn (drawing is the report's slowest part)."""
        return Figure(name, rendered[name] if name in rendered else draw(), caption)

    verdicts = policy_verdicts(policy_estimates, policy_differences, baseline, transport)
    if comparisons is None:
        comparisons = getattr(estimation_result, "comparisons", None)
    if decisions is None:
        decisions = getattr(estimation_result, "decisions", None)
    verdict_blocks: list[Any] = []
    chosen = decision_estimator(decisions) if decisions is not None else None
    if chosen is not None:
        verdict_blocks += [
            decision_sentence(decisions, chosen, alpha),
            f"Every pair of policies ({chosen}): difference policy_a − policy_b on shared prompts with its "
            f"{1 - alpha:.0%} CI (prompt-clustered, calibration uncertainty included), the t-test p-value and the "
            f"Benjamini–Hochberg (p_bh) and Bonferroni (p_bonferroni) adjusted p-values over the pairs; "
            f"'favours' names the better policy where p_bh < {alpha:g}. The decision is ready when the "
            f"best-minus-runner-up interval excludes 0 and no gate refused a policy.",
            comparisons.loc[comparisons["estimator"] == chosen,
                            ["policy_a", "policy_b", "estimate", "ci_lower", "ci_upper", "p_value", "p_bh",
                             "p_bonferroni", "favours", "status"]].reset_index(drop=True),
        ]
    else:
        verdict_blocks.append("No estimator ranked two or more policies: no best-policy decision.")
    verdict_blocks += [
        f"Each policy is judged by its preferred estimator that was not refused; target policies as the "
        f"paired difference against the logging policy {baseline} on the oracle scale, with "
        f"{1 - alpha:.0%} confidence intervals.",
        [f"[{r.status}] {r.verdict}" for r in verdicts.itertuples()],
    ]
    sections.append(Section("verdicts", "Verdict: best policy, every comparison, each policy", verdict_blocks))

    stage_blocks: list[Any] = []
    if prompt_filter_report:
        steps = pd.DataFrame(prompt_filter_report.get("steps", []), columns=["name", "rule", "removed", "remaining"])
        stage_blocks.append(
            f"Prompts: source {prompt_filter_report.get('source')}, {prompt_filter_report.get('input_rows')} input rows, "
            f"{prompt_filter_report.get('eligible')} eligible after the filters"
            + (":" if len(steps) else " (no filters apply to this source).")
        )
        if len(steps):
            stage_blocks.append(steps)
    if stage_summary is not None and len(stage_summary):
        stage_blocks += ["Per stage and policy: rows produced, failures (rows with an error, never imputed), "
                         "tokens and cost where the backend records them.", stage_summary]
    sections.append(Section("stages", "Run stages: counts, failures and cost",
                            stage_blocks or ["No stage summary was passed to the report."]))

    shown = policy_estimates.drop(columns=[c for c in ("var_if", "var_oua", "df") if c in policy_estimates])
    sections.append(Section("estimates", "Estimates", [
        figure("forest_plot", lambda: plot_forest(policy_estimates),
               "Every estimator's estimate and CI per policy; dashed line: true value where known; faded x: refused."),
        shown,
    ]))

    vs = differences_vs_baseline(policy_differences, baseline)
    sections.append(Section("differences", f"Paired differences against {baseline}", [
        figure("differences_plot", lambda: plot_differences(policy_differences, baseline),
               f"policy − {baseline} on shared prompts; an interval excluding 0 is a clear difference."),
        vs if len(vs) else f"No paired differences against {baseline}.",
    ]))

    if calibration is not None:
        cal_table = pd.DataFrame([
            {"quantity": "calibrator", "value": calibration.calibrator},
            {"quantity": "oracle labels", "value": calibration.n_labelled},
            {"quantity": "out-of-fold RMSE", "value": calibration.oof_rmse},
            {"quantity": "mean absolute calibration error", "value": calibration.mean_abs_calibration_error},
            *({"quantity": f"fold stability: {k}", "value": v} for k, v in calibration.fold_stability.items()),
        ])
        cal_blocks: list[Any] = [figure("calibration_plot", lambda: plot_calibration(calibration),
                                        "Left: labelled responses and the judge→oracle calibrator. Right: binned reliability."),
                                 cal_table, calibration.selection]
    else:
        cal_blocks = ["No calibration was fitted (too few oracle labels): calibrated estimators are refused."]
    sections.append(Section("calibration", "Calibration (judge → oracle)", cal_blocks))

    if weights:
        wt = estimation_result.weights_table
        sections.append(Section("weights", "Importance-weight diagnostics", [
            figure("weight_diagnostics_plot", lambda: plot_weight_diagnostics(weights, hill_warn),
                   "Raw log-weights, ESS fraction before/after SIMCal stabilisation, Hill tail index."),
            wt,
        ]))
    else:
        sections.append(Section("weights", "Importance-weight diagnostics",
                                ["No importance weights: no target-policy log-probs were available."]))

    gate_rows = policy_estimates[policy_estimates["status"] != "ok"][["policy", "estimator", "status", "reasons"]]
    tblocks: list[Any] = []
    if len(transport):
        states = transport["state"] if "state" in transport else transport["passed"].map({True: "PASS", False: "FAIL"})
        shown = [c for c in TRANSPORT_REPORT_COLUMNS if c in transport.columns]
        counts = states.value_counts()
        tblocks += [
            "Transport audit: an equivalence test of the calibrator's mean residual (oracle − calibrated judge) on "
            "each target policy's oracle-labelled probe against the margin ±δ (Horvitz–Thompson weighted when the "
            "probe is stratified; prompt-clustered standard errors; Holm-adjusted across the audited policies). "
            "PASS: the residual is within the margin; FAIL: it is beyond the margin; INCONCLUSIVE: neither is "
            "established; NOT_GRADED: fewer than the required effective probe prompts (no PASS); NOT_CHECKED: no "
            "probe. Level estimates of a FAIL report the probe-corrected value, of a PASS the bias-aware "
            "combination of borrowed and probe-corrected, of INCONCLUSIVE / NOT_GRADED a shrinkage between them "
            "(column level_source; transport_rule refuse refuses a FAIL instead). REFUSE-LEVEL: a level resting on "
            "the calibration is refused when 5% or more of the judge scores it uses lie outside the judge range "
            "of the labelled slice.",
            transport.assign(state=states)[shown] if shown else transport,
            "States: " + ", ".join(f"{st} {', '.join(transport.loc[states == st, 'policy'])}" for st in counts.index) + ".",
        ]
    else:
        tblocks.append("No probe slices: the transport of the calibration to the target policies was not audited.")
    tblocks += (["Gates: rows with a warning or refusal and why.", gate_rows] if len(gate_rows)
                else ["Gates: every estimate passed."])
    sections.append(Section("transport", "Transport audit and gates", tblocks))

    sections.append(Section("budget", "Budget planner", [
        "Prompts, calibration labels and probe labels per policy that minimise each comparison's CI half-width "
        "within a budget (this run's cost and multiples of it), with the minimum detectable effect at 80% power; "
        "the variance model is fitted to this run (arena_cje.cje.planning, docs/planning.md). "
        "`kedro cje-plan --budget B` plans any budget.",
        ("No budget was planned for this run." if label_budget is None
         else label_budget if len(label_budget) else "No calibrated estimate to plan for."),
    ]))

    if teacher_forcing_check:
        tf = pd.DataFrame([{"check": k, "value": v} for k, v in teacher_forcing_check.items()])
        sections.append(Section("teacher_forcing", "Teacher-forcing check", [
            "Log-probs recomputed by teacher forcing vs those returned at generation, on the logging policy.", tf]))
    else:
        sections.append(Section("teacher_forcing", "Teacher-forcing check", ["No teacher-forcing check was run."]))

    if labeling_summary:
        flat = flatten_parameters(labeling_summary).rename(columns={"parameter": "item"})
        sections.append(Section("labeling", "Human labeling", [
            "Labels collected vs needed, rater agreement, worker quality control and cost.", flat]))
    else:
        sections.append(Section("labeling", "Human labeling (optional)",
                                ["Optional section: no labeling summary was produced for this run."]))

    sections.append(Section("configuration", "Configuration", [
        "Parameters of the run:", flatten_parameters(configuration),
        "Estimation settings the estimates were made with (defaults filled in):",
        flatten_parameters({"estimation": asdict(config)}),
    ]))

    if policy_truth is not None and len(policy_truth) and "truth" in policy_truth:
        next(s for s in sections if s.id == "estimates").blocks.insert(1, "True policy values are known (simulated backend): "
                                  + ", ".join(f"{r.policy} {r.truth:.3f}" for r in policy_truth.itertuples()) + ".")

    sections.sort(key=lambda sec: SECTION_IDS.index(sec.id))
    subtitle = f"Logging policy {baseline}; policies: {', '.join(dict.fromkeys(policy_estimates['policy']))}."
    return render_html(title, sections, subtitle), render_markdown(title, sections, subtitle), sections
