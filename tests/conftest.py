"""Fixtures shared by every test package: one CPU thread, a tiny synthetic dataset."""

import os
from pathlib import Path

# As the CLI does for its process (apis.cli.main): OpenMP threads wait without spinning, here and in the
# processes tests start. Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

from apis.data.synth import make_synthetic_dataset  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One intra-op thread: the test machine's cores are shared, and spinning OpenMP threads that
    wait for a descheduled sibling make a step many times slower. Session-scoped, so that it is in
    place before any module-scoped training fixture runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """8 synthetic 64 px images (6 train, 2 val), 4 categories with COCO ids 1..4."""
    out = tmp_path_factory.mktemp("synth")
    make_synthetic_dataset(out, num_images=8, size=64, seed=0)
    return out


