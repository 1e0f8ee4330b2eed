"""A tiny synthetic dataset and a tiny CPU config for the loop tests; each test sees only the built-in metrics."""

import pytest

from apis.active import strategies
from apis.config import load_config


@pytest.fixture(autouse=True)
def metric_registry(monkeypatch):
    """A copy of the metric registry for each test: metrics a test registers are gone after it."""
    monkeypatch.setattr(strategies, "_REGISTRY", dict(strategies._REGISTRY))


def _tiny_overrides(data_root, output_dir, *extra):
    return [
        f"data.train_json={data_root}/annotations/train.json", f"data.val_json={data_root}/annotations/val.json",
        f"output_dir={output_dir}", "device=cpu", "model.depth=18", "model.fpn_channels=16",
        "model.mask_branch_channels=16", "model.head_convs=1", "model.num_classes=4", "model.norm=bn",
        "data.min_size_train=[64]", "data.min_size_test=64", "data.max_size=96", "data.num_workers=0",
        "solver.batch_size=2", "solver.max_iter=4", "solver.steps=[3]", "solver.warmup_iters=1",
        "solver.checkpoint_period=2", "solver.log_period=1", "solver.base_lr=0.001",
        "loop.steps=2", "loop.finetune_iters=2", "loop.finetune_steps=[1]", "loop.finetune_lr=0.001",
        *extra,
    ]


@pytest.fixture
def tiny_config(synth_dir, tmp_path):
    def make(name="run", *extra):
        return load_config(None, _tiny_overrides(synth_dir, tmp_path / name, *extra))
    return make


@pytest.fixture
def tiny_overrides():
    """``(data_root, output_dir, *extra) -> list of key=value`` for a tiny CPU run."""
    return _tiny_overrides


@pytest.fixture(scope="session")
def finished_runs(synth_dir, tmp_path_factory):
    """An entropy run (P0..P2) and a random run sharing its P0 and M0, finished once per session."""
    from apis.active.loop import run_active_loop

    root = tmp_path_factory.mktemp("runs")
    entropy = load_config(None, _tiny_overrides(synth_dir, root / "entropy"))
    random = load_config(None, _tiny_overrides(synth_dir, root / "random", "selection.metric=random",
                                               f"loop.initial_run={root / 'entropy'}"))
    return {"entropy": (entropy, run_active_loop(entropy)), "random": (random, run_active_loop(random))}
