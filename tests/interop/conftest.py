"""A real Label Studio server for the tests that talk to one: started once per session, only when such a test
runs, on 127.0.0.1 at a free port, with a temporary data directory and an admin whose API token is known.

Label Studio lives in a venv of its own (`make label-studio` installs the pinned version into
.venv-label-studio/; `make test` does it when it is missing), as its dependencies (Django and many more) are
not the project's. Without it, or when it does not start, the tests are skipped with the reason, unless
APIS_REQUIRE_LABEL_STUDIO=1 (set by .ci/run), where they fail.
"""

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

VENV = Path(os.environ.get("APIS_LABEL_STUDIO_VENV", Path(__file__).resolve().parents[2] / ".venv-label-studio"))
START_TIMEOUT_S = 300  # a first start migrates a new database: about a minute on a loaded 2-core machine
ADMIN_EMAIL, ADMIN_PASSWORD, ADMIN_TOKEN = "admin@example.org", "apis-test-password", "apis-test-token-0123456789"


@dataclass(frozen=True)
class LabelStudioServer:
    url: str
    token: str
    email: str
    password: str
    document_root: Path  # LOCAL_FILES_DOCUMENT_ROOT: the synthetic data's folder, above its images
    start_s: float  # how long it took to answer /health


def unavailable(reason: str):
    if os.environ.get("APIS_REQUIRE_LABEL_STUDIO") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def label_studio(synth_dir, tmp_path_factory):
    """The running server (:class:`LabelStudioServer`); stopped at the end of the session."""
    executable = VENV / "bin" / "label-studio"
    if not executable.is_file():
        unavailable(f"Label Studio is not installed in {VENV} (`make label-studio` installs it)")
    data_dir = tmp_path_factory.mktemp("label-studio")
    port = free_port()
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir), "LABEL_STUDIO_USERNAME": ADMIN_EMAIL,
           "LABEL_STUDIO_PASSWORD": ADMIN_PASSWORD, "LABEL_STUDIO_USER_TOKEN": ADMIN_TOKEN,
           "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(synth_dir),
           "LABEL_STUDIO_LATEST_VERSION_CHECK": "false", "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
           "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": ""}
    log_path = data_dir / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(executable), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
             "--enable-legacy-api-token"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        while True:
            if process.poll() is not None:
                unavailable(f"Label Studio exited with status {process.returncode} while starting; its log:\n"
                            + log_path.read_text()[-3000:])
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > START_TIMEOUT_S:
                unavailable(f"Label Studio did not answer {url}/health within {START_TIMEOUT_S} s; its log:\n"
                            + log_path.read_text()[-3000:])
            time.sleep(1)
        yield LabelStudioServer(url=url, token=ADMIN_TOKEN, email=ADMIN_EMAIL, password=ADMIN_PASSWORD,
                                document_root=synth_dir, start_s=time.monotonic() - started)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # its own session: the server and the children it started
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
