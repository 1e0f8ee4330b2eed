"""How good are a loop's masks when the box is right? The mask head measured apart from the detector.

Mask AP mixes two things: whether an object is found and how good its mask is. The points a strategy
selects can only improve the second. This check gives every model of a finished loop run the *true*
val boxes (the FCOS locations that training assigns to each GT box — the ``anchors`` prediction set —
evaluated on the box's pixels, their probabilities averaged) and scores the mask inside the box:

* ``mIoU``: mean over instances of the IoU between the mask (probability > 0.5) and the GT mask;
* ``box-fill mIoU``: the same for a mask that fills the whole box, the baseline a head that has learnt
  nothing but "a box is mostly object" reaches;
* ``top-location mIoU``: the mIoU of the one location of the set with the highest score, the mask inference
  keeps for a detection (NMS keeps the top-scoring location of an object). The mean over the set above is
  what selection works with; the two can differ (on DSB2018 the single location's mask is the worse one);
* ``area ratio``: mean over instances of the mask's area divided by the GT mask's area (below 1 = masks
  that come out too small, e.g. when the points a head was trained on are mostly background);
* ``best-threshold mIoU (t)``: the mIoU at the one threshold ``t`` (0.05 to 0.95 in steps of 0.05, the
  same for every instance) that maximises it. It uses the GT to pick ``t``, so it is a diagnostic, not a
  score: a head whose mIoU at 0.5 is far below it ranks pixels well but is calibrated to the wrong base
  rate;
* ``AUC``: mean over instances of the probability that a random GT-foreground pixel of the box gets a
  higher probability than a random background pixel (0.5 = the mask ignores the image);
* ``best 1-px shift``: the mIoU (at 0.5) with every mask moved by the one (dx, dy) in {-1, 0, 1}^2 that
  maximises it, and that shift: (+0, +0) means the masks sit where the GT is, and a head or a paste that
  put them a pixel off would show here as another shift and a higher mIoU (x = column, y = row);
* ``spread``: mean over instances of the standard deviation of the probabilities inside the box
  (0 = a constant mask);
* ``alive L1 / L2``: share of the dynamic head's hidden units (layers 1 and 2, averaged over the
  instance's assigned locations) that are positive at one or more mask-feature cells of the box. A unit that
  is negative over the whole box passes nothing of the image through its ReLU and gets no gradient
  (with ``model.dynamic_activation=leaky_relu`` it still passes a tenth, so there a low share is no death);
  empty for Mask R-CNN, whose prediction set is its positive proposals' box-frame masks.

Rows are also split by the object's size *as the network sees it* (square root of the box area after
resizing to the test size), because the mask branch works at stride 8 (or 4) and the masks at stride 4: an
object a few cells wide leaves the head little room for a shape.

    .venv/bin/python bench/bench_mask_quality.py runs/label_efficiency_fanin/*_seed* --images 60

Each run is evaluated with its own ``config.yaml`` (data, test size); ``--images`` caps the val images and
``--set key=value`` changes a setting for every run (e.g. the test size, or
``model.refinement.method=colour_crf``: the probabilities are then refined on the stored image before every
measure, as exported masks are). A
plain training folder (``apis train``'s output) gives one row for its ``model_final.pth``.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import numpy as np
import torch
from records import add_record_option, provenance, save

from apis.active.prediction import SelectionImages, iter_prediction_sets
from apis.active.selection import crop_to_grid
from apis.config_loading import load_run_config
from apis.data.coco import load_datasets
from apis.data.dataset import collate
from apis.data.transforms import resized_size
from apis.engine.inference import load_model
from apis.loop.mask_quality import iou
from apis.loop.run_dir import step_dir
from apis.modeling.mask_losses import box_masks_at_stride
from apis.modeling.refinement import grid_colours, refine_probabilities
from apis.utils.device import resolve_device

SIZE_EDGES = [0, 16, 32, math.inf]  # object size at the network's input, pixels
THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)
SHIFTS = [(dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]  # pixels the mask moves by: dx columns, dy rows


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Mann-Whitney AUC of ``scores`` for ``positive`` against the rest (ties count half); None if one class."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    # Average ranks over ties, so that a constant mask scores exactly 0.5.
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    first_rank = np.cumsum(counts) - counts + 1
    ranks = (first_rank + (counts - 1) / 2)[inverse]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def shifted_ious(mask: np.ndarray, grid_range: tuple[int, int, int, int], gt: np.ndarray) -> np.ndarray:
    """IoU of ``mask`` (``[h, w]`` on the grid ``(x0, y0, x1, y1)`` of the full image) with the full-image ``gt``
    after moving ``mask`` by each of :data:`SHIFTS` (GT outside the image counts as background)."""
    xs, ys, xe, ye = grid_range
    padded = np.pad(gt.astype(bool), 1)  # index + 1 = image pixel
    # Moving the mask by d compares its pixel r with the GT's pixel r + d.
    return np.array([iou(mask, padded[ys + 1 + dy:ye + 1 + dy, xs + 1 + dx:xe + 1 + dx]) for dx, dy in SHIFTS])


def top_location_probs(probs: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """The ``[h, w]`` probabilities of the member of a prediction set (``probs`` ``[k, h, w]``) whose
    score (``[k]``) is highest: the mask inference would draw for the object."""
    return probs[int(scores.argmax())]


def input_size(val, ann_id: int, cfg) -> float:
    """``sqrt(box area)`` of an instance in pixels of the resized test image."""
    inst = val.instance(ann_id)
    image = val.image(inst.image_id)
    height, _ = resized_size(image.height, image.width, cfg.data.min_size_test, cfg.data.max_size)
    x0, y0, x1, y1 = inst.bbox_xyxy
    return float(np.sqrt((x1 - x0) * (y1 - y0))) * height / image.height


@torch.no_grad()
def hidden_units_alive(model, cfg, val, device: torch.device) -> list[float]:
    """Per hidden layer of the dynamic head, the share of units positive somewhere in their GT box (none for
    a model without a dynamic head: Mask R-CNN)."""
    alive: list[list[float]] = []
    if not hasattr(model, "dynamic_head"):
        return []
    images = SelectionImages(val, [(cfg.data.min_size_test, False)], cfg.data.max_size)
    for index in range(len(images)):
        batch = collate(images[index])
        target = {k: v.to(device) for k, v in batch.targets[0].items()}
        forward = model(batch.images.to(device))
        gt_index, _ = model.assign(forward, [target["boxes"]])
        members = torch.nonzero(gt_index[0] >= 0).squeeze(1)
        if members.numel() == 0:
            continue
        outputs = model.dynamic_head.layer_outputs(forward.mask_features, forward.head.controller[0, members],
                                                   forward.locations[members], forward.levels[members],
                                                   torch.zeros_like(members))
        height, width = forward.mask_features.shape[-2:]
        in_box = box_masks_at_stride(target["boxes"][gt_index[0, members]], height, width, model.mask_branch.stride)
        in_box = in_box.reshape(len(members), 1, height * width)
        for layer, hidden in enumerate(outputs[:-1]):
            if len(alive) <= layer:
                alive.append([])
            alive[layer].append(float(((hidden > 0) & in_box).any(dim=2).float().mean()))
    return [float(np.mean(values)) for values in alive]


def step_quality(checkpoint: Path, cfg, val, device: torch.device) -> list[dict]:
    """Per-instance means of the measures for one checkpoint on ``val``'s true boxes: one dict for
    all instances, then one per size bucket."""
    model = load_model(checkpoint, cfg, device)
    alive = hidden_units_alive(model, cfg, val, device)
    gt_masks = val.masks("evaluation")
    rows = []
    for sets in iter_prediction_sets([model], cfg, val, device, progress=False):
        image = None
        for ann_id, pred in sets.items():
            if pred.k == 0:  # no location assigned to this box: nothing to score
                continue
            full_gt = gt_masks.mask(ann_id)
            gt = crop_to_grid(full_gt, pred).numpy().astype(bool)
            probs, top = pred.probs.mean(dim=0), top_location_probs(pred.probs, pred.scores)
            if model.refinement is not None:  # as the exported masks are (apis.loop.mask_export)
                image = val.load_image(val.instance(ann_id).image_id) if image is None else image
                colours = grid_colours(image, pred.origin, tuple(probs.shape))
                probs, top = (refine_probabilities(model.refinement, p, colours) for p in (probs, top))
            probs, top = probs.numpy(), top.numpy() > 0.5
            mask = probs > 0.5
            rows.append({"size": input_size(val, ann_id, cfg),
                         "iou_at": np.array([iou(probs > t, gt) for t in THRESHOLDS]),
                         "iou_shifted": shifted_ious(mask, pred.grid_range, full_gt),
                         "box_fill": iou(np.ones_like(gt), gt), "iou_top": iou(top, gt),
                         "area_ratio": float(mask.sum() / max(gt.sum(), 1)),
                         "auc": roc_auc(probs.ravel(), gt.ravel()), "spread": float(probs.std())})
    at_half = int(np.flatnonzero(THRESHOLDS == 0.5)[0])
    buckets = [("all", 0.0, math.inf)]
    buckets += [(f"{lo:g}-{hi:g} px" if math.isfinite(hi) else f">= {lo:g} px", lo, hi)
                for lo, hi in zip(SIZE_EDGES, SIZE_EDGES[1:])]
    summaries = []
    for name, low, high in buckets:
        members = [r for r in rows if low <= r["size"] < high]
        if not members:
            continue
        miou_at = np.mean([r["iou_at"] for r in members], axis=0)
        miou_shifted = np.mean([r["iou_shifted"] for r in members], axis=0)
        aucs = [r["auc"] for r in members if r["auc"] is not None]
        summaries.append({"size": name, "instances": len(members), "mIoU": miou_at[at_half],
                          "box_fill_mIoU": np.mean([r["box_fill"] for r in members]),
                          "top_mIoU": np.mean([r["iou_top"] for r in members]),
                          "area_ratio": np.mean([r["area_ratio"] for r in members]),
                          "best_mIoU": miou_at.max(), "best_threshold": THRESHOLDS[miou_at.argmax()],
                          "shift_mIoU": miou_shifted.max(), "shift": SHIFTS[int(miou_shifted.argmax())],
                          "AUC": np.mean(aucs) if aucs else math.nan,
                          "spread": np.mean([r["spread"] for r in members]),
                          "alive": alive if name == "all" else None})
    return summaries


def checkpoints_of(run_dir: Path) -> list[tuple[str, Path]]:
    """``(step label, final checkpoint)`` of a loop run's finished steps, or of a plain training folder."""
    if (run_dir / "model_final.pth").exists():
        return [("-", run_dir / "model_final.pth")]
    found = []
    step = 0
    while (checkpoint := step_dir(run_dir, step) / "train" / "model_final.pth").exists():
        found.append((f"P{step}", checkpoint))
        step += 1
    return found


def print_run(run_dir: Path, max_images: int, device: torch.device, overrides: list[str]) -> list[dict]:
    """Print one table row per final checkpoint of ``run_dir`` (and size bucket); returns the rows."""
    cfg = load_run_config(run_dir / "config.yaml", [f"data.max_val_images={max_images}", *overrides])
    _, val = load_datasets(cfg)
    rows = []
    for step, checkpoint in checkpoints_of(run_dir):
        for summary in step_quality(checkpoint, cfg, val, device):
            rows.append({"run": str(run_dir), "step": step, **summary})
            print(_format({**rows[-1], "run": run_dir.name}), flush=True)
    return rows


def _format(row: dict) -> str:
    return (f"| {row['run']} | {row['step']} | {row['size']} | {row['instances']:,} | {row['mIoU']:.3f} "
            f"| {row['box_fill_mIoU']:.3f} "
            f"| {row['mIoU'] - row['box_fill_mIoU']:+.3f} "
            f"| {row['top_mIoU']:.3f} ({row['top_mIoU'] - row['box_fill_mIoU']:+.3f}) | {row['area_ratio']:.2f} "
            f"| {row['best_mIoU']:.3f} ({row['best_threshold']:.2f}) "
            f"| {row['shift_mIoU']:.3f} ({row['shift'][0]:+d}, {row['shift'][1]:+d}) "
            f"| {row['AUC']:.3f} | {row['spread']:.3f} "
            f"| {' / '.join(f'{a:.2f}' for a in row['alive']) if row['alive'] else ''} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="loop run directories")
    parser.add_argument("--images", type=int, default=60, help="first N val images")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run (e.g. data.min_size_test=704: another test size)")
    add_record_option(parser, "mask_quality")
    args = parser.parse_args()
    recording, rows = provenance(), []
    logging.basicConfig(level=logging.WARNING)
    device = resolve_device(args.device)
    print("| run | step | size at input | instances | mIoU | box-fill mIoU | mIoU - box fill "
          "| top-location mIoU (- box fill) | area ratio | best-threshold mIoU (t) "
          "| best 1-px shift mIoU (dx, dy) | AUC | spread | alive L1 / L2 |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run_dir in args.runs:
        rows += print_run(run_dir, args.images, device, args.set)
    save(args.record, "mask_quality", recording, rows, arguments=args)


if __name__ == "__main__":
    main()
