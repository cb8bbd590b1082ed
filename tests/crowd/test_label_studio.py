"""Human labels through a real Label Studio (1.23.x, own virtualenv, SQLite, 127.0.0.1).

A small default run writes ``label_studio_config.xml`` and ``label_studio_tasks.json``; Label Studio
creates a project from them; three annotator accounts (signed up through the invite link, each
with its own API token) rate every task, with a skipped task, a rating outside the scale, a
duplicate submission, and one careless annotator who fails the gold checks; the project is
exported as JSON, JSON-MIN, CSV and TSV; each export goes through
``kedro run --pipelines labeling_import,estimation`` (the first through the CLI) and every number
that comes out is checked against a direct computation on the submitted ratings.

``make test-labelstudio`` runs this file alone; ``make test`` installs Label Studio first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from arena_cje.crowd import parse_ratings

from ..conftest import copy_project
from . import label_studio_server as ls

pytestmark = pytest.mark.slow

#: A small default run: few prompts and few probes, so there are ~80 tasks to annotate.
RUN_PARAMS = {
    "prompts": {"output_samples": 160, "pool_size": 1000},
    "labeling": {"probe_size": 8, "gold_items": 6, "duplicate_items": 4},
}
LABELING = "data/03_primary/labeling"
RATING_MIN, RATING_MAX, GOLD_MAX = 0, 10, 3


@dataclass
class Vote:
    """One submission made through Label Studio (``rating`` None when the task was skipped)."""

    task_id: str
    worker: str
    rating: float | None
    kind: str  # valid | skipped | outside | duplicate


@dataclass
class RoundTrip:
    project: Path
    server: ls.Server
    project_id: int
    project_info: dict
    tasks: list[dict]
    mapping: pd.DataFrame
    ls_task_ids: dict[str, int]
    workers: dict[str, str]  # name -> Label Studio user id (as text)
    votes: list[Vote]
    exports: dict[str, Path]
    timings: dict[str, float]
    estimates: dict[str, pd.DataFrame] = field(default_factory=dict)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Label Studio installed (idempotent) and started; always stopped, also when a test fails."""
    ok, output = ls.install()
    if not ok:
        message = f"Label Studio could not be installed by scripts/label_studio.sh install:\n{output}"
        if os.environ.get("LABEL_STUDIO_REQUIRED") or os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    running = ls.start(tmp_path_factory.mktemp("labelstudio"))
    try:
        yield running
    finally:
        running.stop()


def _kedro_session_run(project: Path, pipelines: list[str], runtime_params: dict) -> None:
    from kedro.framework.session import KedroSession

    with KedroSession.create(project_path=project, runtime_params=runtime_params) as session:
        session.run(pipeline_names=pipelines)


def _plan_votes(mapping: pd.DataFrame, workers: dict[str, str], seed: int = 16) -> list[Vote]:
    """Who rates what: everyone rates every task near a hidden per-item quality; ``carol`` fails
    the gold checks; ``ann`` skips one task and submits another twice; ``bob`` once types 11."""
    rng = np.random.default_rng(seed)
    ann, bob, carol = workers["ann"], workers["bob"], workers["carol"]
    key = mapping[["prompt_id", "policy", "draw_idx"]].astype(str).agg("|".join, axis=1)
    quality = {k: int(rng.integers(1, 10)) for k in sorted(set(key))}
    plain = mapping.loc[mapping["kind"] == "item", "task_id"].tolist()
    skipped, outside, duplicated = plain[0], plain[1], plain[2]
    votes = []
    for task, kind, item in zip(mapping["task_id"], mapping["kind"], key):
        for worker in (ann, bob, carol):
            if kind == "gold":
                rating = int(rng.integers(6, 11)) if worker == carol else int(rng.integers(0, GOLD_MAX + 1))
            else:
                rating = int(np.clip(quality[item] + rng.integers(-1, 2), RATING_MIN, RATING_MAX))
            if task == skipped and worker == ann:
                votes.append(Vote(task, worker, None, "skipped"))
            elif task == outside and worker == bob:
                votes.append(Vote(task, worker, 11, "outside"))
            else:
                votes.append(Vote(task, worker, rating, "valid"))
            if task == duplicated and worker == ann:
                votes.append(Vote(task, worker, (rating + 5) % 11, "duplicate"))
    return votes


@pytest.fixture(scope="module", autouse=True)
def _no_kedro_telemetry():
    """Kedro's telemetry would try to reach the internet (the Makefile sets this too)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KEDRO_DISABLE_TELEMETRY", "true")
        yield


@pytest.fixture(scope="module")
def round_trip(server, tmp_path_factory) -> RoundTrip:
    from kedro.framework.startup import bootstrap_project

    timings = {"server_startup_s": server.startup_seconds}
    project = copy_project(tmp_path_factory.mktemp("run"))
    bootstrap_project(project)
    began = time.monotonic()
    _kedro_session_run(project, ["data_prep", "generation", "judging", "labeling_export"], RUN_PARAMS)
    timings["default_run_s"] = time.monotonic() - began

    config = (project / LABELING / "label_studio_config.xml").read_text()
    tasks = json.loads((project / LABELING / "label_studio_tasks.json").read_text())
    mapping = pd.read_csv(project / LABELING / "label_task_mapping.csv", dtype={"task_id": str})
    began = time.monotonic()
    project_id = server.admin.create_project("Arena CJE ratings", config, votes_per_task=3)
    assert server.admin.import_tasks(project_id, tasks) == len(tasks)
    info = server.admin.request("GET", f"/api/projects/{project_id}").json()
    ls_ids = server.admin.task_ids(project_id)

    clients, workers = {}, {}
    for name in ("ann", "bob", "carol"):
        clients[name], user_id = ls.sign_up(server, f"{name}@example.com", f"{name}-Passw0rd!")
        workers[name] = str(user_id)
    by_id = {user_id: clients[name] for name, user_id in workers.items()}
    votes = _plan_votes(mapping, workers)
    for vote in votes:
        client = by_id[vote.worker]
        if vote.kind == "skipped":
            client.skip_task(ls_ids[vote.task_id])
        else:
            client.submit_rating(ls_ids[vote.task_id], vote.rating)
    timings["annotate_s"] = time.monotonic() - began

    exports = {}
    for fmt in ("JSON", "JSON_MIN", "CSV", "TSV"):
        path = project / "data" / "01_raw" / "labels" / f"label_studio_{fmt.lower()}.{'tsv' if fmt == 'TSV' else 'csv' if fmt == 'CSV' else 'json'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(server.admin.export(project_id, fmt))
        exports[fmt] = path
    return RoundTrip(project, server, project_id, info, tasks, mapping, ls_ids, workers, votes, exports, timings)


def test_label_studio_accepts_our_config_and_every_task(round_trip):
    info = round_trip.project_info
    control = info["parsed_label_config"]["rating"]
    assert control["type"] == "Number" and control["to_name"] == ["response"]
    assert info["label_config"].strip() == (round_trip.project / LABELING / "label_studio_config.xml").read_text().strip()
    assert info["maximum_annotations"] == 3
    assert set(round_trip.ls_task_ids) == set(round_trip.mapping["task_id"]) == {t["data"]["task_id"] for t in round_trip.tasks}
    print("timings:", json.dumps({k: round(v, 1) for k, v in round_trip.timings.items()}))


@pytest.mark.parametrize(
    ("fmt", "expected_format", "via_cli"),
    [
        ("JSON", "label_studio_json", True),
        ("JSON_MIN", "label_studio_json_min", False),
        ("CSV", "label_studio_csv", False),
        ("TSV", "label_studio_csv", False),
    ],
)
def test_each_export_imports_into_the_pipeline(round_trip, fmt, expected_format, via_cli):
    project, export = round_trip.project, round_trip.exports[fmt]
    # Every task is in the export (each has at least one vote that was not skipped).
    assert set(parse_ratings(export.read_bytes(), export.name).rows["task_id"]) == set(round_trip.mapping["task_id"])

    estimates = project / "data/07_model_output/policy_estimates.csv"
    estimates.unlink(missing_ok=True)
    began = time.monotonic()
    if via_cli:
        env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
        done = subprocess.run(
            [sys.executable, "-m", "kedro", "run", "--pipelines", "labeling_import,estimation", "--params", f"labels_file={export}"],
            cwd=project, env=env, capture_output=True, text=True, timeout=900,
        )
        assert done.returncode == 0, done.stderr[-4000:]
    else:
        _kedro_session_run(project, ["labeling_import", "estimation"], {"labels_file": str(export)})
    print(f"{fmt}: labeling_import,estimation {'CLI' if via_cli else 'in-process'} {time.monotonic() - began:.1f} s")
    _check_outputs(round_trip, expected_format)
    # The same votes give the same estimates, whichever format carried them.
    result = pd.read_csv(estimates)
    first = round_trip.estimates.setdefault("first", result)
    pd.testing.assert_frame_equal(result, first)


def _check_outputs(trip: RoundTrip, expected_format: str) -> None:
    out = trip.project / LABELING
    ids = {"task_id": str, "worker_id": str}
    valid = pd.read_csv(out / "valid_ratings.csv", dtype=ids)
    quarantined = pd.read_csv(out / "quarantined_ratings.csv", dtype=ids)
    quality = pd.read_csv(out / "worker_quality.csv", dtype=ids).set_index("worker_id")
    labels = pd.read_csv(trip.project / "data/03_primary/oracle_labels.csv", dtype={"draw_idx": int})
    summary = json.loads((trip.project / "data/08_reporting/labeling_summary.json").read_text())
    mapping = trip.mapping.set_index("task_id")
    carol = trip.workers["carol"]

    # Every valid vote kept, with its annotator's Label Studio user id; skipped tasks are no votes.
    expected_valid = {(v.task_id, v.worker, float(v.rating)) for v in trip.votes if v.kind == "valid"}
    assert set(zip(valid["task_id"], valid["worker_id"], valid["rating"])) == expected_valid
    assert len(valid) == len(expected_valid)
    # Exactly the invalid submissions are quarantined, each with its reason.
    reasons = {(r.task_id, r.worker_id, float(r.rating)): r.reason for r in quarantined.itertuples()}
    expected_bad = {(v.task_id, v.worker, float(v.rating)): v.kind for v in trip.votes if v.kind in ("outside", "duplicate")}
    assert set(reasons) == set(expected_bad)
    for key, kind in expected_bad.items():
        prefix = "rating outside [0, 10]" if kind == "outside" else "duplicate vote by the same worker"
        assert reasons[key].startswith(prefix), reasons[key]
    submitted = sum(v.kind != "skipped" for v in trip.votes)
    assert summary["votes"]["received"] == submitted
    assert (summary["votes"]["valid"], summary["votes"]["quarantined"]) == (len(expected_valid), len(expected_bad))
    assert summary["file"]["format"] == expected_format

    # Worker quality from the gold checks: carol (all gold rated > 3) is dropped.
    votes = pd.DataFrame([v.__dict__ for v in trip.votes if v.kind == "valid"])
    task_info = mapping[["kind", "gold_max_rating", "prompt_id", "policy", "draw_idx"]].rename(columns={"kind": "kind_task"})
    votes = votes.join(task_info, on="task_id")
    gold = votes[votes["kind_task"] == "gold"]
    accuracy = (gold["rating"] <= gold["gold_max_rating"]).groupby(gold["worker"]).mean()
    assert set(quality.index) == set(trip.workers.values())
    for worker, value in accuracy.items():
        assert quality.loc[worker, "gold_accuracy"] == pytest.approx(value)
        assert quality.loc[worker, "n_gold"] == (gold["worker"] == worker).sum()
    assert accuracy[carol] == 0 and quality["dropped"].to_dict() == {w: w == carol for w in quality.index}
    assert summary["workers"]["dropped"] == [carol]
    assert summary["workers"]["mean_gold_accuracy"] == pytest.approx(accuracy.mean())

    # Oracle labels: mean kept rating of each item (its duplicate task's votes included) / 10.
    kept = votes[votes["worker"] != carol]
    items = kept[kept["kind_task"] != "gold"].groupby(["prompt_id", "policy", "draw_idx"])["rating"].agg(["mean", "count"])
    items = items[items["count"] >= 2]
    got = labels.set_index(["prompt_id", "policy", "draw_idx"]).sort_index()
    assert list(got.index) == list(items.sort_index().index)
    np.testing.assert_allclose(got["oracle_label"], (items.sort_index()["mean"] - RATING_MIN) / (RATING_MAX - RATING_MIN))
    np.testing.assert_array_equal(got["n_votes"], items.sort_index()["count"])

    # Krippendorff's alpha (interval) over tasks x annotators, gold tasks left out, after and before QC.
    not_gold = votes[votes["kind_task"] != "gold"]
    assert summary["agreement"]["overall"] == pytest.approx(_interval_alpha(not_gold[not_gold["worker"] != carol]), abs=1e-9)
    assert summary["agreement"]["overall_before_qc"] == pytest.approx(_interval_alpha(not_gold), abs=1e-9)


def _interval_alpha(votes: pd.DataFrame) -> float:
    """Krippendorff's alpha, interval metric, from its definition (units = tasks):
    ``1 - (n - 1) * sum_u sum_{i != j in u} (v_i - v_j)^2 / (m_u - 1) / sum_{i != j} (v_i - v_j)^2``
    over the n values in units with at least two values."""
    units = [g.to_numpy(float) for _, g in votes.groupby("task_id")["rating"] if len(g) >= 2]
    values = np.concatenate(units)
    n = len(values)
    within = sum(((u[:, None] - u[None, :]) ** 2).sum() / (len(u) - 1) for u in units)
    total = ((values[:, None] - values[None, :]) ** 2).sum()
    return float(1 - (n - 1) * within / total)


def test_the_documented_commands_create_and_export(round_trip, tmp_path, capsys):
    """`python -m arena_cje.crowd.label_studio create / export` (docs/labeling.md, steps 3 and 5)."""
    from arena_cje.crowd.label_studio import main

    server = ["--url", round_trip.server.url, "--token", round_trip.server.admin.token]
    files = round_trip.project / LABELING
    assert main([*server, "create", "--config", str(files / "label_studio_config.xml"),
                 "--tasks", str(files / "label_studio_tasks.json"), "--title", "second"]) == 0
    assert f"imported {len(round_trip.tasks)} of {len(round_trip.tasks)} tasks" in capsys.readouterr().out
    out = tmp_path / "export.json"
    assert main([*server, "export", "--project", str(round_trip.project_id), "--format", "JSON_MIN", "--out", str(out)]) == 0
    columns = ["task_id", "worker_id", "rating"]
    pd.testing.assert_frame_equal(
        parse_ratings(out.read_bytes(), out.name).rows[columns],
        parse_ratings(round_trip.exports["JSON_MIN"].read_bytes(), "rest.json").rows[columns],
    )


SDK_SCRIPT = """
import sys
from label_studio_sdk import LabelStudio

url, token, project, out = sys.argv[1:]
client = LabelStudio(base_url=url, api_key=token)
info = client.projects.get(id=int(project))
print(info.task_number, info.maximum_annotations)
with open(out, "wb") as handle:
    for chunk in client.projects.exports.download_sync(id=int(project), export_type="JSON_MIN"):
        handle.write(chunk)
"""


def test_the_sdk_sees_the_same_project_and_votes(round_trip, tmp_path):
    """label-studio-sdk 2.x (in Label Studio's virtualenv) reads the project the REST client made."""
    out = tmp_path / "sdk_json_min.json"
    done = subprocess.run(
        ["bash", str(ls.SCRIPT), "python", "-c", SDK_SCRIPT, round_trip.server.url, round_trip.server.admin.token,
         str(round_trip.project_id), str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [str(len(round_trip.tasks)), "3"]
    columns = ["task_id", "worker_id", "rating"]
    via_sdk = parse_ratings(out.read_bytes(), out.name).rows[columns]
    via_rest = parse_ratings(round_trip.exports["JSON_MIN"].read_bytes(), "rest.json").rows[columns]
    pd.testing.assert_frame_equal(via_sdk, via_rest)


def test_the_server_reached_nothing_beyond_loopback(round_trip):
    """No version check, no analytics, no error reporting: the server log shows no outgoing
    connection (urllib3 logs every one it opens)."""
    log = round_trip.server.log.read_text(errors="replace")
    assert "Starting development server at http://127.0.0.1:" in log
    assert "Starting new HTTP" not in log, [line for line in log.splitlines() if "Starting new HTTP" in line]
