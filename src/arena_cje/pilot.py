"""A pilot from the simulated world, for planning before any label exists (``kedro cje-plan``).

``simulated_pilot`` runs the configured policies, judge and probe size through
:class:`arena_cje.backends.simulated.SimulatedBackend` (no network, no model files) and returns a
``CJEDataset`` in which a random ``oracle_fraction`` of the logging policy's responses carry their
exact true quality as oracle label (the simulated world knows it), as does a probe of
``labeling.probe_size`` fresh draws per target. Its estimates give the planner's variance model
(:mod:`arena_cje.cje.planning`) when no pilot run exists: the simulated world stands in for the real
one, so the plan is a first guess to refit on a real pilot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from arena_cje.backends.simulated import SimulatedBackend, synthetic_prompts
from arena_cje.cje import CJEDataset
from arena_cje.experiment import backend_config, judge_spec, policy_specs


def simulated_pilot(params: Mapping[str, Any], n_prompts: int = 1000, oracle_fraction: float = 0.25, seed: int = 0,
                    logprobs: bool = False) -> CJEDataset:
    """A pilot dataset of the configured experiment in the simulated world (module docstring).

    Args:
        params: The run's parameters (``policies``, ``policy_defaults``, ``logging_policy``, ``judge``,
            ``labeling.probe_size``; ``backend.simulated.seed`` when the backend is simulated).
        n_prompts: Prompts of the pilot.
        oracle_fraction: Share of the logging policy's responses with an oracle label.
        seed: Seed of prompts, responses and the labelled subset.
        logprobs: Also teacher-force the logged responses under every target (needed by the
            importance-weighted and DR estimators; slower).

    Returns:
        ``CJEDataset`` with a ``response_length`` covariate.
    """
    name, options = backend_config(params["backend"])
    world_seed = int(options.get("seed", 0)) if name == "simulated" else 0
    backend = SimulatedBackend(seed=world_seed, truth_draws_per_prompt=1, truth_min_total_draws=0)
    specs = policy_specs(params["policies"], params.get("policy_defaults"))
    logging = str(params["logging_policy"])
    judge = replace(judge_spec(params["judge"]), scale=(0.0, 1.0))  # estimation works on the unit scale
    probe_size = int((params.get("labeling") or {}).get("probe_size", 0) or 0)
    rng = np.random.default_rng(seed)
    prompts = synthetic_prompts(n_prompts, seed)
    texts, pids = prompts["prompt"].tolist(), [f"pilot{seed}_{i}" for i in range(n_prompts)]

    def respond(policy: str, offset: int) -> tuple[list[str], pd.DataFrame]:
        gens = backend.generate_batch(texts, specs[policy], [offset + i for i in range(n_prompts)])
        out = [g.text for g in gens]
        frame = pd.DataFrame({
            "prompt_id": pids, "draw_idx": 0,
            "judge_score": [j.score for j in backend.judge_batch(texts, out, judge)],
            "response_length": [float(len(t.split())) for t in out],
            "y": backend.true_quality_batch(texts, out),
        })
        return out, frame

    logged_text, logged = respond(logging, 0)
    labelled = np.zeros(n_prompts, dtype=bool)
    labelled[rng.choice(n_prompts, size=int(round(oracle_fraction * n_prompts)), replace=False)] = True
    logged["oracle_label"] = np.where(labelled, logged.pop("y"), np.nan)
    logged["base_policy_logprob"] = 0.0
    targets = [p for p in specs if p != logging]
    lp = {p: [None] * n_prompts for p in targets}
    if logprobs:
        gens = backend.generate_batch(texts, specs[logging], list(range(n_prompts)))
        logged["base_policy_logprob"] = [g.logprob for g in gens]
        for p in targets:
            lp[p] = [t.logprob for t in backend.teacher_force_batch(texts, logged_text, specs[p])]
    else:
        logged["base_policy_logprob"] = np.nan
    logged["target_policy_logprobs"] = [{p: lp[p][i] for p in targets} for i in range(n_prompts)]
    fresh = {logging: logged[["prompt_id", "draw_idx", "judge_score", "response_length", "oracle_label"]]}
    probes = {}
    for k, p in enumerate(targets, start=1):
        _, f = respond(p, 10_000_000 * k)
        y = f.pop("y")
        fresh[p] = f
        if probe_size > 0:
            pick = rng.choice(n_prompts, size=min(probe_size, n_prompts), replace=False)
            probes[p] = f.iloc[pick].assign(oracle_label=y.iloc[pick].to_numpy())
    if not logprobs:
        logged = logged.drop(columns=["target_policy_logprobs", "base_policy_logprob"])
    return CJEDataset.from_frames(logged.drop(columns="draw_idx"), fresh, probes, covariates=("response_length",))
