"""Shared fixtures of the engine tests: a tiny synthetic dataset and a tiny CondInst config."""

from pathlib import Path

import pytest

from apis.config import ExperimentConfig
from apis.config_loading import load_config, merge_overrides

# The real model, as small as it gets: these tests check the engine, not accuracy.
TINY_MODEL = ["model.depth=18", "model.fpn_channels=32", "model.mask_branch_channels=16", "model.head_convs=1",
              "model.norm=bn", "model.backbone_weights=none"]


@pytest.fixture(scope="session")
def tiny_config(synth_dir):
    """``tiny_config(output_dir, *overrides)``: a CPU config training at a fraction of a second per
    iteration on :func:`synth_dir`."""
    return lambda output_dir, *overrides: _tiny_config(synth_dir, output_dir, *overrides)


def _tiny_config(synth_dir: Path, output_dir: Path, *overrides: str) -> ExperimentConfig:
    return load_config(None, merge_overrides([
        f"data.train_json={synth_dir / 'annotations' / 'train.json'}",
        f"data.val_json={synth_dir / 'annotations' / 'val.json'}",
        f"output_dir={output_dir}", "device=cpu", "model.num_classes=4", *TINY_MODEL,
        "data.min_size_train=[32]", "data.min_size_test=32", "data.max_size=64", "data.num_workers=0",
        "data.random_points_per_instance=2", "solver.batch_size=2", "solver.base_lr=0.01",
        "solver.warmup_iters=2", "solver.warmup_factor=0.1", "solver.steps=[4]", "solver.log_period=1",
        "solver.checkpoint_period=1000",
    ], list(overrides)))
