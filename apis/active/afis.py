"""AFIS, active fully-supervised instance segmentation: the paper's baseline (docs/design.md, "AFIS").

The seconds APIS spends on points are spent on full masks instead. By the end of step s APIS has bought
``(s + 1) * Q`` points (Q training instances, one point each per step), ``(s + 1) * Q * oracle.point_cost_s``
seconds; AFIS buys masks at ``oracle.mask_cost_s`` each with the same cumulative seconds
(:func:`cumulative_budget_s`). Step 0 buys a random initial set (the budget of P0), every later step scores
what is not bought yet with M(s-1) and buys the best first (:func:`buy`); what a step cannot spend carries
over to the next. ``afis.level``:

* ``instance``: one mask at a time;
* ``image``: every instance of an image at once (its cost grows with its instance count).

``afis.scorer`` (higher is bought first):

* ``random``: a uniform random number;
* ``mean-entropy``: the mean over the GT box's candidate pixels of the entropy of the anchors' mean prediction
  (:func:`mean_box_entropy`); an image: the mean over its instances;
* ``min-det-loss``: minus the mean GIoU loss of the instance's anchor boxes against its GT box
  (:func:`detection_loss`), so the best-detected instances (images) are bought first, as in the paper.

The run buys with these: :mod:`apis.loop.bought_masks`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from torchvision.ops import generalized_box_iou_loss

from apis.active.strategies import binary_entropy
from apis.data.coco import CocoDataset
from apis.structures import PredictionSet

NO_PREDICTION_ENTROPY = math.log(2)
"""Mean entropy of an instance the model assigns nothing to: as unsure as a pixel can be."""
NO_PREDICTION_LOSS = 2.0
"""Detection loss of an instance the model assigns nothing to: the GIoU loss's largest value."""


def cumulative_budget_s(num_instances: int, point_cost_s: float, step: int) -> float:
    """Seconds APIS has spent on points by the end of ``step``: ``(step + 1) * num_instances * point_cost_s``."""
    return (step + 1) * num_instances * point_cost_s


def buy(ranked: Sequence[tuple[Hashable, int]], budget_s: float, mask_cost_s: float) -> list[Hashable]:
    """The items bought, best first, from ``ranked`` ``(item, masks it holds)`` within ``budget_s`` seconds.

    Items are taken in order while the next one's ``masks * mask_cost_s`` still fits; the first that does not
    fit ends the purchase (its seconds carry over to the next step, which may then afford it).
    """
    bought, spent = [], 0.0
    for item, masks in ranked:
        cost = masks * mask_cost_s
        if spent + cost > budget_s + 1e-9:  # 1e-9: seconds summed in floats
            break
        bought.append(item)
        spent += cost
    return bought


def mean_box_entropy(pred: PredictionSet) -> float:
    """Mean over the instance's candidate pixels of ``H(p̄)`` (nats), ``p̄`` the members' mean prediction."""
    if pred.k == 0:
        return NO_PREDICTION_ENTROPY
    return float(binary_entropy(pred.probs.to(torch.float64).mean(dim=0)).mean())


def detection_loss(pred: PredictionSet, gt_box: Sequence[float]) -> float:
    """Mean GIoU loss (in [0, 2]) of the members' boxes ``pred.boxes [K, 4]`` against ``gt_box`` (xyxy, the
    original image frame)."""
    if len(pred.boxes) == 0:
        return NO_PREDICTION_LOSS
    boxes = pred.boxes.to(torch.float64)
    gt = torch.tensor([list(gt_box)], dtype=torch.float64).expand_as(boxes)
    return float(generalized_box_iou_loss(boxes, gt, reduction="mean"))


def instance_score(scorer: str, pred: PredictionSet, gt_box: Sequence[float]) -> float:
    """How much an instance's mask is wanted by ``scorer`` ("mean-entropy" or "min-det-loss"); higher first."""
    if scorer == "mean-entropy":
        return mean_box_entropy(pred)
    if scorer == "min-det-loss":
        return -detection_loss(pred, gt_box)
    raise ValueError(f"AFIS scorer {scorer!r} does not score predictions")


def rank(scores: Mapping[Hashable, float], rng: np.random.Generator) -> list[Hashable]:
    """The keys of ``scores``, highest first; ties in a seeded random order (one permutation)."""
    keys = list(scores)
    shuffled = [keys[i] for i in rng.permutation(len(keys))]
    return sorted(shuffled, key=lambda key: -scores[key])  # sorted() is stable: ties keep the shuffle


def image_scores(dataset: CocoDataset, scores: Mapping[int, float]) -> dict[int, float]:
    """Per image whose instances all lack a mask: the mean of their scores (image-level AFIS buys whole
    images, so an image is either bought or untouched)."""
    return {image.image_id: float(np.mean([scores[inst.ann_id] for inst in image.instances]))
            for image in dataset.images
            if image.instances and all(inst.ann_id in scores for inst in image.instances)}
