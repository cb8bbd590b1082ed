"""Project CLI commands, discovered by Kedro in ``<package>/cli.py``.

* ``kedro check-models [--env ENV]``: access to every configured model and whether teacher forcing
  reproduces generation log-probs, one verdict per policy (exit code 1 unless all pass).
* ``kedro cje-status [--env ENV]``: per stage and policy, what the durable request record holds:
  completed, failed, tokens, cost so far.
* ``kedro cje-dry-run [--env ENV] [--params ...]``: calls, tokens and cost per stage and policy that
  ``kedro run`` would send, without sending anything.
* ``kedro cje-plan --budget B [--comparison pi_cot-pi_0] [--env ENV]``: prompts, calibration labels and
  probe labels minimising the comparison's CI half-width within the budget, and the minimum detectable
  effect (``arena_cje.cje.planning``); from a pilot run's saved ``estimation_result`` or the simulated world.

``run`` is re-exported because ``python -m arena_cje`` looks it up here once this module exists.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import requests
from kedro.config import MissingConfigException
from kedro.framework.cli.project import run  # noqa: F401 - used by arena_cje.__main__
from kedro.framework.cli.utils import _split_params, env_option
from kedro.framework.project import settings

from arena_cje.backends.base import generate_batch, judge_batch, teacher_force_batch
from arena_cje.backends.store import RequestStore
from arena_cje.dry_run import budgets, format_plan, plan_run
from arena_cje.experiment import (
    BACKEND_PARAMS,
    BackendRegistry,
    MissingCredentialsError,
    backend_blocks,
    backend_config,
    judge_spec,
    policy_specs,
    resolve_backends_in,
    serving_backend,
)

#: Prompts for the self-check: short, and ending in punctuation (the token-merge case).
CHECK_PROMPTS = (
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "Is 17 a prime number? Answer briefly!",
)


@click.group(name="arena_cje")
def cli() -> None:
    """Arena CJE project commands."""


def _params(env: str | None, extra_params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The run's parameters with every backend block resolved as the run's nodes get them (the
    top-level ``backend`` and the blocks of policies, the judge and the LLM oracle)."""
    session = settings.SESSION_CLASS.create(env=env, save_on_close=False, runtime_params=dict(extra_params or {}))
    context = session.load_context()
    params = dict(context.params)
    try:
        credentials = context.config_loader["credentials"]
    except MissingConfigException:
        credentials = {}
    for key in BACKEND_PARAMS:
        if key in params:
            params[key] = resolve_backends_in(key, params[key], context.project_path, credentials, context.env)
    return params


def reachable(base_url: str, timeout: float = 10.0, where: str = "backend") -> str | None:
    """``None`` if ``base_url``'s host answers HTTP at all (any status), else why not, in one line
    naming the block (``where``) whose ``base_url`` it is."""
    host = urlsplit(base_url).netloc or base_url
    try:
        requests.get(f"{base_url.rstrip('/')}/models", timeout=timeout)
    except requests.RequestException as exc:
        reason = type(exc).__name__
        return f"cannot reach {host} ({reason}): check the network and {where}.openai_compatible.base_url"
    return None


def _for_check(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A backend block as the self-check builds it: it never writes to the experiment's durable record."""
    name, options = backend_config(block, where)
    if name == "openai_compatible":
        options["store_path"] = None
        options.setdefault("progress", False)
    return {"name": name, name: options}


def check_models(params: Mapping[str, Any], n_samples: int = 2) -> tuple[list[str], bool]:
    """Run the self-check for every policy, on its own backend, and for the judge, on its own.

    Backends with a ``self_check`` method (the OpenAI-compatible one) compare token log-probs of
    the generation with teacher forcing at T=1; other backends compare the generation-time
    ``logprob`` with the teacher-forced one (where both exist). Each distinct backend is built
    once; a policy or judge on a block of its own is checked there and its line names the block.

    Returns:
        ``(lines to print, all passed)``.
    """
    prompts = list(CHECK_PROMPTS[: max(1, n_samples)])
    lines, ok = [], True
    with BackendRegistry() as backends:  # closes the backends' connections when the check ends
        for name, spec in policy_specs(params["policies"], params.get("policy_defaults")).items():
            where, block = serving_backend(params["policies"][name], params["backend"], f"policies.{name}.backend")
            block = _for_check(block, where)
            verdict, details = _check_policy(backends.get(block), spec, prompts)
            ok &= verdict == "PASS"
            on = f", on {where} ({block['name']})" if where != "backend" else ""
            lines.append(f"{verdict:5s} policy {name} (model {spec.model}, T={spec.temperature}{on})")
            lines.extend(f"      {d}" for d in details)
        judge = judge_spec(params["judge"])
        where, block = serving_backend(params["judge"], params["backend"], "judge.backend")
        verdict, detail = _check_judge(lambda: backends.get(_for_check(block, where)), judge, prompts[0])
        ok &= verdict == "PASS"
        on = f", on {where}" if where != "backend" else ""
        lines.append(f"{verdict:5s} judge (model {judge.model}{on}): {detail}")
    return lines, ok


def _check_policy(backend: Any, spec: Any, prompts: Sequence[str]) -> tuple[str, list[str]]:
    if hasattr(backend, "self_check"):
        report = backend.self_check(spec, list(prompts))
        return report.verdict, report.details
    return _generic_check(backend, spec, prompts)


def _check_judge(backend: Callable[[], Any], judge: Any, prompt: str) -> tuple[str, str]:
    """The judge's verdict on one answer; any failure (building the backend included) is its verdict."""
    try:
        result = judge_batch(backend(), [prompt], ["Paris."], judge)[0]
    except Exception as exc:  # noqa: BLE001 - reported as the judge's verdict
        return "ERROR", str(exc)
    if result.score is None:
        return "FAIL", f"{result.error}; raw={result.raw[:80]!r}"
    return "PASS", f"score {result.score}"


def _generic_check(backend: Any, spec: Any, prompts: Sequence[str], tolerance: float = 1e-4) -> tuple[str, list[str]]:
    try:
        gens = generate_batch(backend, list(prompts), spec, list(range(len(prompts))))
        ended = [not g.usage.get("truncated") for g in gens]
        forced = teacher_force_batch(backend, list(prompts), [g.text for g in gens], spec, ended=ended)
    except Exception as exc:  # noqa: BLE001
        return "ERROR", [str(exc)]
    details, verdict = [], "PASS"
    for g, f in zip(gens, forced):
        if g.error or f.error or g.logprob is None or f.logprob is None:
            verdict = "FAIL"
            details.append(f"missing: generation error={g.error} forced error={f.error}")
            continue
        diff = abs(g.logprob - f.logprob)
        details.append(f"{'ok ' if diff <= tolerance else 'BAD'} generated={g.logprob:.4f} forced={f.logprob:.4f}")
        verdict = verdict if diff <= tolerance else "FAIL"
    return verdict, details


def status_lines(store_path: str | Path, budget_usd: float | None = None) -> list[str]:
    """Table of the durable record: per stage and policy counts, failures, tokens and cost."""
    path = Path(store_path)
    if not path.exists():
        return [f"no request record at {path} yet"]
    with RequestStore(path) as store:
        rows = store.summary()
    header = f"{'stage':14s} {'policy':16s} {'done':>6s} {'failed':>6s} {'no value':>8s} {'tokens in':>10s} {'tokens out':>10s} {'cost $':>9s}"
    lines = [f"request record: {path}", header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.stage:14s} {r.policy:16s} {r.done:6d} {r.failed:6d} {r.with_error:8d} {r.prompt_tokens:10d} "
            f"{r.completion_tokens:10d} {r.cost_usd:9.4f}"
        )
    total = sum(r.cost_usd for r in rows)
    lines.append("-" * len(header))
    budget = "" if budget_usd is None or (isinstance(budget_usd, float) and math.isnan(budget_usd)) else f" of budget ${budget_usd:.2f}"
    lines.append(f"total cost so far ${total:.4f}{budget}")
    lines.append("'done' = call completed (value may still be missing: 'no value'); 'failed' = retried on the next run")
    return lines


@cli.command("check-models")
@env_option
@click.option("--n-samples", default=2, show_default=True, help="Responses checked per policy.")
@click.option("--params", "extra_params", type=click.UNPROCESSED, default="", callback=_split_params,
              help="Parameter overrides as for `kedro run --params`.")
def check_models_command(env: str | None, n_samples: int, extra_params: dict[str, Any]) -> None:
    """Verify model access and that teacher forcing reproduces generation log-probs."""
    try:
        params = _params(env, extra_params)
    except MissingCredentialsError as exc:
        raise click.ClickException(str(exc)) from None
    for where, block in backend_blocks(params).items():
        name, options = backend_config(block, where)
        if name == "openai_compatible":
            problem = reachable(options["base_url"], where=where)
            if problem:
                raise click.ClickException(problem)
    lines, ok = check_models(params, n_samples=n_samples)
    for line in lines:
        click.echo(line)
    click.echo("ALL PASS" if ok else "SOME CHECKS DID NOT PASS (see above)")
    if not ok:
        raise SystemExit(1)


@cli.command("cje-status")
@env_option
def cje_status_command(env: str | None) -> None:
    """Show what each stage has done per policy: counts, failures, cost so far."""
    stores = _stores(env)
    if not stores:
        click.echo("no backend of this run keeps a durable request record (openai_compatible with a store_path)")
        return
    for store_path, options in stores.items():
        for line in status_lines(store_path, options.get("budget_usd")):
            click.echo(line)


def _stores(env: str | None, extra_params: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Request record path (absolute) -> the options of the first backend block keeping it, over
    every ``openai_compatible`` block of the run (blocks may share one record); credentials not needed."""
    session = settings.SESSION_CLASS.create(env=env, save_on_close=False, runtime_params=dict(extra_params or {}))
    context = session.load_context()
    from arena_cje.backends.openai_compatible import DEFAULT_STORE_PATH

    stores: dict[str, dict[str, Any]] = {}
    for where, block in backend_blocks(context.params).items():
        name, options = backend_config(block, where)
        store_path = options.get("store_path", DEFAULT_STORE_PATH) if name == "openai_compatible" else None
        if store_path:
            path = Path(store_path) if Path(store_path).is_absolute() else Path(context.project_path) / store_path
            stores.setdefault(str(path), options)
    return stores


@cli.command("cje-dry-run")
@env_option
@click.option("--params", "extra_params", type=click.UNPROCESSED, default="", callback=_split_params,
              help="Parameter overrides as for `kedro run --params`, e.g. prompts.output_samples=200.")
def cje_dry_run_command(env: str | None, extra_params: dict[str, Any]) -> None:
    """Print the calls, tokens and cost per stage and policy a run would send; send nothing."""
    session = settings.SESSION_CLASS.create(env=env, save_on_close=False, runtime_params=dict(extra_params or {}))
    context = session.load_context()
    params = dict(context.params)
    prompt_chars = None
    try:
        prompts = context.catalog.load("prompts")
        n = int(params["prompts"]["output_samples"])
        if len(prompts) >= n:
            prompt_chars = prompts["prompt"].head(n).str.len().tolist()
    except Exception:  # noqa: BLE001 - no prompt table yet: the Arena mean is used
        prompt_chars = None
    rows = plan_run(params, prompt_chars)
    done: dict[tuple[str, str], int] = {}
    for store_path in _stores(env, extra_params):
        if Path(store_path).exists():
            with RequestStore(store_path) as store:
                for r in store.summary():
                    done[(r.stage, r.policy)] = done.get((r.stage, r.policy), 0) + r.done
    source = "the run's prompt table" if prompt_chars is not None else "the mean length of Arena prompts"
    blocks = backend_blocks(params)
    names = ", ".join(f"{backend_config(block, where)[0]}" + ("" if where == "backend" else f" ({where})")
                      for where, block in blocks.items())
    click.echo(f"dry run for env {env or 'local'}: backend {names}, prompt lengths from {source}")
    for line in format_plan(rows, budgets(params), done):
        click.echo(line)


def _plan_pilot(context: Any, params: Mapping[str, Any], pilot: str | None, estimator: str,
                partitions: int) -> tuple[list[Any], str]:
    """Pilot results for the planner: a saved ``estimation_result`` when one exists, else the simulated world."""
    import pickle

    from arena_cje.cje import EstimationConfig
    from arena_cje.cje.planning import pilot_results

    path = Path(pilot) if pilot else Path(context.project_path) / "data/07_model_output/estimation_result.pkl"
    if pilot != "simulated" and path.exists():
        with path.open("rb") as fh:
            result = pickle.load(fh)  # noqa: S301 - the project's own catalog output
        if result.calibration is None or not result.outputs:
            raise click.ClickException(f"{path}: the pilot has no calibration or no estimator outputs to plan from")
        return [result], f"pilot run {path} ({result.calibration.n_labelled} labels)"
    if pilot and pilot != "simulated":
        raise click.ClickException(f"--pilot {pilot}: no such file")
    from arena_cje.pilot import simulated_pilot

    cfg = EstimationConfig.from_params(params.get("estimation"))
    cfg = replace(cfg, estimators=(estimator,))
    frac = float(params.get("split", {}).get("calibration_fraction", 0.25))
    n = int(params.get("prompts", {}).get("output_samples", 1000))
    data = simulated_pilot(params, n_prompts=n, oracle_fraction=frac, seed=0,
                           logprobs=estimator not in ("naive", "direct"))
    return pilot_results(data, cfg, partitions), (f"simulated world ({n} prompts, {round(frac * n)} labels, "
                                                  f"{partitions} fold partitions; no label needed)")


@cli.command("cje-plan")
@env_option
@click.option("--budget", "budgets", type=float, multiple=True, required=True, help="Budget(s) to plan for (repeatable).")
@click.option("--comparison", "comparisons", multiple=True,
              help="'POLICY' (a level) or 'POLICY-BASELINE' (a difference); repeatable. Default: every target "
                   "minus the logging policy.")
@click.option("--estimator", default="direct", show_default=True, help="Estimator whose interval is planned.")
@click.option("--pilot", default=None,
              help="Saved estimation_result.pkl of a pilot run, or 'simulated'. Default: the run's "
                   "data/07_model_output/estimation_result.pkl when it exists, else the simulated world.")
@click.option("--prompt-cost", type=float, default=None,
              help="API cost per prompt (all policies, teacher forcing, judging). Default: the dry run's "
                   "estimate (`kedro cje-dry-run`) from backend prices; required when those are 0.")
@click.option("--label-price", type=float, default=None, help="Price per vote. Default: labeling.price_per_label.")
@click.option("--votes", type=int, default=None, help="Votes per label. Default: labeling.votes_per_item.")
@click.option("--power", type=float, default=0.8, show_default=True, help="Power of the minimum detectable effect.")
@click.option("--partitions", type=int, default=4, show_default=True,
              help="Fold partitions of the simulated pilot (averages the jackknife's noise).")
@click.option("--params", "extra_params", type=click.UNPROCESSED, default="", callback=_split_params,
              help="Parameter overrides as for `kedro run --params`.")
def cje_plan_command(env: str | None, budgets: tuple[float, ...], comparisons: tuple[str, ...], estimator: str,
                     pilot: str | None, prompt_cost: float | None, label_price: float | None, votes: int | None,
                     power: float, partitions: int, extra_params: dict[str, Any]) -> None:
    """Plan prompts, calibration labels and probe labels for a budget; print half-width and MDE. Needs no labels."""
    from arena_cje.cje.planning import CostModel, fit_variance_model, plan_table

    session = settings.SESSION_CLASS.create(env=env, save_on_close=False, runtime_params=dict(extra_params or {}))
    context = session.load_context()
    params = dict(context.params)
    labeling = params.get("labeling") or {}
    logging = str(params["logging_policy"])
    targets = [p for p in params["policies"] if p != logging]
    probe_size = int(labeling.get("probe_size", 0) or 0)
    if prompt_cost is None:
        n = int(params["prompts"]["output_samples"])
        rows = plan_run(params)
        prompt_cost = sum(r.max_cost_usd for r in rows if r.stage in ("generate", "teacher_force", "judge")) / max(n, 1)
        if prompt_cost == 0:
            raise click.ClickException("the dry run prices every API call at 0 (backend without `prices`, e.g. the "
                                       "simulated one): pass --prompt-cost (e.g. --env fireworks, or --prompt-cost 0.01)")
    cost_model = CostModel(prompt_cost=float(prompt_cost),
                           label_price=float(labeling.get("price_per_label", 0.0) if label_price is None else label_price),
                           votes_per_label=int(labeling.get("votes_per_item", 1) if votes is None else votes),
                           n_probe_policies=len(targets) if probe_size > 0 else 0)
    results, source = _plan_pilot(context, params, pilot, estimator, partitions)
    comps = list(comparisons) or [f"{t}-{logging}" for t in targets]
    try:
        model = fit_variance_model(results, comparisons=comps, estimators=[estimator])
        alpha = float((params.get("estimation") or {}).get("alpha", 0.05))
        min_labels = int(((params.get("estimation") or {}).get("gates") or {}).get("min_labels", 20))
        table = plan_table(budgets, cost_model, model, comps, estimator, alpha, power, min_labels=min_labels,
                           min_probe_labels=probe_size)
    except (KeyError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"variance model from the {source}; estimator {estimator}")
    click.echo(f"costs: ${cost_model.prompt_cost:.4f} per prompt, ${cost_model.label_cost:.2f} per label "
               f"({cost_model.votes_per_label} votes x ${cost_model.label_price:.2f}), probe labels for "
               f"{cost_model.n_probe_policies} policies (at least {probe_size} each)")
    for line in format_plan_table(table, alpha, power):
        click.echo(line)


def format_plan_table(table: Any, alpha: float, power: float) -> list[str]:
    """The planner's table as fixed-width lines."""
    header = (f"{'comparison':24s} {'budget':>9s} {'prompts':>8s} {'labels':>7s} {'probe/pol':>9s} {'cost':>9s} "
              f"{'half-width':>10s} {'MDE':>7s}")
    lines = [header, "-" * len(header)]
    for r in table.itertuples():
        lines.append(f"{r.comparison:24s} {r.budget:9.2f} {r.n_prompts:8d} {r.calibration_labels:7d} {r.probe_labels:9d} "
                     f"{r.cost:9.2f} {r.half_width:10.4f} {r.mde:7.4f}")
    lines.append(f"half-width = predicted mean {100 * (1 - alpha):.0f}% CI half-width; MDE = smallest true difference "
                 f"detected with {100 * power:.0f}% power (see docs/planning.md)")
    return lines
