"""Starting and stopping a real Label Studio server for the tests, and its migrated database made once.

A first start of Label Studio migrates a new SQLite database (about a minute on a loaded 2-core machine; a start on
a migrated one takes seconds). `make test` therefore runs this file once after installing Label Studio:

    .venv/bin/python tests/interop/label_studio_server.py .venv-label-studio/.migrated-1.23.2.sqlite3

which starts the server on an empty data directory, copies its database (migrated, with the tests' admin and
token) when it answers /health, and stops it. The test fixture starts every session from a copy of that file
when there is one for the installed version, and migrates a new database otherwise.
"""

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

VENV = Path(os.environ.get("APIS_LABEL_STUDIO_VENV", Path(__file__).resolve().parents[2] / ".venv-label-studio"))
START_TIMEOUT_S = 300  # a first start migrates a new database: about a minute on a loaded 2-core machine
ADMIN_EMAIL, ADMIN_PASSWORD, ADMIN_TOKEN = "admin@example.org", "apis-test-password", "apis-test-token-0123456789"
DATABASE = "label_studio.sqlite3"  # Label Studio's file in LABEL_STUDIO_BASE_DATA_DIR


class NotStarted(RuntimeError):
    """The server exited or did not answer in time; the message ends with its log."""


def migrated_database() -> Path | None:
    """The migrated database made for the installed Label Studio version, if `make test` made one."""
    for stamp in VENV.glob(".installed-*"):
        candidate = VENV / f".migrated-{stamp.name.removeprefix('.installed-')}.sqlite3"
        if candidate.is_file():
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(data_dir: Path, document_root: Path) -> tuple[subprocess.Popen, str, float]:
    """``(process, url, seconds to /health)`` of a server on a free local port storing into ``data_dir``, serving
    local files under ``document_root``; raises :class:`NotStarted` (the server stopped) if it does not answer."""
    executable = VENV / "bin" / "label-studio"
    port = free_port()
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir), "LABEL_STUDIO_USERNAME": ADMIN_EMAIL,
           "LABEL_STUDIO_PASSWORD": ADMIN_PASSWORD, "LABEL_STUDIO_USER_TOKEN": ADMIN_TOKEN,
           "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
           "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
           "LABEL_STUDIO_LATEST_VERSION_CHECK": "false", "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
           "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": ""}
    log_path = data_dir / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(executable), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
             "--enable-legacy-api-token"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    while True:
        if process.poll() is not None:
            raise NotStarted(f"Label Studio exited with status {process.returncode} while starting; its log:\n"
                             + log_path.read_text()[-3000:])
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return process, url, time.monotonic() - started
        except httpx.HTTPError:
            pass
        if time.monotonic() - started > START_TIMEOUT_S:
            stop(process)
            raise NotStarted(f"Label Studio did not answer {url}/health within {START_TIMEOUT_S} s; its log:\n"
                             + log_path.read_text()[-3000:])
        time.sleep(1)


def stop(process: subprocess.Popen) -> None:
    """Stop the server and the children it started (its own session)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def make_migrated_database(target: Path) -> None:
    """Start a server on an empty data directory and copy its database to ``target`` once it answers."""
    with tempfile.TemporaryDirectory() as folder:
        process, _, seconds = start(Path(folder), Path(folder))
        try:
            partial = target.with_name(target.name + ".partial")
            with sqlite3.connect(Path(folder) / DATABASE) as source, sqlite3.connect(partial) as copy:
                source.backup(copy)  # a consistent copy of a database another process has open
            partial.replace(target)
        finally:
            stop(process)
    print(f"Label Studio's database migrated in {seconds:.0f} s, kept as {target}")


if __name__ == "__main__":
    if not (VENV / "bin" / "label-studio").is_file():
        print(f"note: Label Studio is not installed in {VENV}: no migrated database made")
        sys.exit(0)
    try:
        make_migrated_database(Path(sys.argv[1]))
    except NotStarted as error:  # the tests then migrate a database of their own (and say why if it fails)
        print(f"note: no migrated database made: {error}")
