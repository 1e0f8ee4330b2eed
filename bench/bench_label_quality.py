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
``local - none`` comes with its paired 95 % t-interval over seeds. A JSON record of every (run, step) goes to
``--record``.

    .venv/bin/python bench/bench_label_quality.py --runs runs/lq/synth_apis/entropy_seed* \\
        runs/lq/synth_afis/entropy_seed* --full-mask runs/lq/synth_sup/full_masks/seed* \\
        --record results/label_quality_synth.json
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/records.py, when run as a script

from records import provenance, record, write_record  # noqa: E402

from apis.config_loading import load_run_config  # noqa: E402
from apis.data.coco import load_coco  # noqa: E402
from apis.data.coords import box_pixel_range  # noqa: E402
from apis.engine.inference import ground_truth_of  # noqa: E402
from apis.evaluation.coco_eval import evaluate  # noqa: E402
from apis.evaluation.results import encode_mask  # noqa: E402
from apis.loop.mask_export import RunStep, open_run_step  # noqa: E402
from apis.loop.mask_quality import score_training_masks, summarise_quality  # noqa: E402
from apis.loop.run_dir import RunDirectory  # noqa: E402

CONSTRAINTS = ("local", "threshold", "none")
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


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


def _mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def paired_interval(differences: list[float]) -> str:
    """``mean [low, high]`` of paired differences, the 95 % t-interval over seeds."""
    if len(differences) < 2:
        return f"{differences[0]:+.4f} (1 seed)" if differences else "–"
    mean = float(np.mean(differences))
    half = T_975[len(differences) - 1] * float(np.std(differences, ddof=1)) / math.sqrt(len(differences))
    return f"{mean:+.4f} [{mean - half:+.4f}, {mean + half:+.4f}]"


def table(rows: list[dict]) -> str:
    """Markdown: one line per (group, step), mean ± std over seeds."""
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["group"], row["step"])].append(row)
    lines = ["| run | step | annotation h | seeds | exported mIoU (local) | threshold | none (unconstrained) "
             "| box fill mIoU | local - box fill | local - none, 95 % CI | beats box (local) | mask AP (local) "
             "| mask AP box fill | contradicted by the model | Spearman (quality, IoU) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (group, step), members in sorted(groups.items()):
        lines.append(
            f"| {group} | {'P' + str(step) if group != 'full-mask model' else '-'} "
            f"| {_mean_std([m['hours'] for m in members])} | {len(members)} "
            f"| {_mean_std([m['mIoU']['local'] for m in members])} "
            f"| {_mean_std([m['mIoU']['threshold'] for m in members])} "
            f"| {_mean_std([m['mIoU']['none'] for m in members])} "
            f"| {_mean_std([m['box_fill_mIoU'] for m in members])} "
            f"| {_mean_std([m['mIoU']['local'] - m['box_fill_mIoU'] for m in members])} "
            f"| {paired_interval([m['mIoU']['local'] - m['mIoU']['none'] for m in members])} "
            f"| {_mean_std([m['beats_box_fill']['local'] for m in members])} "
            f"| {_mean_std([m['mask_AP']['local'] for m in members])} "
            f"| {_mean_std([m['box_fill_mask_AP'] for m in members])} "
            f"| {_mean_std([m['contradicted_share'] for m in members])} "
            f"| {_mean_std([m['quality_iou_spearman'] for m in members])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, nargs="*", default=[], help="finished loop runs (APIS or AFIS)")
    parser.add_argument("--full-mask", type=Path, nargs="*", default=[],
                        help="training folders of full-mask models (bench_supervision.py's 'full masks' rows)")
    parser.add_argument("--images", type=int, default=0, help="first N training images (0: all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--record", type=Path, help="write the JSON record of every row here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started, start = provenance(), time.perf_counter()
    rows = []
    for run_dir in args.runs:
        rows += loop_rows(run_dir, args.images, args.device)
    for folder in args.full_mask:
        run = full_mask_step(folder)
        hours = len(list(run.train_set.instances())) * (run.cfg.oracle.mask_cost_s + run.cfg.oracle.box_cost_s) / 3600
        rows.append(measure(run, "full-mask model", run.cfg.seed, hours, args.images, args.device))
    print(table(rows))
    if args.record:
        write_record(args.record, record("label_quality", started, rows, time.perf_counter() - start))
        print(f"wrote {args.record}")


if __name__ == "__main__":
    main()
