"""A throw-away Label Studio server for tests: installed by ``scripts/label_studio.sh`` into its own
virtualenv, SQLite in a temporary folder, bound to 127.0.0.1 on a free port, stopped with its whole
process group."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from arena_cje.crowd.label_studio import LabelStudio

from ..conftest import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "scripts" / "label_studio.sh"
HOST = "127.0.0.1"


def install() -> tuple[bool, str]:
    """Run the idempotent installer; ``(ok, its output)``."""
    done = subprocess.run(["bash", str(SCRIPT), "install"], capture_output=True, text=True, timeout=1800)
    output = (done.stdout + done.stderr).strip()
    # pip's notes about absent local index folders are noise, not the cause of a failure.
    lines = [line for line in output.splitlines() if "is ignored: it is neither a file nor a directory" not in line]
    return done.returncode == 0, "\n".join(lines[-20:])


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A running server and how to reach it as its first (admin) user."""

    process: subprocess.Popen
    url: str
    admin: LabelStudio
    log: Path
    startup_seconds: float

    def stop(self) -> None:
        """Terminate the server's process group (SIGTERM, then SIGKILL after 20 s)."""
        if self.process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


def start(data_dir: Path, timeout: float = 900.0) -> Server:
    """Start Label Studio on a free loopback port with a fresh SQLite database in ``data_dir``.

    The first user (admin) is created non-interactively with a random password and legacy API
    token. Waits until ``/health`` answers.

    Raises:
        RuntimeError: the server exited or did not answer within ``timeout`` (its log is quoted).
    """
    port = free_port()
    token = secrets.token_hex(20)
    env = {
        **os.environ,
        "LS_PORT": str(port),
        "LS_USERNAME": "admin@example.com",
        "LS_PASSWORD": secrets.token_hex(12),
        "LS_USER_TOKEN": token,
    }
    log = data_dir / "server.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    with open(log, "wb") as handle:
        # A session of its own, so stop() can end the server and every child it starts.
        process = subprocess.Popen(
            ["bash", str(SCRIPT), "start", str(data_dir / "ls")], cwd=PROJECT_ROOT, env=env,
            stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    url = f"http://{HOST}:{port}"
    server = Server(process, url, LabelStudio(url, token), log, 0.0)
    while time.monotonic() - began < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"Label Studio exited with {process.returncode}:\n{_tail(log)}")
        try:
            if requests.get(url + "/health", timeout=5).status_code == 200:
                server.startup_seconds = time.monotonic() - began
                return server
        except requests.RequestException:
            pass
        time.sleep(1.0)
    server.stop()
    raise RuntimeError(f"Label Studio did not answer on {url} within {timeout:.0f} s:\n{_tail(log)}")


def sign_up(server: Server, email: str, password: str) -> tuple[LabelStudio, int]:
    """A new annotator account through the organization's invite link, as a person would sign up.

    Returns:
        ``(client with the annotator's own API token, the annotator's user id)``.
    """
    invite = server.admin.request("GET", "/api/invite").json()["invite_url"]
    browser = requests.Session()
    browser.get(server.url + invite, timeout=30).raise_for_status()  # sets the CSRF cookie
    answer = browser.post(
        server.url + invite,
        data={"csrfmiddlewaretoken": browser.cookies["csrftoken"], "email": email, "password": password},
        headers={"Referer": server.url + invite}, allow_redirects=False, timeout=60,
    )
    if answer.status_code != 302:
        raise RuntimeError(f"sign-up of {email} failed: HTTP {answer.status_code}: {answer.text[:300]}")
    token = browser.get(server.url + "/api/current-user/token", timeout=30).json()["token"]
    client = LabelStudio(server.url, token)
    return client, int(client.request("GET", "/api/current-user/whoami").json()["id"])


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"
