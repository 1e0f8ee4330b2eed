"""``apis demo``: the main job on the built-in synthetic data, ending with a report a person can read."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path("data/synth")


def run_demo(out_dir: Path, quick: bool = False) -> None:
    from apis.data.synth import make_synthetic_dataset

    summary = make_synthetic_dataset(DATA_DIR, num_images=200, size=128, seed=0)
    print(summary.format())
