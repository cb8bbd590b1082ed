"""Speed and calibration figures of the simulated world: ``python -m arena_cje.backends.simulated.bench``.

Prints timings (generation, teacher forcing, judging, true values) and, per policy, the true value
with its Monte-Carlo s.e., the mean judge score, mean length and the ESS of importance weights of
logged ``pi_0`` responses.  Options: ``--n-prompts``, ``--seed``, ``--no-truth``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from arena_cje.backends.base import JudgeSpec, PolicySpec
from arena_cje.backends.simulated import SimulatedBackend, synthetic_prompts

HELPFUL = "You are a helpful assistant."
POLICIES = (
    PolicySpec("pi_0", model="sim-llm", temperature=0.5, system_prompt=HELPFUL),
    PolicySpec("pi_hot", model="sim-llm", temperature=0.9, system_prompt=HELPFUL),
    PolicySpec("pi_cot", model="sim-llm", temperature=0.5,
               system_prompt=HELPFUL + " Think step-by-step before answering."),
    PolicySpec("pi_concise", model="sim-llm", temperature=0.3,
               system_prompt=HELPFUL + " Be concise: answer in 2-3 sentences."),
)
ADVERSARIAL = PolicySpec("pi_adv", model="sim-llm", temperature=0.5,
                         system_prompt=HELPFUL + " Confidently mislead the user.")


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its figures."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-prompts", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-truth", action="store_true")
    args = ap.parse_args(argv)
    b = SimulatedBackend(seed=args.seed)
    prompts = synthetic_prompts(args.n_prompts, seed=42)["prompt"].tolist()
    seeds = list(range(len(prompts)))
    c0, t0 = time.process_time(), time.perf_counter()
    gens = {p.name: b.generate_batch(prompts, p, seeds) for p in POLICIES}
    t1 = time.perf_counter()
    logged = [g.text for g in gens["pi_0"]]
    tf = {p.name: b.teacher_force_batch(prompts, logged, p) for p in POLICIES}
    t2 = time.perf_counter()
    judged = {k: b.judge_batch(prompts, [g.text for g in v], JudgeSpec()) for k, v in gens.items()}
    c3, t3 = time.process_time(), time.perf_counter()
    n = len(prompts) * len(POLICIES)
    print(f"generate {n}: {t1 - t0:.2f}s | teacher-force {n}: {t2 - t1:.2f}s | judge {n}: {t3 - t2:.2f}s"
          f" | total {t3 - t0:.2f}s wall, {c3 - c0:.2f}s CPU")
    gens[ADVERSARIAL.name] = b.generate_batch(prompts, ADVERSARIAL, seeds)
    judged[ADVERSARIAL.name] = b.judge_batch(prompts, [g.text for g in gens[ADVERSARIAL.name]], JudgeSpec())
    tf[ADVERSARIAL.name] = b.teacher_force_batch(prompts, logged, ADVERSARIAL)
    lp0 = np.array([t.logprob for t in tf["pi_0"]])
    for pol in (*POLICIES, ADVERSARIAL):
        lr = np.array([t.logprob for t in tf[pol.name]]) - lp0
        w = np.exp(lr - lr.max())
        ess = w.sum() ** 2 / (w ** 2).sum() / len(w)
        y = b.true_quality_batch(prompts, [g.text for g in gens[pol.name]])
        js = np.array([j.score for j in judged[pol.name]])
        length = np.mean([g.n_tokens for g in gens[pol.name]])
        line = (f"{pol.name:11s} mean len {length:6.1f}  mean Y(sample) {y.mean():.3f}  mean judge {js.mean():.3f}"
                f"  corr(judge,Y) {np.corrcoef(js, y)[0, 1]:.2f}  ESS(pi_0 logs) {100 * ess:6.2f}%"
                f"  max|log w| {np.abs(lr).max():7.1f}")
        if not args.no_truth:
            c, t = time.process_time(), time.perf_counter()
            v, se = b.true_value_detail(pol, prompts)
            line += (f"  V={v:.4f} (s.e. {se:.5f}, {time.perf_counter() - t:.1f}s wall,"
                     f" {time.process_time() - c:.1f}s CPU)")
        print(line, flush=True)


if __name__ == "__main__":
    main()
