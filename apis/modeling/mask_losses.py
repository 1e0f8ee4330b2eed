"""Mask losses of the dynamic head: PointSup points, full-mask Dice and BoxInst's box-only terms.

Every loss takes mask logits ``[n, Hm, Wm]`` at ``stride`` (cell ``i`` covers image ``[stride*i,
stride*(i+1))``) for ``n`` instances and targets already matched to them, and returns ``{"loss_*": scalar}``.
Image coordinates are continuous: pixel ``(x, y)`` has centre ``(x + 0.5, y + 0.5)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from apis.modeling.dynamic_mask_head import sample_mask_logits

DICE_EPS = 1e-5


def loss_points(logits: Tensor, points: Tensor, labels: Tensor, stride: int, positive_weight: float = 1.0,
                negative_weight: float = 1.0, normalisation: str = "point") -> dict[str, Tensor]:
    """PointSup: BCE of the logits sampled bilinearly at labelled points, mean over points with label 0/1.

    Args:
        logits: ``[n, Hm, Wm]`` mask logits at ``stride``.
        points: ``[n, P, 2]`` (x, y) continuous image coordinates.
        labels: ``[n, P]`` in {1, 0, -1}; -1 is padding or an unsure answer (ignored).
        stride: the stride of ``logits``.
        positive_weight: weight of the points labelled 1.
        negative_weight: weight of the points labelled 0.
        normalisation: ``"point"``: the weighted mean over all labelled points; ``"instance"``: that mean
            times the labelled points per instance (of the instances with any), i.e. each instance's points
            summed and averaged over instances, so a point pulls as hard whether its instance has 1 or 10.

    Returns:
        ``{"loss_mask_points": scalar}``: the weighted mean (sum of weighted terms over sum of weights),
        scaled as ``normalisation`` says; 0 (keeping the graph) when no point is labelled 0 or 1.
    """
    valid = labels >= 0
    if not bool(valid.any()):
        return {"loss_mask_points": logits.sum() * 0.0}
    samples = sample_mask_logits(logits, points, stride)
    return {"loss_mask_points": weighted_point_bce(samples, labels, valid, positive_weight, negative_weight,
                                                   normalisation)}


def weighted_point_bce(samples: Tensor, labels: Tensor, valid: Tensor, positive_weight: float,
                       negative_weight: float, normalisation: str) -> Tensor:
    """The point BCE of any mask model: ``samples [N, P]`` logits at the points, ``labels [N, P]``, counted where
    ``valid [N, P]`` (at least one); the weighted mean over the counted points, times the points per counted
    instance with ``normalisation="instance"`` (each instance's points summed, instances averaged)."""
    targets = labels[valid].to(samples.dtype)
    weights = torch.where(targets > 0, positive_weight, negative_weight).to(samples.dtype)
    terms = F.binary_cross_entropy_with_logits(samples[valid], targets, reduction="none")
    loss = (weights * terms).sum() / weights.sum()
    if normalisation == "instance":
        loss = loss * valid.sum() / valid.any(dim=1).sum()
    return loss


@torch.no_grad()
def point_accuracy(logits: Tensor, points: Tensor, labels: Tensor, stride: int) -> tuple[int, int]:
    """How many labelled points the mask logits classify right.

    Args:
        logits: ``[n, Hm, Wm]`` mask logits at ``stride``.
        points: ``[n, P, 2]`` (x, y) continuous image coordinates.
        labels: ``[n, P]`` in {1, 0, -1}; -1 is not counted.
        stride: the stride of ``logits``.

    Returns:
        ``(correct, counted)``: points labelled 0/1 whose sampled logit has the label's sign, and their number.
    """
    valid = labels >= 0
    if not bool(valid.any()):
        return 0, 0
    predicted = sample_mask_logits(logits, points, stride)[valid] > 0
    return int((predicted == (labels[valid] > 0)).sum()), int(valid.sum())


def dice_loss(scores: Tensor, targets: Tensor) -> Tensor:
    """Per-instance ``1 - 2 sum(x t) / (sum x^2 + sum t^2 + eps)`` over all but the first dim -> ``[n]``."""
    scores, targets = scores.flatten(1), targets.flatten(1)
    intersection = (scores * targets).sum(dim=1)
    union = (scores * scores).sum(dim=1) + (targets * targets).sum(dim=1) + DICE_EPS
    return 1.0 - 2.0 * intersection / union


def loss_full(logits: Tensor, target_masks: Tensor) -> dict[str, Tensor]:
    """Fully supervised CondInst: Dice of ``sigmoid(logits)`` against masks ``[n, Hm, Wm]`` in [0, 1]."""
    return {"loss_mask_full": dice_loss(logits.sigmoid(), target_masks.to(logits.dtype)).mean()}


def loss_full_bce(logits: Tensor, target_masks: Tensor, inside: Tensor) -> dict[str, Tensor]:
    """Per-cell BCE of ``logits [n, Hm, Wm]`` against the GT coverage ``target_masks [n, Hm, Wm]`` in [0, 1], on the
    cells where ``inside [n, Hm, Wm]`` (bool: each instance's box) holds; the mean over those cells. Dice scores
    overlap, not probabilities: beside it, BCE makes a probability of 0.5 mean "half the cell is object"."""
    terms = F.binary_cross_entropy_with_logits(logits[inside], target_masks.to(logits.dtype)[inside])
    return {"loss_mask_full_bce": terms}


def masks_at_stride(masks: Tensor, stride: int) -> Tensor:
    """``[N, H, W]`` binary masks -> ``[N, H/stride, W/stride]`` fraction of each cell the mask covers."""
    return F.avg_pool2d(masks[:, None].float(), kernel_size=stride, stride=stride)[:, 0]


def box_masks_at_stride(boxes: Tensor, height: int, width: int, stride: int) -> Tensor:
    """The cells of a stride grid whose centre lies in each box.

    Along an axis where no cell centre falls inside the box, the cell holding the box centre is used, so a
    tiny box still marks one cell (the same rule as :func:`apis.data.coords.box_pixel_range`).

    Args:
        boxes: ``[N, 4]`` xyxy in continuous image coordinates.
        height: rows of the grid.
        width: columns of the grid.
        stride: cell size in pixels.

    Returns:
        ``[N, height, width]`` bool.
    """
    def axis_mask(low: Tensor, high: Tensor, size: int) -> Tensor:
        first = torch.ceil(low / stride - 0.5)
        last = torch.floor(high / stride - 0.5)  # inclusive
        centre_cell = torch.floor((low + high) / 2 / stride).clamp(0, size - 1)
        empty = last < first
        first = torch.where(empty, centre_cell, first)
        last = torch.where(empty, centre_cell, last)
        index = torch.arange(size, device=boxes.device, dtype=boxes.dtype)
        return (index >= first[:, None]) & (index <= last[:, None])

    rows = axis_mask(boxes[:, 1], boxes[:, 3], height)
    cols = axis_mask(boxes[:, 0], boxes[:, 2], width)
    return rows[:, :, None] & cols[:, None, :]


def loss_box_projection(logits: Tensor, box_masks: Tensor) -> dict[str, Tensor]:
    """BoxInst projection term: Dice of the mask's max-projections onto x and y against the box's."""
    scores, targets = logits.sigmoid(), box_masks.to(logits.dtype)
    loss_x = dice_loss(scores.amax(dim=1), targets.amax(dim=1))
    loss_y = dice_loss(scores.amax(dim=2), targets.amax(dim=2))
    return {"loss_mask_box_proj": (loss_x + loss_y).mean()}


def neighbours(x: Tensor, dilation: int) -> Tensor:
    """``[B, C, H, W]`` -> ``[B, C, 8, H, W]``: the 8 neighbours at distance ``dilation`` (zeros outside)."""
    batch, channels, height, width = x.shape
    unfolded = F.unfold(x, kernel_size=3, dilation=dilation, padding=dilation)
    unfolded = unfolded.reshape(batch, channels, 9, height, width)
    return torch.cat([unfolded[:, :, :4], unfolded[:, :, 5:]], dim=2)


NEIGHBOUR_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]  # order of neighbours()


def pairwise_disagreement(centre_logits: Tensor, neighbour_logits: Tensor) -> Tensor:
    """``-log P(cell and neighbour get the same label)`` for matching logits (any shape, broadcast).

    ``P = p_i p_j + (1 - p_i)(1 - p_j)``, evaluated in log space for stability.
    """
    same_fg = F.logsigmoid(centre_logits) + F.logsigmoid(neighbour_logits)
    same_bg = F.logsigmoid(-centre_logits) + F.logsigmoid(-neighbour_logits)
    return -torch.logaddexp(same_fg, same_bg)


def loss_box_pairwise(logits: Tensor, box_masks: Tensor, colour_similarity: Tensor, image_index: Tensor,
                      dilation: int, threshold: float) -> dict[str, Tensor]:
    """BoxInst pairwise term over cells inside the box whose neighbour has a similar colour.

    Only the cells inside the boxes are visited (gathered, not a dense ``[n, 8, H, W]`` map): on images
    with many small instances (nuclei) that is a few thousand cells instead of millions, the difference
    between the box terms costing more than the rest of the network and costing nothing.

    Args:
        logits: ``[n, H, W]`` mask logits.
        box_masks: ``[n, H, W]`` bool, the cells inside each instance's box.
        colour_similarity: ``[B, 8, H, W]`` in [0, 1], each cell's with its 8 neighbours in its image
            (0 for neighbours outside the image), as :func:`colour_similarity` returns.
        image_index: ``[n]`` the image of each instance.
        dilation: distance of the neighbours in cells.
        threshold: pairs less similar than this are left out.

    Returns:
        ``{"loss_mask_box_pairwise": scalar}``: mean disagreement over the pairs counted.
    """
    height, width = logits.shape[-2:]
    instance, row, col = box_masks.nonzero(as_tuple=True)  # [K] each
    offsets = torch.tensor(NEIGHBOUR_OFFSETS, device=logits.device) * dilation  # [8, 2]
    neighbour_row = row[:, None] + offsets[:, 0]  # [K, 8]
    neighbour_col = col[:, None] + offsets[:, 1]
    inside = (neighbour_row >= 0) & (neighbour_row < height) & (neighbour_col >= 0) & (neighbour_col < width)
    similarity = colour_similarity[image_index[instance], :, row, col]  # [K, 8]
    weights = ((similarity >= threshold) & inside).to(logits.dtype)
    neighbour = logits[instance[:, None], neighbour_row.clamp(0, height - 1), neighbour_col.clamp(0, width - 1)]
    disagreement = pairwise_disagreement(logits[instance, row, col][:, None], neighbour)
    loss = (disagreement * weights).sum() / weights.sum().clamp(min=1.0)
    return {"loss_mask_box_pairwise": loss}


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB ``[B, 3, H, W]`` in 0..255 -> CIE L*a*b* (D65), as ``skimage.color.rgb2lab``."""
    c = (rgb / 255.0).clamp(0, 1)
    linear = torch.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    to_xyz = rgb.new_tensor([[0.412453, 0.357580, 0.180423],
                             [0.212671, 0.715160, 0.072169],
                             [0.019334, 0.119193, 0.950227]])
    xyz = torch.einsum("ij,bjhw->bihw", to_xyz, linear)
    xyz = xyz / rgb.new_tensor([0.95047, 1.0, 1.08883])[None, :, None, None]
    delta = 6.0 / 29.0
    f = torch.where(xyz > delta ** 3, xyz.clamp(min=1e-12) ** (1.0 / 3.0), xyz / (3 * delta ** 2) + 4.0 / 29.0)
    return torch.stack([116.0 * f[:, 1] - 16.0, 500.0 * (f[:, 0] - f[:, 1]), 200.0 * (f[:, 1] - f[:, 2])], dim=1)


def lab_affinity(lab: Tensor, dilation: int) -> Tensor:
    """BoxInst's colour affinity ``exp(-||lab_i - lab_j|| / 2)`` of each cell of ``lab [B, 3, H, W]``
    (L*a*b*) with its 8 neighbours at ``dilation`` cells -> ``[B, 8, H, W]`` (neighbours outside the grid
    compare with zeros: callers mask them)."""
    return torch.exp(-torch.linalg.vector_norm(lab[:, :, None] - neighbours(lab, dilation), dim=1) * 0.5)


def colour_similarity(images: Tensor, image_sizes: list[tuple[int, int]], stride: int, dilation: int) -> Tensor:
    """BoxInst colour affinity ``exp(-||lab_i - lab_j|| / 2)`` of each stride cell with its 8 neighbours.

    Args:
        images: ``[B, 3, Hp, Wp]`` RGB in 0..255, padded.
        image_sizes: ``(h, w)`` of each image's valid area.
        stride: cell size in pixels (the images are average-pooled to it).
        dilation: distance of the neighbours in cells.

    Returns:
        ``[B, 8, Hp/stride, Wp/stride]``; pairs with a neighbour outside the valid area get 0.
    """
    pooled = F.avg_pool2d(images.float(), kernel_size=stride, stride=stride)
    similarity = lab_affinity(rgb_to_lab(pooled), dilation)
    batch, _, height, width = pooled.shape
    centres_y = torch.arange(height, device=images.device) * stride + stride / 2
    centres_x = torch.arange(width, device=images.device) * stride + stride / 2
    valid = torch.stack([(centres_y[:, None] < h) & (centres_x[None, :] < w) for h, w in image_sizes])
    return similarity * neighbours(valid[:, None].float(), dilation)[:, 0]


def pairwise_warmup(iteration: int, warmup_iters: int) -> float:
    """BoxInst ramps the pairwise term linearly from 0 to 1 over the first ``warmup_iters`` iterations."""
    return 1.0 if warmup_iters <= 0 else min(max(iteration, 0) / warmup_iters, 1.0)

