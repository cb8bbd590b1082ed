"""What a run would ask of a paid API, computed from the parameters alone (nothing is sent).

``kedro cje-dry-run --env ENV`` prints, per stage and policy, the number of calls, the tokens they
would send and receive, and their cost under ``prices``. Token counts are estimates without the
model's tokenizer:

* input tokens = (characters of the prompt, system prompt, rubric and response) / 4 (English BPE
  text averages about 4 characters per token) + 8 per chat turn for the template's markers;
* output tokens are at most ``max_tokens`` per call, so the output and cost columns are **upper
  bounds**; teacher forcing is one echo call per item (the two-call fallback, used only where
  the prompt's last and the response's first characters merge into one token, adds a second);
* responses that do not exist yet (teacher forcing and judging read them) are taken at
  ``max_tokens`` tokens.

Prompt lengths come from the run's prompt table when ``data_prep`` has written it, otherwise from
the mean of real Chatbot Arena prompts (:data:`ARENA_MEAN_PROMPT_CHARS`).

Each row is priced by the backend block that would serve it: a policy's own
``policies.<name>.backend`` (generation and teacher forcing of that policy), ``judge.backend``,
``labeling.llm_oracle.backend``, else the top-level ``backend``; only ``openai_compatible`` blocks
cost anything, each under its own ``prices``, and each block's ``budget_usd`` is compared with the
rows charged to its request record (``store_path``; blocks may share one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from arena_cje.experiment import backend_blocks, backend_config, judge_spec, policy_specs, serving_backend

#: Mean prompt length in characters of the 1,000 Arena prompts of the shared CJE sample.
ARENA_MEAN_PROMPT_CHARS = 138.0
CHARS_PER_TOKEN = 4.0
TURN_OVERHEAD_TOKENS = 8


@dataclass(frozen=True)
class PlannedCalls:
    """One row of the dry run: the calls one stage sends for one policy (or the judge/oracle).

    ``backend`` is the block that serves them (``backend``, ``policies.<name>.backend``,
    ``judge.backend`` or ``labeling.llm_oracle.backend``).
    """

    stage: str
    policy: str
    model: str
    calls: int
    input_tokens: int
    max_output_tokens: int
    max_cost_usd: float
    backend: str = "backend"


def _tokens(chars: float, turns: int) -> float:
    return chars / CHARS_PER_TOKEN + TURN_OVERHEAD_TOKENS * turns


def _serving_block(params: Mapping[str, Any], fields: Mapping[str, Any] | None, where: str) -> tuple[str, str, dict[str, Any]]:
    """``(place, backend name, options)`` of the block serving ``fields`` (its own, else the top-level one)."""
    place, block = serving_backend(fields, params["backend"], where)
    return (place, *backend_config(block, place))


def plan_run(params: Mapping[str, Any], prompt_chars: Sequence[int] | None = None) -> list[PlannedCalls]:
    """Calls per stage and policy that ``kedro run`` would send with ``params``.

    Args:
        params: The run's parameters (as ``kedro run`` sees them).
        prompt_chars: Character lengths of the run's prompts; ``None`` uses
            ``prompts.output_samples`` prompts of :data:`ARENA_MEAN_PROMPT_CHARS` characters.

    Returns:
        Rows for generation and teacher forcing (per policy), judging (all responses, and the
        re-score subset) and, when ``labeling.oracle`` is ``llm``, the LLM oracle; stage and
        policy names are those of the request record (``kedro cje-status``). Each row is priced
        by the block that serves it (free unless it is ``openai_compatible``).
    """
    n = len(prompt_chars) if prompt_chars is not None else int(params["prompts"]["output_samples"])
    mean_chars = (sum(prompt_chars) / n if n else 0.0) if prompt_chars is not None else ARENA_MEAN_PROMPT_CHARS
    specs = policy_specs(params["policies"], params.get("policy_defaults"))
    logging = specs[params["logging_policy"]]
    judge = judge_spec(params["judge"])

    def row(block: tuple[str, str, dict[str, Any]], stage: str, policy: str, model: str, calls: int,
            input_tokens: float, max_output: int) -> PlannedCalls:
        where, name, options = block
        prices = (options.get("prices") or {}) if name == "openai_compatible" else {}
        price = prices.get(model, prices.get("default", {})) or {}
        cost = (input_tokens * float(price.get("prompt", 0.0)) + max_output * float(price.get("completion", 0.0))) / 1000
        return PlannedCalls(stage, policy, model, calls, round(input_tokens), int(max_output), cost, where)

    served = {name: _serving_block(params, params["policies"][name], f"policies.{name}.backend") for name in specs}
    rows = []
    response_chars = logging.max_tokens * CHARS_PER_TOKEN
    for spec in specs.values():
        system = len(spec.system_prompt)
        rows.append(row(served[spec.name], "generate", spec.name, spec.model, n,
                        n * _tokens(mean_chars + system, 3), n * spec.max_tokens))
    for spec in specs.values():
        system = len(spec.system_prompt)
        # Echo calls send prompt + logged response and generate nothing.
        per_item = _tokens(mean_chars + system + response_chars, 3)
        rows.append(row(served[spec.name], "teacher_force", spec.name, spec.model, n, n * per_item, 0))
    judge_block = _serving_block(params, params["judge"], "judge.backend")
    rescore = float(judge_block[2].get("judge_rescore_fraction", 0.0) or 0.0)
    per_judgement = _tokens(len(judge.rubric) + mean_chars + logging.max_tokens * CHARS_PER_TOKEN, 2)
    # The request record files judgements under "judge" (all policies together) and "judge_rescore".
    n_judged = n * len(specs)
    rows.append(row(judge_block, "judge", "judge", judge.model, n_judged, n_judged * per_judgement, n_judged * judge.max_tokens))
    if rescore > 0:
        k = round(n_judged * rescore)
        rows.append(row(judge_block, "judge", "judge_rescore", judge.model, k, k * per_judgement, k * judge.max_tokens))
    labeling = params.get("labeling") or {}
    if labeling.get("oracle") == "llm":
        oracle = labeling.get("llm_oracle") or {}
        n_items = (
            round(n * float(params["split"]["calibration_fraction"]))
            + int(labeling.get("probe_size", 0)) * (len(specs) - 1)
            + int(labeling.get("gold_items", 0))
            + int(labeling.get("duplicate_items", 0))
        )
        calls = n_items * int(labeling.get("votes_per_item", 1))
        per_call = _tokens(len(oracle.get("rubric", "")) + mean_chars + response_chars, 2)
        model = oracle.get("model", judge.model)
        rows.append(row(_serving_block(params, oracle, "labeling.llm_oracle.backend"), "oracle", "llm_oracle", model,
                        calls, calls * per_call, calls * int(oracle.get("max_tokens", 16))))
    return rows


@dataclass(frozen=True)
class Budget:
    """A paid block's ``budget_usd`` and the blocks whose calls count against it.

    ``budget_usd`` caps everything recorded in the block's request record, so the blocks sharing
    that record (``store_path``) all count.
    """

    backend: str
    budget_usd: float | None
    charged: tuple[str, ...]


def budgets(params: Mapping[str, Any]) -> list[Budget]:
    """The ``budget_usd`` of every ``openai_compatible`` block of the run (``None`` when it has none)."""
    from arena_cje.backends.openai_compatible import DEFAULT_STORE_PATH

    paid = {}
    for where, block in backend_blocks(params).items():
        name, options = backend_config(block, where)
        if name == "openai_compatible":
            paid[where] = options
    record = {where: options.get("store_path", DEFAULT_STORE_PATH) for where, options in paid.items()}
    return [
        Budget(where, options.get("budget_usd"),
               tuple(w for w in paid if record[w] and record[w] == record[where]) or (where,))
        for where, options in paid.items()
    ]


def format_plan(rows: Sequence[PlannedCalls], caps: Sequence[Budget], already_done: Mapping[tuple[str, str], int]) -> list[str]:
    """The dry run's table, totals and the budget verdict of each paid block, one string per line.

    Args:
        rows: The planned calls (:func:`plan_run`).
        caps: The run's budgets (:func:`budgets`).
        already_done: Calls already in the request record(s), per (stage, policy).
    """
    several = len({r.backend for r in rows}) > 1
    header = f"{'stage':14s} {'policy':16s} {'calls':>7s} {'recorded':>8s} {'tokens in':>10s} {'tokens out <=':>13s} {'cost $ <=':>10s}"
    header += "  backend" if several else ""
    lines = [header, "-" * len(header)]
    for r in rows:
        done = already_done.get((r.stage, r.policy), 0)
        lines.append(
            f"{r.stage:14s} {r.policy:16s} {r.calls:7d} {done:8d} {r.input_tokens:10d} {r.max_output_tokens:13d} "
            f"{r.max_cost_usd:10.4f}" + (f"  {r.backend}" if several else "")
        )
    total = sum(r.max_cost_usd for r in rows)
    lines.append("-" * len(header))
    lines.append(
        f"total: {sum(r.calls for r in rows)} calls, {sum(r.input_tokens for r in rows)} tokens in, "
        f"<= {sum(r.max_output_tokens for r in rows)} tokens out, <= ${total:.4f}"
    )
    for cap in caps:
        if cap.budget_usd is None:
            continue
        bound = sum(r.max_cost_usd for r in rows if r.backend in cap.charged)
        verdict = "within" if bound <= cap.budget_usd else "OVER"
        of = f" of {cap.backend} (<= ${bound:.4f} on its request record)" if len(caps) > 1 else ""
        lines.append(f"budget_usd ${cap.budget_usd:.2f}{of}: the upper bound is {verdict} the cap")
    lines.append("'recorded' = calls already in the request record (a rerun does not send them again). "
                 "Tokens are estimated at 4 characters per token; nothing was sent.")
    return lines
