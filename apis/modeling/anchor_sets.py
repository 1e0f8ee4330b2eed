"""CondInst's prediction sets (``selection.sets`` "anchors"; docs/design.md, "The method"): the members of a GT
are the locations that training-time assignment gives it, each with its mask over the GT box's candidate pixels.
:meth:`apis.modeling.condinst.CondInst.prediction_sets` is the entry point; Mask R-CNN's analogue is
:meth:`apis.modeling.mask_rcnn.MaskRCNNPoints.prediction_sets`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from apis.modeling.inputs import check_batch
from apis.modeling.postprocess import sample_box_grid, to_original_boxes
from apis.structures import PredictionSet

MEMBERS_PER_CHUNK = 128  # mask maps held at once (bounds memory on crowded images)


@torch.no_grad()
def anchor_prediction_sets(model: nn.Module, images: torch.Tensor, image_sizes: list[tuple[int, int]],
                           targets: list[dict], original_sizes: list[tuple[int, int]],
                           scale_factors: list[tuple[float, float]]) -> list[dict[int, PredictionSet]]:
    """The anchor prediction sets of one batch: per image, ``ann_id -> PredictionSet``.

    The members of a GT are the locations that training-time assignment gives it (all of them, no
    proposal cap). Each member's mask probability is sampled at the pixel centres of the GT's candidate
    grid (``box_pixel_range`` in ORIGINAL coordinates, ``boxes / scale_factors``); member boxes (original
    frame) and scores ``sqrt(sigmoid(cls of the GT's class) * sigmoid(ctr))`` come along.

    Args:
        model: a :class:`~apis.modeling.condinst.CondInst` in eval mode (no gradient is recorded).
        images: ``[B, 3, Hp, Wp]`` as for :meth:`CondInst.predict`; ``image_sizes`` their valid ``(h, w)``.
        targets: per image ``boxes [N, 4]`` (resized frame), ``labels [N]`` and ``ann_ids [N]``.
        original_sizes: ``(H, W)`` of each stored image.
        scale_factors: ``(sx, sy) = resized / original`` of each image.
    """
    if model.training:
        raise RuntimeError("prediction sets are pure inference: call model.eval() first")
    check_batch(images, image_sizes, targets=targets, original_sizes=original_sizes, scale_factors=scale_factors)
    for index, target in enumerate(targets):
        missing = {"boxes", "labels", "ann_ids"} - set(target)
        if missing:
            raise ValueError(f"prediction sets: target of image {index} lacks {sorted(missing)}")
    outputs = model(images)
    gt_index, _ = model.assign(outputs, [target["boxes"] for target in targets])
    return [_image_anchor_sets(model, outputs, image, targets[image], gt_index[image], original_sizes[image],
                               scale_factors[image])
            for image in range(images.shape[0])]


def _image_anchor_sets(model: nn.Module, outputs: Any, image: int, target: dict, gt_index: torch.Tensor,
                       original_size: tuple[int, int], scale: tuple[float, float]) -> dict[int, PredictionSet]:
    head = outputs.head
    members = torch.nonzero(gt_index >= 0).squeeze(1)
    members = members[torch.argsort(gt_index[members], stable=True)]  # grouped by GT
    counts = torch.bincount(gt_index[members], minlength=len(target["boxes"])).tolist()
    starts = [0]
    for count in counts:
        starts.append(starts[-1] + count)
    original_boxes = to_original_boxes(target["boxes"].float(), scale, original_size).tolist()
    labels = target["labels"].tolist()
    ann_ids = [int(a) for a in target["ann_ids"]]

    sets = {}
    first = 0
    while first < len(counts):
        last = first + 1  # GTs [first, last) share one pass of the dynamic head
        while last < len(counts) and starts[last + 1] - starts[first] <= MEMBERS_PER_CHUNK:
            last += 1
        chunk = members[starts[first]:starts[last]]
        logits = model.mask_logits(outputs, torch.full_like(chunk, image), chunk)
        boxes = to_original_boxes(model.decode_boxes(outputs, image, chunk), scale, original_size)
        for g in range(first, last):
            rows = slice(starts[g] - starts[first], starts[g + 1] - starts[first])
            locations = chunk[rows]
            origin, member_logits = sample_box_grid(logits[rows], model.mask_stride, original_boxes[g], scale,
                                                    original_size)
            scores = (head.class_logits[image, locations, labels[g]].float().sigmoid()
                      * head.centreness_logits[image, locations].float().sigmoid()).sqrt()
            sets[ann_ids[g]] = PredictionSet(ann_id=ann_ids[g], origin=origin, probs=member_logits.sigmoid().cpu(),
                                             boxes=boxes[rows].cpu(), scores=scores.cpu())
        first = last
    return sets
