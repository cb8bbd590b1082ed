"""A response bank from the project's simulated world, for fast Monte Carlo studies of the estimators.

World: ``arena_cje.backends.simulated.SimulatedBackend`` with the policies of ``conf/base/parameters.yml``
(``pi_0`` logs; ``pi_hot``, ``pi_cot``, ``pi_concise`` are targets; ``pi_0`` is its own target too, as in
the pipeline, so its weights are exactly 1).

Bank (built once, vectorised backend calls): a pool of P prompts (``synthetic_prompts``); per prompt,
D logged ``pi_0`` responses with their judge score, true quality Y, word count and teacher-forced
log-probs under every policy, and D fresh responses per target policy with judge score, Y and length.

Replication (``draw``): n prompts are drawn uniformly WITH replacement from the pool (so rows are
i.i.d. from the pool's prompt distribution and the usual, non-finite-population, SE applies; a
duplicate prompt gets a new ``prompt_id``); each row takes one of the prompt's D logged responses and,
per target, one of its D fresh responses, uniformly at random; an exact ``round(oracle_fraction * n)``
rows of the logged sample carry an oracle label. The logging policy's fresh draws are its logged
responses (with their labels), as in ``assemble_cje_dataset``.

Oracle label: the exact true quality Y (what ``true_value`` averages), not the mean of simulated
votes: ``rate`` clips votes at 0 and 10, which pulls labels near Y = 1 down (about -0.04 at Y = 0.95),
so mean-vote labels are biased for the estimand. ``label="votes"`` switches to mean(3 votes)/10.

Truth: V(pi) = mean over the pool of E[Y | prompt] by ``true_value_detail`` (fixed-seed Monte Carlo,
``truth_draws`` responses per prompt), computed in chunks and pooled:
V = sum_c P_c V_c / P, se = sqrt(sum_c (P_c se_c)^2) / P.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from arena_cje.backends.base import JudgeSpec, PolicySpec
from arena_cje.backends.simulated import SimulatedBackend, synthetic_prompts

HELPFUL = "You are a helpful assistant."
POLICIES = {
    "pi_0": PolicySpec("pi_0", "sim-llm", 0.5, HELPFUL, 256),
    "pi_hot": PolicySpec("pi_hot", "sim-llm", 0.9, HELPFUL, 256),
    "pi_cot": PolicySpec("pi_cot", "sim-llm", 0.5, HELPFUL + " Think step-by-step before answering.", 256),
    "pi_concise": PolicySpec("pi_concise", "sim-llm", 0.3, HELPFUL + " Be concise: answer in 2-3 sentences.", 256),
    # Not in parameters.yml: a near twin of pi_0 (true difference below 0.01) for near-tie comparisons.
    "pi_warm": PolicySpec("pi_warm", "sim-llm", 0.55, HELPFUL, 256),
}
LOGGING = "pi_0"
JUDGE = JudgeSpec(model="sim-judge", temperature=0.0)


@dataclass
class Bank:
    """Responses of the pool (arrays are P x D) and the pool truth."""

    prompt_id: np.ndarray
    targets: list[str]
    logged: dict[str, np.ndarray]            # judge, y, votes, length, lp_<policy>
    fresh: dict[str, dict[str, np.ndarray]]  # policy -> judge, y, votes, length
    truth: dict[str, tuple[float, float]]
    build_seconds: float = 0.0
    meta: dict = field(default_factory=dict)

    @property
    def n_prompts(self) -> int:
        return len(self.prompt_id)

    def bank_mean(self, policy: str) -> float:
        """Mean Y of the bank's own fresh responses of ``policy`` (the 'bank world' value)."""
        src = self.logged if policy == LOGGING else self.fresh[policy]
        return float(src["y"].mean())


def _chunk_truth(b: SimulatedBackend, spec: PolicySpec, prompts: list[str]) -> tuple[float, float]:
    return b.true_value_detail(spec, prompts)


def build_bank(n_prompts: int = 4000, draws: int = 2, targets: tuple[str, ...] = ("pi_0", "pi_hot", "pi_concise"),
               truth_draws: int = 4, world_seed: int = 0, prompt_seed: int = 42, chunk: int = 2000,
               votes: bool = False) -> Bank:
    """Generate the bank (module docstring). ``votes``: also collect 3 simulated votes per response."""
    t0 = time.perf_counter()
    b = SimulatedBackend(seed=world_seed, truth_draws_per_prompt=truth_draws, truth_min_total_draws=0)
    pool = synthetic_prompts(n_prompts, prompt_seed)
    P, D = n_prompts, draws
    names = list(dict.fromkeys([LOGGING, *targets]))
    logged = {k: np.empty((P, D)) for k in ("judge", "y", "length", "votes", "n_tokens", *[f"lp_{p}" for p in names])}
    fresh = {p: {k: np.empty((P, D)) for k in ("judge", "y", "length", "votes", "logprob", "n_tokens")}
             for p in targets if p != LOGGING}
    sums: dict[str, list[tuple[int, float, float]]] = {p: [] for p in names}

    def describe(prompts: list[str], texts: list[str], dest: dict, sl: slice) -> None:
        dest["judge"][sl] = np.array([j.score for j in b.judge_batch(prompts, texts, JUDGE)]).reshape(-1, D)
        dest["y"][sl] = b.true_quality_batch(prompts, texts).reshape(-1, D)
        dest["length"][sl] = np.array([len(t.split()) for t in texts], dtype=float).reshape(-1, D)
        if votes:
            v = [np.mean(b.rate(p, t, 3, seed=7)) / 10.0 for p, t in zip(prompts, texts, strict=True)]
            dest["votes"][sl] = np.array(v).reshape(-1, D)
        else:
            dest["votes"][sl] = np.nan

    for start in range(0, P, chunk):
        sl = slice(start, min(P, start + chunk))
        cp = pool["prompt"].iloc[sl].tolist()
        rep = [p for p in cp for _ in range(D)]
        seeds = [start * D + i for i in range(len(rep))]
        gen = b.generate_batch(rep, POLICIES[LOGGING], seeds)
        texts = [g.text for g in gen]
        describe(rep, texts, logged, sl)
        logged["n_tokens"][sl] = np.array([g.n_tokens for g in gen], dtype=float).reshape(-1, D)
        for k, p in enumerate(names):
            spec = POLICIES[p]
            if p == LOGGING:
                lp = np.array([g.logprob for g in gen], dtype=float)
            else:
                tf = b.teacher_force_batch(rep, texts, spec)
                lp = np.array([np.nan if t.logprob is None else t.logprob for t in tf], dtype=float)
                fg = b.generate_batch(rep, spec, [10_000_000 * (k + 1) + s for s in seeds])
                describe(rep, [g.text for g in fg], fresh[p], sl)
                fresh[p]["logprob"][sl] = np.array([g.logprob for g in fg], dtype=float).reshape(-1, D)
                fresh[p]["n_tokens"][sl] = np.array([g.n_tokens for g in fg], dtype=float).reshape(-1, D)
            logged[f"lp_{p}"][sl] = lp.reshape(-1, D)
            v, se = _chunk_truth(b, spec, cp)
            sums[p].append((len(cp), v, se))
    truth = {}
    for p, parts in sums.items():
        n = np.array([c[0] for c in parts], dtype=float)
        truth[p] = (float(np.sum(n * [c[1] for c in parts]) / n.sum()),
                    float(np.sqrt(np.sum((n * [c[2] for c in parts]) ** 2)) / n.sum()))
    return Bank(prompt_id=pool["prompt_id"].to_numpy(dtype=object), targets=names, logged=logged, fresh=fresh,
                truth=truth, build_seconds=time.perf_counter() - t0,
                meta={"draws": D, "truth_draws": truth_draws, "world_seed": world_seed, "prompt_seed": prompt_seed})


def draw(bank: Bank, n: int, oracle_fraction: float, seed: int, label: str = "exact",
         targets: tuple[str, ...] | None = None, token_counts: bool = True) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """One replication's (logged, fresh_draws) frames in the reference layout (module docstring)."""
    rng = np.random.default_rng(seed)
    targets = tuple(targets or bank.targets)
    D = bank.meta["draws"]
    idx = rng.integers(bank.n_prompts, size=n)
    dl = rng.integers(D, size=n)
    pids = np.array([f"r{seed}_{i}" for i in range(n)], dtype=object)  # duplicates of a pool prompt are distinct clusters
    lab = np.zeros(n, dtype=bool)
    lab[rng.choice(n, size=int(round(oracle_fraction * n)), replace=False)] = True
    ysrc = "y" if label == "exact" else "votes"
    L = bank.logged
    y = L[ysrc][idx, dl]
    logged = pd.DataFrame({
        "prompt_id": pids,
        "judge_score": L["judge"][idx, dl],
        "oracle_label": np.where(lab, y, np.nan),
        "base_policy_logprob": L[f"lp_{LOGGING}"][idx, dl],
        "target_policy_logprobs": [dict(zip(targets, v, strict=True))
                                   for v in zip(*(L[f"lp_{p}"][idx, dl].tolist() for p in targets), strict=True)],
        "response_length": L["length"][idx, dl],
        "n_tokens": L["n_tokens"][idx, dl],
    })
    fresh = {}
    for p in targets:
        if p == LOGGING:
            fresh[p] = pd.DataFrame({"prompt_id": pids, "judge_score": logged["judge_score"], "draw_idx": 0,
                                     "oracle_label": logged["oracle_label"], "response_length": logged["response_length"],
                                     "logprob": logged["base_policy_logprob"], "n_tokens": logged["n_tokens"]})
        else:
            d = rng.integers(D, size=n)
            F = bank.fresh[p]
            fresh[p] = pd.DataFrame({"prompt_id": pids, "judge_score": F["judge"][idx, d], "draw_idx": 0,
                                     "response_length": F["length"][idx, d], "logprob": F["logprob"][idx, d],
                                     "n_tokens": F["n_tokens"][idx, d]})
    if not token_counts:
        logged = logged.drop(columns="n_tokens")
        fresh = {p: f.drop(columns=["logprob", "n_tokens"]) for p, f in fresh.items()}
    return logged, fresh
