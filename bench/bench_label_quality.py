"""How good are the masks a team takes home? The exported training masks of finished runs against ground truth.

For every finished step of every run given (APIS loops, AFIS loops) and for full-mask training folders, each
training instance's exported mask (``apis export-masks``: the step's model on the instance's given box, made
to agree with its answered points) is compared with its GT mask:

* ``mIoU``: mean over instances of the IoU with the GT mask, for each point constraint (``local``, the export's
  default; ``threshold``; ``none``, the model's mask as it is);
* ``beats box``: the share of instances whose exported mask has a higher IoU than a mask filling the box;
* ``mask AP``: COCO mask AP of the exported file scored as predictions against the training GT (score: the
  export's ``apis_quality``; drawn masks 1), beside the AP of filling every box (score 1);
* ``contradicted``: the share of answered points that the model's own mask got wrong before the correction;
* ``Spearman``: rank correlation between ``apis_quality`` and the IoU, over predicted masks (does sorting by the
  quality score put the bad masks first?).

AFIS runs give bought masks exactly (IoU 1) and predict the rest; a full-mask model predicts every instance
without points. Rows are grouped by strategy and step, mean ± sample standard deviation over seeds (``n-1``), and
``local - none`` comes with its paired 95 % t-interval over seeds (apis.evaluation.paired). A JSON record of every
(run, step) goes to ``--record``.

    .venv/bin/python bench/bench_label_quality.py --runs runs/lq/synth_apis/entropy_seed* \\
        runs/lq/synth_afis/entropy_seed* --full-mask runs/lq/synth_sup/full_masks/seed* \\
        --record results/label_quality_synth.json
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from records import add_record_option, provenance, save
from tables import by_group_and_step, constraint_gain, label_quality_table

from apis.config_loading import load_run_config
from apis.data.coco import load_coco
from apis.data.coords import box_pixel_range
from apis.engine.inference import ground_truth_of
from apis.evaluation.coco_eval import evaluate
from apis.evaluation.results import encode_mask
from apis.loop.mask_export import RunStep, open_run_step
from apis.loop.mask_quality import score_training_masks, summarise_quality
from apis.loop.run_dir import RunDirectory

CONSTRAINTS = ("local", "threshold", "none")


def full_mask_step(folder: Path) -> RunStep:
    """A training folder (``apis train`` with full masks) read as a step that has no points to honour."""
    cfg = load_run_config(folder / "config.yaml")
    train_set = load_coco(cfg.data.train_json, cfg.data.image_root or None).subset(cfg.data.max_train_images)
    return RunStep(folder, cfg, train_set, 0, str(folder / "model_final.pth"), {}, set())


def mask_ap(run: RunStep, rows, constraint: str | None, max_images: int) -> float:
    """Mask AP of the exported masks (``constraint``) or of box fill (None), scored against the training GT."""
    dataset = run.train_set.subset(max_images)
    results = []
    for row in rows:
        instance = dataset.instance(row.ann_id)
        if constraint is None:
            image = dataset.image(row.image_id)
            mask = np.zeros((image.height, image.width), dtype=bool)
            xs, ys, xe, ye = box_pixel_range(*instance.bbox_xyxy, image.width, image.height)
            mask[ys:ye, xs:xe] = True
            score = 1.0
        else:
            mask, score = row.masks[constraint], row.quality
        x0, y0, x1, y1 = instance.bbox_xyxy
        results.append({"image_id": row.image_id, "category_id": row.category_id, "score": float(score),
                        "bbox": [x0, y0, x1 - x0, y1 - y0], "segmentation": encode_mask(mask)})
    return evaluate(ground_truth_of(dataset), results, iou_types=("segm",))["segm/AP"]


def measure(run: RunStep, group: str, seed: int, hours: float, max_images: int, device: str) -> dict:
    """One row: the step's export quality and AP."""
    rows = score_training_masks(run, CONSTRAINTS, device=device, max_images=max_images, keep_masks=True)
    summary = summarise_quality(rows)
    return {"group": group, "run": str(run.run_dir), "seed": seed, "step": run.step, "hours": hours, **summary,
            "mask_AP": {c: mask_ap(run, rows, c, max_images) for c in CONSTRAINTS},
            "box_fill_mask_AP": mask_ap(run, rows, None, max_images)}


def loop_rows(run_dir: Path, max_images: int, device: str) -> list[dict]:
    """A row per finished step of a loop run."""
    files = RunDirectory(run_dir)
    found, train_set = [], None
    for step in files.done_steps():
        metrics = files.step_metrics(step)
        group = metrics["strategy"] if metrics["strategy"].startswith("AFIS") else f"APIS {metrics['strategy']}"
        run = open_run_step(run_dir, step, train_set)
        train_set = run.train_set
        found.append(measure(run, group, run.cfg.seed, metrics["annotation_seconds"] / 3600, max_images, device))
        print(f"{run_dir} P{step}: mIoU {found[-1]['mIoU']['local']:.3f} (box fill "
              f"{found[-1]['box_fill_mIoU']:.3f})", flush=True)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, nargs="*", default=[], help="finished loop runs (APIS or AFIS)")
    parser.add_argument("--full-mask", type=Path, nargs="*", default=[],
                        help="training folders of full-mask models (bench_supervision.py's 'full masks' rows)")
    parser.add_argument("--images", type=int, default=0, help="first N training images (0: all)")
    parser.add_argument("--device", default="cpu")
    add_record_option(parser, "label_quality")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = provenance()
    rows = []
    for run_dir in args.runs:
        rows += loop_rows(run_dir, args.images, args.device)
    for folder in args.full_mask:
        run = full_mask_step(folder)
        hours = len(list(run.train_set.instances())) * (run.cfg.oracle.mask_cost_s + run.cfg.oracle.box_cost_s) / 3600
        rows.append(measure(run, "full-mask model", run.cfg.seed, hours, args.images, args.device))
    print(label_quality_table(rows))
    comparisons = [constraint_gain(group, step, members).as_dict()
                   for (group, step), members in by_group_and_step(rows).items()]
    save(args.record, "label_quality", started, rows, arguments=args, comparisons=comparisons)


if __name__ == "__main__":
    main()
