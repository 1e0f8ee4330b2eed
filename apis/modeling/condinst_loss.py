"""The training losses of CondInst and their weights: FCOS detection losses plus the enabled mask losses.

:class:`CondInstLoss` is given the network's outputs, the FCOS assignment and the mask logits of the
sampled proposals by :meth:`apis.modeling.condinst.CondInst.losses_and_stats`; it holds no parameters.
The losses themselves are the small functions of :mod:`apis.modeling.fcos` and
:mod:`apis.modeling.mask_losses`. Coordinates are continuous in the resized frame (docs/design.md,
"Coordinates").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from apis.modeling.fcos import HeadOutputs, fcos_losses
from apis.modeling.mask_losses import (
    box_masks_at_stride,
    colour_similarity,
    loss_box_pairwise,
    loss_box_projection,
    loss_full,
    loss_full_bce,
    loss_points,
    masks_at_stride,
    pairwise_warmup,
    point_accuracy,
)

MASKS_PER_CHUNK = 16  # full loss: GT masks converted to float at once


class CondInstLoss:
    """Weights of CondInst's losses; a mask loss with weight 0 is off. The keywords are the fields of
    :class:`apis.config.LossConfig`, which :meth:`apis.modeling.condinst.CondInst.from_config` passes whole.

    Args:
        focal_alpha: FCOS classification focal loss alpha.
        focal_gamma: FCOS classification focal loss gamma.
        points: weight of the point loss (PointSup: BCE at the labelled points).
        full: weight of the Dice loss against GT masks (fully supervised).
        full_bce: with ``full``, weight of a per-cell BCE against the GT coverage inside each box.
        box: weight of the BoxInst losses (projection + pairwise).
        pairwise_weight: weight of BoxInst's pairwise term relative to its projection term.
        pairwise_dilation: neighbour distance of the pairwise term, in mask-logit cells.
        pairwise_colour_threshold: colour similarity above which neighbours are pulled together.
        pairwise_warmup_iters: iterations over which the pairwise term ramps up from 0.
        points_per_iter: per iteration, keep a random subset of this many labelled points per instance
            (-1: all of them).
        point_positive_weight: weight of the points labelled 1 in the point loss.
        point_negative_weight: weight of the points labelled 0 in the point loss.
        point_normalisation: "point" (mean over the labelled points) or "instance" (each instance's
            points summed, mean over the instances that have any).
    """

    def __init__(self, *, focal_alpha: float = 0.25, focal_gamma: float = 2.0, points: float = 1.0,
                 full: float = 0.0, full_bce: float = 0.0, box: float = 0.0, pairwise_weight: float = 1.0,
                 pairwise_dilation: int = 2,
                 pairwise_colour_threshold: float = 0.3, pairwise_warmup_iters: int = 10000,
                 points_per_iter: int = -1, point_positive_weight: float = 1.0, point_negative_weight: float = 1.0,
                 point_normalisation: str = "point"):
        if min(points, full, box, full_bce) < 0:
            raise ValueError(f"loss weights must be >= 0, got points={points}, full={full}, box={box}, "
                             f"full_bce={full_bce}")
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.points = points
        self.full = full
        self.full_bce = full_bce
        self.box = box
        self.pairwise_weight = pairwise_weight
        self.pairwise_dilation = pairwise_dilation
        self.pairwise_colour_threshold = pairwise_colour_threshold
        self.pairwise_warmup_iters = pairwise_warmup_iters
        self.points_per_iter = points_per_iter
        self.point_positive_weight = point_positive_weight
        self.point_negative_weight = point_negative_weight
        if point_normalisation not in ("point", "instance"):
            raise ValueError(f"point_normalisation must be 'point' or 'instance', got {point_normalisation!r}")
        self.point_normalisation = point_normalisation

    @property
    def uses_masks(self) -> bool:
        """Whether any mask loss is on (otherwise the mask head is not run in training)."""
        return self.points > 0 or self.full > 0 or self.box > 0

    def detection_losses(self, head: HeadOutputs, labels: list[Tensor], gt_index: Tensor, ltrb: Tensor,
                         location_strides: Tensor) -> dict[str, Tensor]:
        """``loss_fcos_cls``, ``loss_fcos_box``, ``loss_fcos_ctr``.

        Args:
            head: the FCOS head's outputs ``[B, L, ...]``.
            labels: per image, the class ``[N]`` of each GT.
            gt_index: ``[B, L]`` the GT each location is assigned to (-1: negative).
            ltrb: ``[B, L, 4]`` regression targets in pixels.
            location_strides: ``[L]`` stride of each location's level.
        """
        batch, num_locations = gt_index.shape
        class_targets = torch.full_like(gt_index, -1)
        for image, image_labels in enumerate(labels):
            positive = gt_index[image] >= 0
            class_targets[image, positive] = image_labels.to(gt_index.device)[gt_index[image, positive]]
        return fcos_losses(head.class_logits.reshape(batch * num_locations, -1).float(),
                           head.box_regression.reshape(-1, 4).float(),
                           head.centreness_logits.reshape(-1).float(),
                           class_targets.reshape(-1),
                           (ltrb / location_strides[None, :, None]).reshape(-1, 4),
                           self.focal_alpha, self.focal_gamma)

    def zero_mask_losses(self, zero: Tensor) -> dict[str, Tensor]:
        """Every enabled mask loss as ``zero`` (a batch without proposals; ``zero`` keeps the mask branch and
        the controller in the graph)."""
        names = (["loss_mask_points"] if self.points > 0 else []) + (["loss_mask_full"] if self.full > 0 else [])
        names += ["loss_mask_full_bce"] if self.full > 0 and self.full_bce > 0 else []
        names += ["loss_mask_box_proj", "loss_mask_box_pairwise"] if self.box > 0 else []
        return {name: zero for name in names}

    def mask_losses(self, logits: Tensor, stride: int, targets: list[dict], image_index: Tensor, local_gt: Tensor,
                    images: Tensor, image_sizes: list[tuple[int, int]], iteration: int
                    ) -> tuple[dict[str, Tensor], dict[str, float]]:
        """The enabled mask losses of ``n >= 1`` proposals, and the point accuracy.

        Args:
            logits: ``[n, Hp/stride, Wp/stride]`` float mask logits of the proposals.
            stride: the logits' stride in the padded resized frame.
            targets: the batch's training targets (see :mod:`apis.modeling.condinst`).
            image_index: ``[n]`` the image of each proposal.
            local_gt: ``[n]`` the GT of each proposal, indexed within its image.
            images: ``[B, 3, Hp, Wp]`` the batch (colours of the pairwise term).
            image_sizes: valid ``(h, w)`` of each image.
            iteration: the training iteration (pairwise warm-up).

        Returns:
            The weighted losses (``loss_mask_points``, ``loss_mask_full``, ``loss_mask_box_proj`` +
            ``loss_mask_box_pairwise``, those enabled) and ``{"point_acc": share}`` when labelled points were seen.
        """
        offsets = torch.tensor([0] + [len(t["boxes"]) for t in targets], device=local_gt.device).cumsum(0)
        gt = offsets[image_index] + local_gt  # index into the batch's concatenated GTs
        losses: dict[str, Tensor] = {}
        stats: dict[str, float] = {}
        points, point_labels = gather_training_points(targets, self.points_per_iter, logits.device)
        if points is not None:
            correct, counted = point_accuracy(logits, points[gt], point_labels[gt], stride)
            if counted:
                stats["point_acc"] = correct / counted
        if self.points > 0:
            if points is None:
                losses["loss_mask_points"] = logits.sum() * 0.0
            else:
                losses["loss_mask_points"] = self.points * loss_points(
                    logits, points[gt], point_labels[gt], stride, self.point_positive_weight,
                    self.point_negative_weight, self.point_normalisation)["loss_mask_points"]
        if self.full > 0:
            # Instances whose mask is not known (AFIS: not bought) train the detector only.
            known = torch.cat([t.get("mask_known", torch.ones(len(t["boxes"]), dtype=torch.bool))
                               for t in targets]).to(logits.device)[gt]
            if known.any():
                masks = _stride_masks(targets, gt[known], offsets, stride, logits.device)
                losses["loss_mask_full"] = self.full * loss_full(logits[known], masks)["loss_mask_full"]
                if self.full_bce > 0:
                    height, width = logits.shape[-2:]
                    boxes = torch.cat([t["boxes"] for t in targets]).to(logits)[gt[known]]
                    inside = box_masks_at_stride(boxes, height, width, stride)
                    losses["loss_mask_full_bce"] = self.full_bce * loss_full_bce(logits[known], masks,
                                                                                 inside)["loss_mask_full_bce"]
            else:
                losses["loss_mask_full"] = logits.sum() * 0.0
                if self.full_bce > 0:
                    losses["loss_mask_full_bce"] = logits.sum() * 0.0
        if self.box > 0:
            height, width = logits.shape[-2:]
            boxes = torch.cat([t["boxes"] for t in targets]).to(logits)
            box_masks = box_masks_at_stride(boxes[gt], height, width, stride)
            similarity = colour_similarity(images, image_sizes, stride, self.pairwise_dilation)
            pairwise = loss_box_pairwise(logits, box_masks, similarity, image_index, self.pairwise_dilation,
                                         self.pairwise_colour_threshold)["loss_mask_box_pairwise"]
            warmup = pairwise_warmup(iteration, self.pairwise_warmup_iters)
            losses["loss_mask_box_proj"] = self.box * loss_box_projection(logits, box_masks)["loss_mask_box_proj"]
            losses["loss_mask_box_pairwise"] = self.box * self.pairwise_weight * warmup * pairwise
        return losses, stats


def _stride_masks(targets: list[dict], gt: Tensor, offsets: Tensor, stride: int, device: torch.device) -> Tensor:
    """Coverage of each stride cell by the GT mask of every proposal: ``[n, Hp/stride, Wp/stride]``."""
    used, inverse = torch.unique(gt, return_inverse=True)
    per_gt = []
    for image, target in enumerate(targets):
        local = (used[(used >= offsets[image]) & (used < offsets[image + 1])] - offsets[image]).tolist()
        for start in range(0, len(local), MASKS_PER_CHUNK):
            chunk = target["masks"][local[start:start + MASKS_PER_CHUNK]].to(device)
            per_gt.append(masks_at_stride(chunk, stride))
    return torch.cat(per_gt)[inverse]


def gather_training_points(targets: list[dict], points_per_iter: int, device: torch.device
                           ) -> tuple[Tensor | None, Tensor | None]:
    """The batch's GT points ``[G, P, 2]`` and labels ``[G, P]`` (GTs of all images in order, padded with
    label -1), or ``(None, None)`` when no image has points.

    With ``points_per_iter = k > 0`` each instance keeps a random subset of k of its labelled points
    (point augmentation); the others are set to -1.
    """
    widest = max((t["points"].shape[1] for t in targets if "points" in t), default=0)
    if widest == 0:
        return None, None
    points, labels = [], []
    for target in targets:
        count = len(target["boxes"])
        image_points = target.get("points", torch.zeros(count, 0, 2)).to(device, torch.float32)
        image_labels = target.get("point_labels", torch.zeros(count, 0)).to(device, torch.float32)
        pad = widest - image_points.shape[1]
        points.append(F.pad(image_points, (0, 0, 0, pad)))
        labels.append(F.pad(image_labels, (0, pad), value=-1.0))
    points_all, labels_all = torch.cat(points), torch.cat(labels)
    if points_per_iter > 0:
        valid = labels_all >= 0
        keys = torch.where(valid, torch.rand(labels_all.shape, device=device), 2.0)  # invalid ones sort last
        rank = keys.argsort(dim=1).argsort(dim=1)
        labels_all = torch.where(valid & (rank < points_per_iter), labels_all, -1.0)
    return points_all, labels_all
