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


class Clock:
    """A settable clock in unix seconds, for the question queue's leases (``clock.now += seconds``)."""

    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


# A tiny CPU run answered by people (oracle.kind=human), for the annotation page, the Label Studio round
# trip and the browser test. Training settings as small as tests/active's, so `apis run` resumes in seconds.
HUMAN_RUN_SETTINGS = {
    "device": "cpu", "oracle": {"kind": "human"},
    "model": {"depth": 18, "fpn_channels": 16, "mask_branch_channels": 16, "head_convs": 1, "num_classes": 4,
              "norm": "bn"},
    "data": {"min_size_train": [64], "min_size_test": 64, "max_size": 96, "num_workers": 0},
    "solver": {"batch_size": 2, "max_iter": 4, "steps": [3], "warmup_iters": 1, "checkpoint_period": 2,
               "log_period": 1, "base_lr": 0.001},
    "loop": {"steps": 0, "finetune_iters": 2, "finetune_steps": [1], "finetune_lr": 0.001},
}


@pytest.fixture
def human_run(synth_dir, tmp_path):
    """``(name="human", **sections) -> (config path, run dir)``: a human-answered run whose P0 questions are
    stored (``apis run`` stopped at step 0, waiting). ``sections`` update the settings' sections."""
    import yaml

    from apis.active.loop import run_active_loop
    from apis.active.questions import AnswersPending
    from apis.config import load_config

    def make(name: str = "human", **sections) -> tuple[Path, Path]:
        settings = {key: dict(value) if isinstance(value, dict) else value for key, value in HUMAN_RUN_SETTINGS.items()}
        for section, values in sections.items():
            settings[section] = {**settings.get(section, {}), **values}
        run_dir = tmp_path / name
        settings["output_dir"] = str(run_dir)
        settings["data"].update(train_json=str(synth_dir / "annotations" / "train.json"),
                                val_json=str(synth_dir / "annotations" / "val.json"))
        config_path = tmp_path / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(settings))
        with pytest.raises(AnswersPending):
            run_active_loop(load_config(config_path))
        return config_path, run_dir

    return make
