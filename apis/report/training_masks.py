"""The report's curve "training-mask quality against annotation hours": how good the masks a run would hand
over (``apis export-masks``) are at each step, against the hours spent, with filling the box as the line to beat.

Only runs whose training set has GT masks can be scored (a benchmark, or the simulated annotator); the others
are left out with a note. Scored on the first ``max_images`` training images of each run, so that a report over
large runs stays quick.
"""

from __future__ import annotations

from pathlib import Path

from apis.loop.mask_export import open_run_step
from apis.loop.mask_quality import score_training_masks, summarise_quality
from apis.loop.run_dir import RunDirectory


def step_mask_quality(run_dir: Path, max_images: int, device: str | None) -> list[dict]:
    """Per finished step of ``run_dir``: ``hours``, ``mIoU`` of the exported masks (local constraint) and
    ``box_fill_mIoU``; empty when the training set has no GT masks."""
    files = RunDirectory(run_dir)
    rows, train_set = [], None
    for step in files.done_steps():
        run = open_run_step(run_dir, step, train_set)  # the training set is read once per run, not per step
        train_set = run.train_set
        if not train_set.has_masks:
            return []
        summary = summarise_quality(score_training_masks(run, ("local",), device=device, max_images=max_images))
        rows.append({"step": step, "hours": files.step_metrics(step)["annotation_seconds"] / 3600,
                     "mIoU": summary["mIoU"]["local"], "box_fill_mIoU": summary["box_fill_mIoU"]})
    return rows
