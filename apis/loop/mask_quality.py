"""How good are the masks a run hands over? The exported training masks against ground truth.

Needs a training set with GT masks (a benchmark, or a run answered by the simulated oracle). Per instance:
the IoU of its exported mask (:mod:`apis.loop.mask_export`, under each point constraint asked for) with its
GT mask, the IoU a mask filling the box would get, and the export's review fields. Read by
``bench/bench_label_quality.py`` (which adds mask AP) and by ``apis report`` (the curve "training-mask quality
against annotation hours").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from apis.active.point_constraint import Constraint
from apis.data.coords import box_pixel_range
from apis.engine.inference import load_model
from apis.loop.mask_export import (
    InstanceProbabilities,
    RunStep,
    answered_points,
    export_instance,
    full_image_mask,
    instance_probabilities,
)
from apis.utils.device import resolve_device


@dataclass
class InstanceQuality:
    """One training instance: ``iou[constraint]`` of its exported mask with the GT mask, ``box_fill_iou``,
    where the mask came from and the export's review fields; ``masks[constraint]`` ``bool[H, W]`` when kept."""

    ann_id: int
    image_id: int
    category_id: int
    source: str
    box_fill_iou: float
    quality: float
    points: int
    contradicted: int
    iou: dict[str, float]
    masks: dict[str, np.ndarray] = field(default_factory=dict)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def score_training_masks(run: RunStep, constraints: Sequence[Constraint] = ("local",), device: str | None = None,
                         max_images: int = 0, keep_masks: bool = False, progress: bool = False
                         ) -> list[InstanceQuality]:
    """Per non-crowd training instance of ``run`` (the first ``max_images`` images; 0: all), its exported mask
    under each of ``constraints`` scored against the GT mask. A drawn mask scores as the GT it is."""
    train_set = run.train_set.subset(max_images)
    gt_masks = train_set.masks("evaluation")
    found: dict[int, InstanceProbabilities] = {}
    if any(inst.ann_id not in run.drawn for inst in train_set.instances()):
        torch_device = resolve_device(device or run.cfg.device)
        model = load_model(run.checkpoint, run.cfg, torch_device)
        found = {f.ann_id: f for f in instance_probabilities(model, run.cfg, train_set, torch_device, progress)}
    rows = []
    for inst in train_set.instances():
        image = train_set.image(inst.image_id)
        gt = gt_masks.mask(inst.ann_id)
        gt_area = int(gt.sum())
        xs, ys, xe, ye = box_pixel_range(*inst.bbox_xyxy, image.width, image.height)
        box_fill = box_iou(gt[ys:ye, xs:xe], (xe - xs) * (ye - ys), gt_area)
        points = run.points.get(inst.ann_id)
        if inst.ann_id in run.drawn:
            rows.append(InstanceQuality(inst.ann_id, inst.image_id, inst.category_id, "drawn", box_fill, 1.0,
                                        answered_points(points), 0, {c: 1.0 for c in constraints},
                                        {c: gt for c in constraints} if keep_masks else {}))
            continue
        probabilities = found.get(inst.ann_id, InstanceProbabilities(inst.ann_id, (xs, ys), None))
        ious, masks, first = {}, {}, None
        for constraint in constraints:
            exported = export_instance(probabilities, train_set, points, constraint, run.cfg.model.mask_threshold)
            first = first or exported
            ious[constraint] = grid_iou(exported.mask, exported.origin, gt, gt_area)
            if keep_masks:
                masks[constraint] = full_image_mask(exported, image.height, image.width)
        rows.append(InstanceQuality(inst.ann_id, inst.image_id, inst.category_id, first.source, box_fill,
                                    first.quality, first.points, first.contradicted, ious, masks))
    return rows


def grid_iou(mask: np.ndarray, origin: tuple[int, int], gt: np.ndarray, gt_area: int) -> float:
    """:func:`iou` of ``mask`` (``bool[h, w]`` on the grid at ``origin``, empty elsewhere) with the full-image
    ``gt`` of area ``gt_area``, without building the full-image mask (COCO-sized images, thousands of boxes)."""
    xs, ys = origin
    inter = int(np.logical_and(mask, gt[ys:ys + mask.shape[0], xs:xs + mask.shape[1]]).sum())
    union = int(mask.sum()) + gt_area - inter
    return inter / union if union else 1.0


def box_iou(gt_in_box: np.ndarray, box_area: int, gt_area: int) -> float:
    """IoU of a mask filling the box (``box_area`` pixels) with a GT mask of ``gt_area`` pixels, ``gt_in_box`` of
    them inside the box."""
    inter = int(gt_in_box.sum())
    return inter / (box_area + gt_area - inter) if box_area + gt_area - inter else 1.0


def summarise_quality(rows: Sequence[InstanceQuality]) -> dict:
    """Means over instances: ``mIoU[constraint]``, ``box_fill_mIoU``, ``beats_box_fill[constraint]`` (share of
    instances whose mask has a higher IoU than the filled box), ``contradicted_share`` (answered points the
    model's own masks got wrong), ``quality_iou_spearman`` (rank correlation of ``apis_quality`` with the IoU
    under the first constraint, over predicted masks: does sorting by quality find the bad masks?)."""
    constraints = list(rows[0].iou) if rows else []
    points = sum(r.points for r in rows if r.source != "drawn")
    predicted = [r for r in rows if r.source != "drawn"]
    return {
        "instances": len(rows),
        "drawn": sum(1 for r in rows if r.source == "drawn"),
        "mIoU": {c: float(np.mean([r.iou[c] for r in rows])) for c in constraints},
        "box_fill_mIoU": float(np.mean([r.box_fill_iou for r in rows])) if rows else math.nan,
        "beats_box_fill": {c: float(np.mean([r.iou[c] > r.box_fill_iou for r in rows])) for c in constraints},
        "contradicted_share": sum(r.contradicted for r in predicted) / points if points else math.nan,
        "quality_iou_spearman": spearman([r.quality for r in predicted], [r.iou[constraints[0]] for r in predicted])
        if len(predicted) > 2 else math.nan,
    }


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (ties get their mean rank); NaN when either side is constant."""
    ranks_a, ranks_b = _ranks(np.asarray(a, dtype=float)), _ranks(np.asarray(b, dtype=float))
    if ranks_a.std() == 0 or ranks_b.std() == 0:
        return math.nan
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts
    return (first + (counts - 1) / 2)[inverse]
