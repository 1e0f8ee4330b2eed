"""Prediction sets of Mask R-CNN (``model.arch=mask_rcnn``): the *anchors* set's analogue.

CondInst's anchor set of a GT holds the masks of the locations training assigns to it. Mask R-CNN's holds
those of its positive proposals: the GT box itself and every RPN proposal whose best-overlapping GT it is
with IoU >= 0.5 (:meth:`apis.modeling.mask_rcnn.MaskRCNNPoints.gt_proposals`). Each member's mask, predicted
in its own box frame for the GT's class, is pasted onto the GT's candidate grid (zero outside the member's
box), so the metrics and strategies read it exactly as CondInst's (docs/design.md, "The method").
"""

from __future__ import annotations

import torch

from apis.modeling.inputs import check_batch
from apis.modeling.mask_rcnn import MaskRCNNPoints, box_grid_logits
from apis.modeling.postprocess import to_original_boxes
from apis.structures import PredictionSet


@torch.no_grad()
def proposal_prediction_sets(model: MaskRCNNPoints, images: torch.Tensor, image_sizes: list[tuple[int, int]],
                             targets: list[dict], original_sizes: list[tuple[int, int]],
                             scale_factors: list[tuple[float, float]]) -> list[dict[int, PredictionSet]]:
    """The proposal prediction sets of one batch: per image, ``ann_id -> PredictionSet`` (arguments as
    :func:`apis.active.prediction.anchor_prediction_sets`). Member boxes are the proposals (original frame),
    scores the box head's probability of the GT's class."""
    if model.training:
        raise RuntimeError("prediction sets are pure inference: call model.eval() first")
    check_batch(images, image_sizes, targets=targets, original_sizes=original_sizes, scale_factors=scale_factors)
    members = model.gt_proposals(images, image_sizes, [t["boxes"] for t in targets], [t["labels"] for t in targets])
    sets = []
    for target, found, original_size, scale in zip(targets, members, original_sizes, scale_factors):
        original_gt = to_original_boxes(target["boxes"].float(), scale, original_size).tolist()
        image_sets = {}
        for g, ann_id in enumerate(int(a) for a in target["ann_ids"]):
            rows = found.gt_index == g
            origin, logits = box_grid_logits(found.logits[rows], found.boxes[rows], original_gt[g], scale,
                                             original_size)
            image_sets[ann_id] = PredictionSet(
                ann_id=ann_id, origin=origin, probs=logits.sigmoid().cpu(),
                boxes=to_original_boxes(found.boxes[rows].float(), scale, original_size).cpu(),
                scores=found.scores[rows].float().cpu())
        sets.append(image_sets)
    return sets
