"""CondInst inference: detections from the FCOS outputs and masks sampled at original image resolution.

Frames: the *resized* frame is the network input (before bottom/right padding); the *original* frame is
the image as stored. ``scale = (sx, sy) = resized / original``. Coordinates are continuous (pixel
``(x, y)`` has centre ``(x + 0.5, y + 0.5)``); boxes are xyxy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from apis.data.coords import PIXEL_CENTRE, box_pixel_range
from apis.modeling.dynamic_mask_head import sample_mask_logits
from apis.modeling.fcos import ltrb_to_boxes
from apis.modeling.refinement import ColourCRF


@dataclass
class Detections:
    """Instances predicted in one image, sorted by decreasing score, in ORIGINAL image coordinates."""

    boxes: Tensor  # [M, 4] float xyxy
    scores: Tensor  # [M] float in [0, 1]
    labels: Tensor  # [M] int64 contiguous class index
    masks: Tensor  # [M, H, W] bool at original resolution


@dataclass
class Candidates:
    """Detections of one image before masks: indices of the FCOS locations that produced them."""

    locations: Tensor  # [M] int64 index into the flattened locations
    labels: Tensor  # [M] int64
    scores: Tensor  # [M] sqrt(cls * ctr)
    boxes: Tensor  # [M, 4] xyxy in the resized frame, clipped to it


def select_detections(class_logits: Tensor, centreness_logits: Tensor, box_regression: Tensor, locations: Tensor,
                      levels: Tensor, strides: tuple[int, ...], image_size: tuple[int, int],
                      score_threshold: float, pre_nms_top_k: int, nms_threshold: float,
                      max_detections: int) -> Candidates:
    """FCOS inference of one image, as AdelaiDet's CondInst (THRESH_WITH_CTR).

    Candidates are (location, class) pairs with ``sigmoid(cls) * sigmoid(ctr) > score_threshold``, the
    ``pre_nms_top_k`` best per level; score ``sqrt(cls * ctr)``; class-aware NMS; best ``max_detections``.

    Args:
        class_logits: ``[L, C]``.
        centreness_logits: ``[L]``.
        box_regression: ``[L, 4]`` ltrb / stride.
        locations: ``[L, 2]`` (x, y) in the resized frame.
        levels: ``[L]`` level of each location.
        strides: the stride of each level.
        image_size: ``(h, w)`` of the valid resized area (boxes are clipped to it).
        score_threshold: minimum ``sigmoid(cls) * sigmoid(ctr)``.
        pre_nms_top_k: candidates kept per level before NMS.
        nms_threshold: IoU threshold of the class-aware NMS.
        max_detections: detections kept.
    """
    num_classes = class_logits.shape[1]
    probabilities = class_logits.sigmoid() * centreness_logits.sigmoid()[:, None]
    kept_locations, kept_labels, kept_probabilities = [], [], []
    for level in range(len(strides)):
        level_index = torch.nonzero(levels == level).squeeze(1)
        level_probabilities = probabilities[level_index].flatten()
        candidates = torch.nonzero(level_probabilities > score_threshold).squeeze(1)
        if candidates.numel() > pre_nms_top_k:
            candidates = candidates[level_probabilities[candidates].topk(pre_nms_top_k).indices]
        kept_locations.append(level_index[candidates // num_classes])
        kept_labels.append(candidates % num_classes)
        kept_probabilities.append(level_probabilities[candidates])
    location_index = torch.cat(kept_locations)
    labels = torch.cat(kept_labels)
    scores = torch.cat(kept_probabilities).sqrt()

    stride = locations.new_tensor(strides)[levels[location_index]][:, None]
    boxes = ltrb_to_boxes(locations[location_index], box_regression[location_index] * stride)
    height, width = image_size
    boxes = torch.stack([boxes[:, 0].clamp(0, width), boxes[:, 1].clamp(0, height),
                         boxes[:, 2].clamp(0, width), boxes[:, 3].clamp(0, height)], dim=1)
    non_empty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    keep = torch.nonzero(non_empty).squeeze(1)
    keep = keep[batched_nms(boxes[keep], scores[keep], labels[keep], nms_threshold)][:max_detections]
    return Candidates(location_index[keep], labels[keep], scores[keep], boxes[keep])


def to_original_boxes(boxes: Tensor, scale: tuple[float, float], original_size: tuple[int, int]) -> Tensor:
    """Boxes ``[M, 4]`` in the resized frame -> original frame, clipped to ``original_size (H, W)``."""
    sx, sy = scale
    height, width = original_size
    x0, y0, x1, y1 = boxes.unbind(dim=1)
    return torch.stack([(x0 / sx).clamp(0, width), (y0 / sy).clamp(0, height),
                        (x1 / sx).clamp(0, width), (y1 / sy).clamp(0, height)], dim=1)


def sample_box_grid(logits: Tensor, stride: int, box: tuple[float, float, float, float],
                    scale: tuple[float, float], original_size: tuple[int, int]
                    ) -> tuple[tuple[int, int], Tensor]:
    """Logits of ``K`` mask maps at the pixel centres of one box's candidate grid, in the original frame.

    The grid is :func:`apis.data.coords.box_pixel_range` of ``box`` (original frame). Pixel ``(x, y)``
    has centre ``(x + .5, y + .5)``, i.e. ``((x + .5) sx, (y + .5) sy)`` in the resized frame, where
    the stride-``stride`` logits ``[K, Hm, Wm]`` are sampled bilinearly (only over the box).

    Returns:
        ``origin (xs, ys)`` and logits ``[K, h, w]``, entry ``[k, i, j]`` at pixel ``(xs + j, ys + i)``.
    """
    height, width = original_size
    xs, ys, xe, ye = box_pixel_range(*box, width, height)
    sx, sy = scale
    grid_x = (torch.arange(xs, xe, device=logits.device, dtype=torch.float32) + PIXEL_CENTRE) * sx
    grid_y = (torch.arange(ys, ye, device=logits.device, dtype=torch.float32) + PIXEL_CENTRE) * sy
    centres_y, centres_x = torch.meshgrid(grid_y, grid_x, indexing="ij")
    points = torch.stack([centres_x.reshape(-1), centres_y.reshape(-1)], dim=1)
    num_maps = logits.shape[0]
    if num_maps == 0:
        return (xs, ys), logits.new_zeros(0, ye - ys, xe - xs)
    samples = sample_mask_logits(logits, points[None].expand(num_maps, -1, -1), stride)
    return (xs, ys), samples.reshape(num_maps, ye - ys, xe - xs)


def paste_masks(logits: Tensor, stride: int, boxes: Tensor, scale: tuple[float, float],
                original_size: tuple[int, int], threshold: float, image: Tensor | None = None,
                refinement: ColourCRF | None = None) -> Tensor:
    """Binary masks ``[M, H, W]`` at original resolution, zero outside each detection's box.

    Inside its box, a pixel is on when ``sigmoid(logit) > threshold``, the logits refined first by ``refinement``
    (when given) with the colours of ``image`` at the same pixel centres.

    Args:
        logits: ``[M, Hm, Wm]`` at ``stride`` in the padded resized frame.
        stride: the stride of ``logits``.
        boxes: ``[M, 4]`` in the original frame.
        scale: ``(sx, sy) = resized / original``.
        original_size: ``(H, W)``.
        threshold: the mask probability threshold.
        image: ``[3, Hp, Wp]`` RGB 0..255, the padded resized image (needed with ``refinement``).
        refinement: sharpens each box's logits along the image's colour edges.
    """
    height, width = original_size
    masks = torch.zeros(logits.shape[0], height, width, dtype=torch.bool, device=logits.device)
    for index, box in enumerate(boxes.tolist()):
        (xs, ys), box_logits = sample_box_grid(logits[index:index + 1], stride, box, scale, original_size)
        if refinement is not None:
            box_logits = refinement(box_logits, box_colours(image, box, scale, original_size))
        masks[index, ys:ys + box_logits.shape[1], xs:xs + box_logits.shape[2]] = box_logits[0].sigmoid() > threshold
    return masks


def box_colours(image: Tensor, box: tuple[float, float, float, float], scale: tuple[float, float],
                original_size: tuple[int, int]) -> Tensor:
    """``[3, h, w]``: the colours of the padded resized ``image [3, Hp, Wp]`` at the pixel centres of ``box``'s
    candidate grid in the original frame (as :func:`sample_box_grid` samples logits), for refinement."""
    if image is None:
        raise ValueError("mask refinement needs the image the masks are pasted on")
    return sample_box_grid(image.float(), 1, box, scale, original_size)[1]
