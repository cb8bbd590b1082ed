"""One plain-language sentence per policy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .tables import differences_vs_baseline

#: Which estimator speaks for a policy: the first of these that ran and was not refused.
VERDICT_PREFERENCE: tuple[str, ...] = (
    "stacked_dr", "tmle", "mrdr", "dr_cpo", "direct", "calibrated_ips", "snips",
)


def _fmt_ci(estimate: float, lo: float, hi: float, signed: bool) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(estimate)} [{f.format(lo)}, {f.format(hi)}]"


def policy_verdicts(
    estimates: pd.DataFrame,
    differences: pd.DataFrame,
    baseline: str,
    transport: pd.DataFrame | None = None,
    preference: Sequence[str] = VERDICT_PREFERENCE,
) -> pd.DataFrame:
    """A verdict per policy from its preferred usable estimator.

    For each policy the speaking estimator is the first in ``preference`` whose level row is not
    refused. Target policies are stated as the paired difference against ``baseline``
    ("pi_cot vs pi_0: +0.046 [+0.009, +0.083], reliable: better than pi_0"), the baseline as its
    level. The qualifier is ``reliable`` (level and difference rows ``ok``), ``use with caution``
    (a ``warning``, reasons given) or ``refused`` (no usable estimator; the reasons given, with
    "calibration does not transport" first when the probe audit's state is FAIL). "better/worse" needs the
    95% CI of the difference to exclude 0; otherwise "no clear difference".

    Returns:
        Columns ``policy``, ``estimator``, ``status`` (reliable / caution / refused), ``verdict``.
    """
    failed_transport = set()
    if transport is not None and len(transport):
        failed = (transport["state"] == "FAIL") if "state" in transport else ~transport["passed"].astype(bool)
        failed_transport = set(transport.loc[failed, "policy"])
    diffs = differences_vs_baseline(differences, baseline)
    rows = []
    for policy in dict.fromkeys(estimates["policy"]):
        est = estimates[estimates["policy"] == policy].set_index("estimator")
        usable = [e for e in preference if e in est.index and est.loc[e, "status"] != "refused"
                  and np.isfinite(est.loc[e, "estimate"])]
        if policy != baseline:
            # Prefer estimators that also have a usable paired difference against the baseline.
            paired = set(diffs.loc[(diffs["policy"] == policy) & np.isfinite(diffs["estimate"].astype(float))
                                   & (diffs["status"] != "refused"), "estimator"])
            usable = [e for e in usable if e in paired] + [e for e in usable if e not in paired]
        if not usable:
            reasons = [part.strip() for r in est.loc[[e for e in preference if e in est.index], "reasons"].dropna()
                       for part in str(r).split(";") if part.strip()]
            why = "; ".join(dict.fromkeys(reasons)) or "no calibrated estimator ran"
            if policy in failed_transport:
                why = "calibration does not transport (" + why + ")"
            rows.append({"policy": policy, "estimator": None, "status": "refused",
                         "verdict": f"{policy}: refused: {why}"})
            continue
        name = usable[0]
        level = est.loc[name]
        reasons = [str(level["reasons"])] if isinstance(level["reasons"], str) and level["reasons"] else []
        if policy == baseline:
            text = f"{policy} (logging policy): {_fmt_ci(level['estimate'], level['ci_lower'], level['ci_upper'], False)}"
            status = "caution" if level["status"] != "ok" else "reliable"
        else:
            d = diffs[(diffs["policy"] == policy) & (diffs["estimator"] == name)]
            if d.empty or not np.isfinite(d["estimate"].iloc[0]):
                text = f"{policy}: {_fmt_ci(level['estimate'], level['ci_lower'], level['ci_upper'], False)} (no paired difference against {baseline})"
                status = "caution" if level["status"] != "ok" else "reliable"
            else:
                r = d.iloc[0]
                text = f"{policy} vs {baseline}: {_fmt_ci(r['estimate'], r['ci_lower'], r['ci_upper'], True)}"
                status = "caution" if (level["status"] != "ok" or r["status"] != "ok") else "reliable"
                if r["status"] != "ok" and r["reasons"]:
                    reasons.append(str(r["reasons"]))
                direction = ("better than" if r["ci_lower"] > 0 else "worse than" if r["ci_upper"] < 0
                             else "no clear difference from")
                text += f", {{q}}: {direction} {baseline}"
        # A difference row repeats the policy's own reasons as "<policy>: ..."; say them once.
        parts = [p.strip().removeprefix(f"{policy}: ") for r in reasons for p in r.split(";") if p.strip()]
        qualifier = "reliable" if status == "reliable" else "use with caution (" + "; ".join(dict.fromkeys(parts)) + ")"
        text = text.replace(", {q}", f" ({name}), {qualifier}") if "{q}" in text else f"{text} ({name}), {qualifier}"
        rows.append({"policy": policy, "estimator": name, "status": status, "verdict": text})
    return pd.DataFrame(rows, columns=["policy", "estimator", "status", "verdict"])


def decision_estimator(decisions: pd.DataFrame, preference: Sequence[str] = VERDICT_PREFERENCE) -> str | None:
    """The estimator whose best-policy decision the report states.

    The first of ``preference`` with a decision and no failed gate; else the first with a decision
    (its failed gate is then stated); None when no estimator ranked two policies.
    """
    if decisions is None or decisions.empty:
        return None
    ranked = decisions[decisions["best"].notna()].set_index("estimator")
    candidates = [e for e in preference if e in ranked.index]
    clean = [e for e in candidates if not bool(ranked.loc[e, "gate_failed"])]
    return (clean or candidates or [None])[0]


def decision_sentence(decisions: pd.DataFrame, estimator: str, alpha: float) -> str:
    """"Best: pi_cot, runner-up pi_0: +0.046 [+0.009, +0.083] (p = 0.01); decision ready (stacked_dr)"."""
    d = decisions.set_index("estimator").loc[estimator]
    head = f"Best policy: {d['best']}, runner-up {d['runner_up']}"
    if np.isfinite(float(d["difference"])):
        head += (f": {d['best']} − {d['runner_up']} = {_fmt_ci(d['difference'], d['ci_lower'], d['ci_upper'], True)} "
                 f"({1 - alpha:.0%} CI, p = {float(d['p_value']):.3g})")
    ready = "DECISION READY" if bool(d["decision_ready"]) else "decision NOT ready"
    beats = ("; it also beats every other policy" if bool(d["beats_all"]) else "")
    return f"{head} ({estimator}). {ready}: {d['note'].split(': ', 1)[-1]}{beats}."


def run_summary_lines(
    estimates: pd.DataFrame,
    differences: pd.DataFrame,
    decisions: pd.DataFrame | None,
    baseline: str,
    alpha: float,
    report_path: str | None,
) -> list[str]:
    """What a finished ``kedro run`` says last: where the report is, the decision, one verdict per policy."""
    lines = [f"Report: {report_path}"] if report_path else []
    estimator = decision_estimator(decisions) if decisions is not None else None
    if estimator is not None:
        lines.append(decision_sentence(decisions, estimator, alpha))
    verdicts = policy_verdicts(estimates, differences, baseline)
    lines.extend(f"  {v}" for v in verdicts["verdict"])
    return lines
