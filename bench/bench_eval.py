"""Time ``apis.evaluation.coco_eval.evaluate`` on DSB2018 val with 100 detections per image, per backend.

Detections are built deterministically (seeded) from the ground truth: for each image about 10 % of
the GT nuclei are missed, up to 90 of the others are detected with their mask dilated, eroded
(1-2 px) or shifted (up to 3 px) and a score in [0.3, 1), and false-positive discs (radius 2-10 px,
score in [0.05, 0.7)) fill the image up to exactly 100 detections. Boxes are the masks' tight boxes.

Each timing is one call of ``evaluate(GT_PATH, detections, iou_types=(iou_type,), backend=...)``,
so it includes reading the GT json; it is the best of ``--repeats`` runs, or a single run when the
first one takes longer than ``--single-run-above`` seconds. Prints a markdown table.

Usage: .venv/bin/python bench/bench_eval.py [--gt PATH] [--seed 0] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from records import add_record_option, provenance, save

from apis.evaluation.coco_eval import BACKENDS, METRIC_NAMES, evaluate
from apis.evaluation.results import detections_to_results

DEFAULT_GT = Path("/work/shared/data/dsb2018_nuclei/annotations/val.json")
DETECTIONS_PER_IMAGE = 100
MAX_TRUE_DETECTIONS = 90
MISS_RATE = 0.1
MARGIN = 4  # crop margin around a GT box, wider than the largest dilation (2 px) or shift (3 px)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gt", type=Path, default=DEFAULT_GT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--single-run-above", type=float, default=30.0)
    add_record_option(parser, "eval")
    args = parser.parse_args()
    recording = provenance()

    gt = json.loads(args.gt.read_text())
    started = time.perf_counter()
    detections = make_detections(gt, np.random.default_rng(args.seed))
    print(
        f"{len(gt['images'])} images, {len(gt['annotations'])} GT masks, {len(detections)} detections "
        f"(built in {time.perf_counter() - started:.1f} s, seed {args.seed})"
    )

    rows, metrics_by_backend = [], {}
    for backend in reversed(BACKENDS):  # pycocotools first: the reference
        for iou_type in ("segm", "bbox"):
            seconds, metrics = time_evaluate(args.gt, detections, iou_type, backend, args)
            metrics_by_backend.setdefault(backend, {}).update(metrics)
            rows.append((backend, iou_type, seconds, metrics))
            print(f"  {backend} {iou_type}: {seconds:.2f} s", flush=True)

    reference, other = (metrics_by_backend[b] for b in reversed(BACKENDS))
    largest_gap = max(abs(reference[k] - other[k]) for k in reference if not math.isnan(reference[k]))
    same_nans = all(math.isnan(reference[k]) == math.isnan(other[k]) for k in reference)
    print()
    print(f"{datetime.date.today()}, {cpu_description()}, Python {platform.python_version()}")
    print()
    print("| backend | IoU type | wall s | AP | AP50 | AP75 | APs | APm |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for backend, iou_type, seconds, metrics in rows:
        values = " | ".join(f"{metrics[f'{iou_type}/{name}']:.3f}" for name in METRIC_NAMES[:5])
        print(f"| {backend} | {iou_type} | {seconds:.2f} | {values} |")
    print()
    print(f"Largest difference between the backends over all metrics: {largest_gap:.2e} (NaNs agree: {same_nans})")
    save(args.record, "eval", recording,
         [{"backend": backend, "iou_type": iou_type, "wall_s": seconds, "metrics": metrics, "images": len(gt["images"]),
           "detections": len(detections)} for backend, iou_type, seconds, metrics in rows], arguments=args)


def time_evaluate(gt_path: Path, detections: list[dict], iou_type: str, backend: str, args) -> tuple[float, dict]:
    best = math.inf
    for repeat in range(args.repeats):
        started = time.perf_counter()
        metrics = evaluate(gt_path, detections, iou_types=(iou_type,), backend=backend)
        best = min(best, time.perf_counter() - started)
        if repeat == 0 and best > args.single_run_above:
            break
    return best, metrics


def make_detections(gt: dict, rng: np.random.Generator) -> list[dict]:
    """Exactly ``DETECTIONS_PER_IMAGE`` results per image (see the module docstring)."""
    annotations_by_image: dict[int, list[dict]] = {}
    for annotation in gt["annotations"]:
        if not annotation.get("iscrowd", 0):
            annotations_by_image.setdefault(annotation["image_id"], []).append(annotation)
    detections = []
    for image in sorted(gt["images"], key=lambda image: image["id"]):
        height, width = image["height"], image["width"]
        annotations = annotations_by_image.get(image["id"], [])
        found = [a for a in annotations if rng.random() >= MISS_RATE]
        order = rng.permutation(len(found))[:MAX_TRUE_DETECTIONS]
        masks, scores = [], []
        for index in order:
            masks.append(perturbed_gt_mask(found[index], height, width, rng))
            scores.append(rng.uniform(0.3, 1.0))
        while len(masks) < DETECTIONS_PER_IMAGE:
            masks.append(random_disc(height, width, rng))
            scores.append(rng.uniform(0.05, 0.7))
        masks = np.stack(masks)
        boxes = np.array([tight_box_xyxy(mask) for mask in masks], dtype=np.float64)
        category_ids = np.full(len(masks), gt["categories"][0]["id"])
        detections += detections_to_results(image["id"], masks, boxes, np.array(scores), category_ids)
    return detections


def perturbed_gt_mask(annotation: dict, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """The GT mask dilated, eroded (1-2 px, 3x3 steps) or shifted (up to 3 px), never empty."""
    segmentation = annotation["segmentation"]
    if isinstance(segmentation, list):
        segmentation = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        segmentation = mask_utils.frPyObjects(segmentation, height, width)
    mask = mask_utils.decode(segmentation).astype(bool)
    x, y, w, h = annotation["bbox"]
    x0, y0 = max(int(x) - MARGIN, 0), max(int(y) - MARGIN, 0)
    x1, y1 = min(int(math.ceil(x + w)) + MARGIN, width), min(int(math.ceil(y + h)) + MARGIN, height)
    crop = mask[y0:y1, x0:x1]
    operation = rng.integers(3)
    if operation == 0:
        changed = dilate(crop, int(rng.integers(1, 3)))
    elif operation == 1:
        changed = ~dilate(~crop, int(rng.integers(1, 3)))
    else:
        changed = shift(crop, int(rng.integers(-3, 4)), int(rng.integers(-3, 4)))
    if not changed.any():
        changed = crop
    result = np.zeros((height, width), dtype=bool)
    result[y0:y1, x0:x1] = changed
    return result


def dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary dilation by a 3x3 square, ``steps`` times; pixels beyond the array count as background."""
    for _ in range(steps):
        padded = np.pad(mask, 1)
        grown = np.zeros_like(mask)
        for dy in range(3):
            for dx in range(3):
                grown |= padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]]
        mask = grown
    return mask


def shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``mask`` moved by ``dy`` rows and ``dx`` columns; what leaves the array is dropped."""
    height, width = mask.shape
    moved = np.zeros_like(mask)
    moved[max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = mask[
        max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)
    ]
    return moved


def random_disc(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    radius = rng.uniform(2.0, 10.0)
    centre_row, centre_col = rng.uniform(0, height), rng.uniform(0, width)
    rows, cols = np.ogrid[:height, :width]
    disc = (rows + 0.5 - centre_row) ** 2 + (cols + 0.5 - centre_col) ** 2 <= radius**2
    if not disc.any():  # a disc centred between pixel centres near a corner can miss them all
        disc[min(int(centre_row), height - 1), min(int(centre_col), width - 1)] = True
    return disc


def tight_box_xyxy(mask: np.ndarray) -> list[float]:
    """Continuous xyxy box of the mask's pixels (pixel (x, y) covers [x, x+1) x [y, y+1))."""
    rows, cols = np.nonzero(mask)
    return [float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)]


def cpu_description() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{model}, nproc {len(os.sched_getaffinity(0))}"


if __name__ == "__main__":
    main()
