"""How well a run's models fit their labelled points while they train (the paper's Fig. 4b; docs/design.md,
"The report").

Every training logs ``point_acc``, the share of the labelled points of its batch that the mask head
classifies right (``step_NNN/train/metrics.jsonl``). Laid end to end over the steps, an active strategy's
curve drops where a step adds points the previous model got wrong, and a random one's hardly moves.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from apis.engine.metrics_log import METRICS_FILE, read_metrics
from apis.loop.run_dir import step_dir


def _point_accuracies(train_dir: Path) -> list[tuple[int, float]]:
    """``(iteration, point_acc)`` of the logged windows of a training folder that measured one."""
    return [(row["iteration"], row["point_acc"]) for row in read_metrics(train_dir / METRICS_FILE)
            if row.get("point_acc") is not None and not math.isnan(row["point_acc"])]


def final_point_accuracy(train_dir: str | Path, windows: int) -> float:
    """Mean ``point_acc`` of the last ``windows`` logged windows of a training folder (NaN if none)."""
    values = [acc for _, acc in _point_accuracies(Path(train_dir))]
    return float(np.mean(values[-windows:])) if values else math.nan


def point_accuracy_curve(run_dir: str | Path) -> list[dict]:
    """``point_acc`` of the run's own model over its whole training, steps laid end to end.

    Returns one record per logged window, ``{"iteration", "step", "point_acc"}``, where ``iteration`` counts
    from the start of M0's training (a step's fine-tuning starts after the previous step's last logged
    iteration). Steps without a training log end the curve.
    """
    curve: list[dict] = []
    offset = 0
    step = 0
    while (step_dir(run_dir, step) / "train" / METRICS_FILE).exists():
        train_dir = step_dir(run_dir, step) / "train"
        curve += [{"iteration": offset + iteration, "step": step, "point_acc": acc}
                  for iteration, acc in _point_accuracies(train_dir)]
        offset += max((row["iteration"] for row in read_metrics(train_dir / METRICS_FILE)), default=0)
        step += 1
    return curve
