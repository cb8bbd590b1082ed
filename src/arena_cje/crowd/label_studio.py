"""A small client of Label Studio's REST API (1.23.x): create the rating project from our labeling
config, import our tasks, submit or skip a rating, and download an export.

Only ``requests``; it runs in the project's environment while Label Studio itself lives in its own
(``scripts/label_studio.sh``). Command line, for a team (see docs/labeling.md)::

    python -m arena_cje.crowd.label_studio create --config CONFIG.xml --tasks TASKS.json
    python -m arena_cje.crowd.label_studio export --project 1 --format JSON_MIN --out FILE

The server URL comes from ``--url`` or ``LABEL_STUDIO_URL`` (default ``http://127.0.0.1:8080``),
the token from ``--token`` or ``LABEL_STUDIO_API_KEY``: a user's legacy API token (Account &
Settings; legacy tokens must be enabled for the organization, which ``scripts/label_studio.sh
start`` does when it creates the first user with ``LS_USER_TOKEN``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

#: The export formats Label Studio offers for our config (a Number control on text).
EXPORT_FORMATS = ("JSON", "JSON_MIN", "CSV", "TSV")
#: Where each format is saved by default (the import pipeline reads any of them).
EXPORT_SUFFIX = {"JSON": "json", "JSON_MIN": "json", "CSV": "csv", "TSV": "tsv"}


class LabelStudioError(RuntimeError):
    """A Label Studio API call failed; the message names the call, the status and the answer."""


@dataclass
class LabelStudio:
    """One user's connection to a Label Studio server.

    Attributes:
        url: Server address, e.g. ``http://127.0.0.1:8080``.
        token: The user's legacy API token (sent as ``Authorization: Token ...``).
        timeout: Seconds to wait for one answer.
    """

    url: str
    token: str
    timeout: float = 120.0
    session: requests.Session = field(default_factory=requests.Session, repr=False)

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Call ``path`` (e.g. ``/api/projects``) with the token; raise :class:`LabelStudioError` on failure."""
        headers = {"Authorization": f"Token {self.token}", **kwargs.pop("headers", {})}
        url = self.url.rstrip("/") + path
        try:
            response = self.session.request(method, url, headers=headers, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise LabelStudioError(f"{method} {url}: {exc}") from exc
        if response.status_code >= 400:
            raise LabelStudioError(f"{method} {url}: HTTP {response.status_code}: {response.text[:500]}")
        return response

    def create_project(self, title: str, label_config: str, votes_per_task: int | None = None) -> int:
        """Create a project with ``label_config`` (Label Studio validates it); return its id.

        ``votes_per_task`` sets the project's overlap (``maximum_annotations``): how many
        different annotators Label Studio hands each task to.
        """
        body: dict[str, Any] = {"title": title, "label_config": label_config}
        if votes_per_task is not None:
            body["maximum_annotations"] = int(votes_per_task)
        return int(self.request("POST", "/api/projects", json=body).json()["id"])

    def import_tasks(self, project: int, tasks: list[dict[str, Any]]) -> int:
        """Import tasks (``[{"data": {...}}, ...]``); return how many Label Studio created."""
        return int(self.request("POST", f"/api/projects/{project}/import", json=tasks).json()["task_count"])

    def task_ids(self, project: int, page_size: int = 500) -> dict[str, int]:
        """Our ``task_id`` -> Label Studio's task number, for every task of ``project``."""
        ids: dict[str, int] = {}
        page = 1
        while True:
            answer = self.request(
                "GET", "/api/tasks", params={"project": project, "page": page, "page_size": page_size}
            ).json()
            ids.update({str(t["data"]["task_id"]): int(t["id"]) for t in answer["tasks"]})
            if not answer["tasks"] or len(ids) >= int(answer.get("total", 0)):
                return ids
            page += 1

    def submit_rating(self, task: int, rating: float, control: str = "rating", to_name: str = "response") -> int:
        """Submit this user's rating of Label Studio task ``task`` (as the UI does); return the annotation id."""
        result = [{"from_name": control, "to_name": to_name, "type": "number", "value": {"number": rating}}]
        return int(self.request("POST", f"/api/tasks/{task}/annotations/", json={"result": result}).json()["id"])

    def skip_task(self, task: int) -> int:
        """Skip (cancel) task ``task`` as this user, like the UI's *Skip* button; return the annotation id."""
        return int(
            self.request(
                "POST", f"/api/tasks/{task}/annotations/", params={"was_cancelled": 1}, json={"result": [], "was_cancelled": True}
            ).json()["id"]
        )

    def export(self, project: int, export_type: str = "JSON_MIN") -> bytes:
        """The project's annotations in ``export_type`` (one of :data:`EXPORT_FORMATS`), as downloaded."""
        if export_type not in EXPORT_FORMATS:
            raise ValueError(f"export_type must be one of {EXPORT_FORMATS}, got {export_type!r}")
        return self.request("GET", f"/api/projects/{project}/export", params={"exportType": export_type}).content


def main(argv: list[str] | None = None) -> int:
    """``create`` a project from our config and tasks, or ``export`` a project's ratings to a file."""
    parser = argparse.ArgumentParser(prog="python -m arena_cje.crowd.label_studio", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("LABEL_STUDIO_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--token", default=os.environ.get("LABEL_STUDIO_API_KEY"), help="or LABEL_STUDIO_API_KEY")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a project and import the tasks")
    create.add_argument("--config", type=Path, default=Path("data/03_primary/labeling/label_studio_config.xml"))
    create.add_argument("--tasks", type=Path, default=Path("data/03_primary/labeling/label_studio_tasks.json"))
    create.add_argument("--title", default="Arena CJE ratings")
    create.add_argument("--votes", type=int, default=3, help="annotators per task (labeling.votes_per_item)")
    export = commands.add_parser("export", help="download a project's ratings")
    export.add_argument("--project", type=int, required=True)
    export.add_argument("--format", choices=EXPORT_FORMATS, default="JSON_MIN")
    export.add_argument("--out", type=Path, help="default: data/01_raw/labels/label_studio_<format>.<ext>")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("no API token: pass --token or set LABEL_STUDIO_API_KEY")
    client = LabelStudio(args.url, args.token)
    if args.command == "create":
        tasks = json.loads(args.tasks.read_text(encoding="utf-8"))
        project = client.create_project(args.title, args.config.read_text(encoding="utf-8"), args.votes)
        n = client.import_tasks(project, tasks)
        print(f"project {project}: imported {n} of {len(tasks)} tasks from {args.tasks}")
        return 0 if n == len(tasks) else 1
    out = args.out or Path(f"data/01_raw/labels/label_studio_{args.format.lower()}.{EXPORT_SUFFIX[args.format]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    data = client.export(args.project, args.format)
    out.write_bytes(data)
    print(f"project {args.project}: {args.format} export, {len(data)} bytes -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
