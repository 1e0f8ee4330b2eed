"""FCOS: the detection head of CondInst, its target assignment and its losses (Tian et al., ICCV 2019).

Conventions: a location is the centre of a feature-map cell; cell ``(i, j)`` of a level with stride
``s`` covers image pixels ``[s*j, s*j + s) x [s*i, s*i + s)``, so its location is
``(s*j + s/2, s*i + s/2)`` in continuous image coordinates (pixel ``(x, y)`` has centre ``(x+.5, y+.5)``).
Box regression is ``(left, top, right, bottom)`` distances from the location, divided by the stride.
Locations of all levels are concatenated level by level, each in row-major order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

PRIOR_PROBABILITY = 0.01  # initial foreground probability of the classifier (RetinaNet/FCOS)


class Scale(nn.Module):
    """A learnable scalar multiplying the box regression of one pyramid level."""

    def __init__(self, value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(value))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


@dataclass
class HeadOutputs:
    """Per-level head outputs, flattened over locations: ``[B, L, ...]`` with L = all levels' cells."""

    class_logits: Tensor  # [B, L, C]
    box_regression: Tensor  # [B, L, 4] ltrb / stride, >= 0
    centreness_logits: Tensor  # [B, L]
    controller: Tensor  # [B, L, num_params] dynamic mask head parameters


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups; small heads get the most groups (a divisor of ``channels``) that still hold
    two channels each, so that a 1x1 map (P7 of a small image) still has two values per group."""
    groups = max(g for g in range(1, 33) if channels % g == 0 and (channels // g >= 2 or g == 1))
    return nn.GroupNorm(groups, channels)


def _tower(channels: int, num_convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), group_norm(channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class FCOSHead(nn.Module):
    """Classification and box towers shared over levels; the controller reads the box tower (CondInst)."""

    def __init__(self, channels: int, num_classes: int, num_convs: int, num_levels: int, controller_params: int):
        super().__init__()
        self.num_classes = num_classes
        self.class_tower = _tower(channels, num_convs)
        self.box_tower = _tower(channels, num_convs)
        self.class_logits = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.box_regression = nn.Conv2d(channels, 4, 3, padding=1)
        self.centreness = nn.Conv2d(channels, 1, 3, padding=1)
        self.controller = nn.Conv2d(channels, controller_params, 3, padding=1)
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        nn.init.constant_(self.class_logits.bias, -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY))

    def forward(self, features: list[Tensor]) -> HeadOutputs:
        outputs: dict[str, list[Tensor]] = {"cls": [], "box": [], "ctr": [], "ctl": []}
        for level, feature in enumerate(features):
            class_features = self.class_tower(feature)
            box_features = self.box_tower(feature)
            outputs["cls"].append(self.class_logits(class_features))
            # ReLU instead of exp, as in the improved FCOS that CondInst uses.
            outputs["box"].append(F.relu(self.scales[level](self.box_regression(box_features))))
            outputs["ctr"].append(self.centreness(box_features))
            outputs["ctl"].append(self.controller(box_features))
        return HeadOutputs(flatten_levels(outputs["cls"]), flatten_levels(outputs["box"]),
                           flatten_levels(outputs["ctr"])[..., 0], flatten_levels(outputs["ctl"]))


def flatten_levels(per_level: list[Tensor]) -> Tensor:
    """``[B, K, h_l, w_l]`` per level -> ``[B, sum_l h_l*w_l, K]`` (level by level, row-major)."""
    return torch.cat([x.flatten(2).transpose(1, 2) for x in per_level], dim=1)


def level_locations(sizes: list[tuple[int, int]], strides: tuple[int, ...], device: torch.device
                    ) -> tuple[Tensor, Tensor]:
    """Cell centres of every level: ``locations [L, 2]`` (x, y) float and ``levels [L]`` int64."""
    locations, levels = [], []
    for level, ((height, width), stride) in enumerate(zip(sizes, strides)):
        ys = torch.arange(height, device=device, dtype=torch.float32) * stride + stride / 2
        xs = torch.arange(width, device=device, dtype=torch.float32) * stride + stride / 2
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        locations.append(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1))
        levels.append(torch.full((height * width,), level, device=device, dtype=torch.int64))
    return torch.cat(locations), torch.cat(levels)


def assign_locations(locations: Tensor, levels: Tensor, boxes: Tensor, strides: tuple[int, ...],
                     size_ranges: list[float], radius: float) -> tuple[Tensor, Tensor]:
    """FCOS target assignment of one image.

    A location is a positive of box ``g`` when it lies strictly inside the centre region of ``g``
    (box centre +- ``radius * stride``, clipped to the box) and the largest of its distances to the
    box sides lies in ``[size_ranges[level], size_ranges[level + 1]]``. A location that qualifies for
    several boxes goes to the one of smallest area.

    Args:
        locations: ``[L, 2]`` (x, y) continuous image coordinates.
        levels: ``[L]`` level index of each location.
        boxes: ``[N, 4]`` xyxy in the same frame (N may be 0).
        strides: the stride of each level.
        size_ranges: ``len(strides) + 1`` edges of the object sizes per level.
        radius: centre sampling radius, in strides.

    Returns:
        ``gt_index [L]`` int64 (index into ``boxes``; -1 = negative) and ``ltrb [L, 4]`` distances in
        pixels from each location to the sides of its assigned box (zeros at negatives).
    """
    num_locations = locations.shape[0]
    if boxes.shape[0] == 0:
        return (torch.full((num_locations,), -1, dtype=torch.int64, device=locations.device),
                locations.new_zeros(num_locations, 4))
    if len(size_ranges) != len(strides) + 1:
        raise ValueError(f"model.size_ranges needs {len(strides) + 1} edges for {len(strides)} levels, "
                         f"got {size_ranges}")
    xs, ys = locations[:, 0:1], locations[:, 1:2]  # [L, 1]
    x0, y0, x1, y1 = boxes.unbind(dim=1)  # [N] each
    max_distance = torch.maximum(torch.maximum(xs - x0, ys - y0), torch.maximum(x1 - xs, y1 - ys))  # [L, N]
    edges = locations.new_tensor(size_ranges)
    in_size_range = (max_distance >= edges[levels, None]) & (max_distance <= edges[levels + 1, None])

    reach = (locations.new_tensor(strides)[levels] * radius)[:, None]  # [L, 1]
    centre_x, centre_y = (x0 + x1) / 2, (y0 + y1) / 2
    in_centre = ((xs > torch.maximum(centre_x - reach, x0)) & (xs < torch.minimum(centre_x + reach, x1))
                 & (ys > torch.maximum(centre_y - reach, y0)) & (ys < torch.minimum(centre_y + reach, y1)))

    area = (x1 - x0) * (y1 - y0)
    cost = torch.where(in_centre & in_size_range, area[None, :], torch.full_like(max_distance, math.inf))
    smallest_area, gt_index = cost.min(dim=1)
    gt_index = torch.where(torch.isfinite(smallest_area), gt_index, torch.full_like(gt_index, -1))

    assigned = boxes[gt_index.clamp(min=0)]
    ltrb = torch.stack([locations[:, 0] - assigned[:, 0], locations[:, 1] - assigned[:, 1],
                        assigned[:, 2] - locations[:, 0], assigned[:, 3] - locations[:, 1]], dim=1)
    return gt_index, ltrb * (gt_index >= 0)[:, None]


def centreness_targets(ltrb: Tensor) -> Tensor:
    """``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` for ``ltrb [n, 4]`` (all > 0)."""
    left_right, top_bottom = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
    ratio = (left_right.min(dim=1).values / left_right.max(dim=1).values
             * top_bottom.min(dim=1).values / top_bottom.max(dim=1).values)
    return ratio.sqrt()


def ltrb_to_boxes(locations: Tensor, ltrb: Tensor) -> Tensor:
    """Boxes ``[n, 4]`` xyxy from locations ``[n, 2]`` and side distances ``[n, 4]`` (same units)."""
    return torch.cat([locations - ltrb[:, :2], locations + ltrb[:, 2:]], dim=1)


def fcos_losses(class_logits: Tensor, box_regression: Tensor, centreness_logits: Tensor, class_targets: Tensor,
                box_targets: Tensor, focal_alpha: float, focal_gamma: float) -> dict[str, Tensor]:
    """The three FCOS losses over all locations of a batch.

    Args:
        class_logits: ``[n, C]``.
        box_regression: ``[n, 4]`` ltrb (stride-normalised).
        centreness_logits: ``[n]``.
        class_targets: ``[n]`` int64 class of each location, -1 = background.
        box_targets: ``[n, 4]`` ltrb in the units of ``box_regression``.
        focal_alpha: focal loss alpha.
        focal_gamma: focal loss gamma.

    Returns:
        ``loss_fcos_cls`` (focal, summed / #positives), ``loss_fcos_box`` (GIoU weighted by the centreness
        targets, normalised by their sum) and ``loss_fcos_ctr`` (BCE, mean over positives).
    """
    positive = class_targets >= 0
    num_positives = max(int(positive.sum()), 1)
    one_hot = torch.zeros_like(class_logits)
    one_hot[positive, class_targets[positive]] = 1.0
    loss_cls = sigmoid_focal_loss(class_logits, one_hot, alpha=focal_alpha, gamma=focal_gamma,
                                  reduction="sum") / num_positives

    targets = box_targets[positive]
    centreness = centreness_targets(targets)
    # Boxes relative to their location: GIoU does not depend on where the location is.
    origin = targets.new_zeros(targets.shape[0], 2)
    giou = generalized_box_iou_loss(ltrb_to_boxes(origin, box_regression[positive]),
                                    ltrb_to_boxes(origin, targets), reduction="none")
    loss_box = (giou * centreness).sum() / centreness.sum().clamp(min=1e-6)
    loss_ctr = F.binary_cross_entropy_with_logits(centreness_logits[positive], centreness,
                                                  reduction="sum") / num_positives
    return {"loss_fcos_cls": loss_cls, "loss_fcos_box": loss_box, "loss_fcos_ctr": loss_ctr}
