"""The run report: figures, plain-language verdicts, label-budget planner, HTML + Markdown.

No Kedro here: ``arena_cje.pipelines.reporting`` wires these functions into nodes.
"""

from .budget import COMPARISON_COLUMNS, compare_half_widths
from .build import SECTION_IDS, build_report
from .document import Figure, Section, figure_png, render_html, render_markdown
from .explore import largest_weights, logged_texts, thin_oracle_labels, worst_calibrated
from .figures import plot_calibration, plot_differences, plot_forest, plot_weight_diagnostics
from .tables import differences_vs_baseline, flatten_parameters, stage_summary
from .verdicts import VERDICT_PREFERENCE, decision_estimator, decision_sentence, policy_verdicts

__all__ = [
    "COMPARISON_COLUMNS", "SECTION_IDS", "VERDICT_PREFERENCE", "Figure", "Section", "build_report",
    "compare_half_widths", "decision_estimator", "decision_sentence", "differences_vs_baseline", "figure_png",
    "flatten_parameters", "largest_weights", "logged_texts",
    "thin_oracle_labels", "worst_calibrated",
    "plot_calibration", "plot_differences", "plot_forest", "plot_weight_diagnostics",
    "policy_verdicts", "render_html", "render_markdown", "stage_summary",
]
