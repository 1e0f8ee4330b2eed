"""A real Label Studio server for the tests that talk to one: started once per session, only when such a test
runs, on 127.0.0.1 at a free port, with a temporary data directory and an admin whose API token is known.

Label Studio lives in a venv of its own (`make label-studio` installs the pinned version into
.venv-label-studio/; `make test` does it when it is missing), as its dependencies (Django and many more) are
not the project's. Without it, or when it does not start, the tests are skipped with the reason, unless
APIS_REQUIRE_LABEL_STUDIO=1 (set by .ci/run), where they fail.
"""

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from label_studio_server import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    ADMIN_TOKEN,
    DATABASE,
    VENV,
    NotStarted,
    migrated_database,
    start,
    stop,
)


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


@pytest.fixture(scope="session")
def label_studio(synth_dir, tmp_path_factory):
    """The running server (:class:`LabelStudioServer`); stopped at the end of the session. Its database is a copy
    of the one `make test` migrated for the installed version (label_studio_server.py), when there is one."""
    if not (VENV / "bin" / "label-studio").is_file():
        unavailable(f"Label Studio is not installed in {VENV} (`make label-studio` installs it)")
    data_dir = tmp_path_factory.mktemp("label-studio")
    template = migrated_database()
    if template is not None:
        shutil.copyfile(template, data_dir / DATABASE)
    try:
        process, url, seconds = start(data_dir, synth_dir)
    except NotStarted as error:
        unavailable(str(error))
    try:
        yield LabelStudioServer(url=url, token=ADMIN_TOKEN, email=ADMIN_EMAIL, password=ADMIN_PASSWORD,
                                document_root=synth_dir, start_s=seconds)
    finally:
        stop(process)
