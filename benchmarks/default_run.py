"""Wall time of the README's main job: the default `kedro run` (simulated backend, offline).

Runs `kedro run` as a user would (CLI, fresh temporary copy of conf/ and an empty data/), twice:
once cold (true values computed) and once warm (true values cached), and prints both with the
time of every pipeline stage (the sum of its nodes' times, from the run's "Node ... took" log lines)
and its slowest nodes.

    .venv/bin/python benchmarks/default_run.py [--prompts N] [--cold-only]

Targets: under 2 minutes on 2 cores with the default 1,000 prompts (issue 2); ``--prompts 10000``
(4 policies, the simulated backend) under 60 s cold, true values included (issue 13).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NODE_TIME = re.compile(r"Node (\S+) took ([0-9.]+) s")
STAGES = ("data_prep", "generation", "judging", "labeling", "estimation", "reporting")


def stage_of(node: str, stages: dict[str, str]) -> str:
    """The pipeline a node belongs to (its namespace, else the registry's pipelines)."""
    head = node.split(".", 1)[0]
    return head if head in STAGES else stages.get(node, "other")


def node_stages() -> dict[str, str]:
    """node name -> pipeline name, from the project's pipeline registry."""
    from arena_cje.pipeline_registry import register_pipelines

    out: dict[str, str] = {}
    for name, pipe in register_pipelines().items():
        if name in STAGES:
            for node in pipe.nodes:
                out.setdefault(node.name, name)
    return out


def print_stage_times(log: str, stages: dict[str, str]) -> None:
    took = [(n, float(t)) for n, t in NODE_TIME.findall(log)]
    per_stage: dict[str, float] = {}
    for node, t in took:
        per_stage[stage_of(node, stages)] = per_stage.get(stage_of(node, stages), 0.0) + t
    print("  stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in per_stage.items()))
    slow = sorted(took, key=lambda x: -x[1])[:6]
    print("  slowest nodes: " + ", ".join(f"{n} {t:.1f} s" for n, t in slow))
    for stage in ("generation", "reporting"):
        nodes = [(n.split(".", 1)[-1], t) for n, t in took if stage_of(n, stages) == stage]
        print(f"  {stage} nodes: " + ", ".join(f"{n} {t:.2f} s" for n, t in nodes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", "--output-samples", dest="prompts", type=int, default=None,
                        help="prompts in the run (prompts.output_samples; the pool grows to match)")
    parser.add_argument("--cold-only", action="store_true", help="skip the warm rerun")
    parser.add_argument("--keep", type=Path, default=None,
                        help="copy the run's data/ folder here (to compare two commits' outputs file by file)")
    args = parser.parse_args()
    stages = node_stages()
    kedro = Path(sys.executable).parent / "kedro"
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "project"
        project.mkdir()
        shutil.copy(ROOT / "pyproject.toml", project)
        shutil.copy(ROOT / ".telemetry", project)
        shutil.copytree(ROOT / "conf" / "base", project / "conf" / "base")
        (project / "conf" / "local").mkdir()
        (project / "src").mkdir()
        for layer in (ROOT / "data").iterdir():
            if layer.is_dir():
                (project / "data" / layer.name).mkdir(parents=True)
        command = [str(kedro), "run"]
        if args.prompts:
            pool = max(args.prompts, 10_000)
            command += ["--params", f"prompts.output_samples={args.prompts},prompts.pool_size={pool}"]
        env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "COLUMNS": "250"}
        labels = ["cold (true values computed)", "warm (true values cached)"][: 1 if args.cold_only else 2]
        print(f"load average {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} cores; {' '.join(command[1:])}")
        for label in labels:
            start = time.perf_counter()
            result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
            took = time.perf_counter() - start
            if result.returncode != 0:
                print(result.stdout[-3000:], result.stderr[-3000:])
                raise SystemExit(f"kedro run failed ({label})")
            print(f"kedro run, {label}: {took:.1f} s wall on {os.cpu_count()} cores")
            print_stage_times(result.stdout + result.stderr, stages)
        truth = project / "data/03_primary/policy_truth.csv"
        if truth.is_file():  # the simulated world's true values and their Monte Carlo s.e.
            rows = [line.split(",") for line in truth.read_text().splitlines()[1:]]
            print("  true values (MC s.e.): " + ", ".join(f"{p} {float(v):.4f} ({float(se):.5f})" for p, v, se in rows))
        estimates = project / "data/07_model_output/policy_estimates.csv"
        report = project / "data/08_reporting/report.html"
        print(f"wrote {estimates.name} ({estimates.stat().st_size} bytes) and {report.name} ({report.stat().st_size} bytes)")
        if args.keep:
            shutil.copytree(project / "data", args.keep)


if __name__ == "__main__":
    main()
