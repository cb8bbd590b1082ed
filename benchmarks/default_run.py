"""Wall time of the README's main job: the default `kedro run` (simulated backend, offline).

Runs `kedro run` as a user would (CLI, fresh temporary copy of conf/ and an empty data/), twice:
once cold (true values computed) and once warm (true values cached), and prints both.

    .venv/bin/python benchmarks/default_run.py [--output-samples N]

Target (issue 2): under 2 minutes on 2 cores with the default output_samples (1,000 prompts).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-samples", type=int, default=None, help="override prompts.output_samples")
    args = parser.parse_args()
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
        if args.output_samples:
            command += ["--params", f"prompts.output_samples={args.output_samples}"]
        env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
        for label in ("cold (true values computed)", "warm (true values cached)"):
            start = time.perf_counter()
            result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
            took = time.perf_counter() - start
            if result.returncode != 0:
                print(result.stdout[-3000:], result.stderr[-3000:])
                raise SystemExit(f"kedro run failed ({label})")
            print(f"kedro run, {label}: {took:.1f} s wall on {os.cpu_count()} cores")
        estimates = project / "data/07_model_output/policy_estimates.csv"
        report = project / "data/08_reporting/report.html"
        print(f"wrote {estimates.name} ({estimates.stat().st_size} bytes) and {report.name} ({report.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
