"""Geometric augmentation: resize the shortest edge, then optionally flip horizontally.

One :class:`ResizeFlip` is drawn per image and applied to everything that lives in the image frame,
so that a labelled point stays on the same object pixel. Coordinates are continuous (see
:mod:`apis.data.coords`): resizing maps ``x -> x * sx`` (``sx = new_width / old_width``), flipping
maps ``x -> W - x``, so a pixel centre stays a pixel centre of the mirrored pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def resized_size(height: int, width: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """``(h, w)`` with the shorter side at ``short_edge`` and the longer one at most ``max_size``.

    The aspect ratio is kept (up to rounding to whole pixels), as in detectron2's ResizeShortestEdge.
    """
    if height < 1 or width < 1:
        raise ValueError(f"cannot resize an empty image of size {width}x{height}")
    scale = short_edge / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return max(int(round(height * scale)), 1), max(int(round(width * scale)), 1)


@dataclass(frozen=True)
class ResizeFlip:
    """Resize from ``original_size`` to ``size`` (both ``(height, width)``), then mirror if ``flip``."""

    original_size: tuple[int, int]
    size: tuple[int, int]
    flip: bool = False

    @property
    def scale(self) -> tuple[float, float]:
        """``(sx, sy)`` = resized / original extent."""
        return self.size[1] / self.original_size[1], self.size[0] / self.original_size[0]

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """``uint8[H, W, 3]`` -> ``uint8[h, w, 3]`` (bilinear)."""
        if image.shape[:2] != tuple(self.original_size):
            raise ValueError(f"image is {image.shape[1]}x{image.shape[0]}, transform expects "
                             f"{self.original_size[1]}x{self.original_size[0]}")
        if tuple(self.size) != tuple(self.original_size):
            height, width = self.size
            image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
        if self.flip:
            image = image[:, ::-1]
        return np.ascontiguousarray(image)

    def apply_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """``[N, 4]`` continuous ``xyxy`` -> the same boxes in the new frame."""
        sx, sy = self.scale
        out = boxes.to(torch.float32) * boxes.new_tensor([sx, sy, sx, sy], dtype=torch.float32)
        if self.flip:
            width = float(self.size[1])
            out = torch.stack([width - out[:, 2], out[:, 1], width - out[:, 0], out[:, 3]], dim=1)
        return out

    def apply_points(self, coords: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Continuous ``coords [..., 2]`` and ``labels [...]`` -> new coords and labels.

        A point that ends up outside the resized image gets label -1 (ignored by the loss).
        """
        sx, sy = self.scale
        out = coords.to(torch.float32) * coords.new_tensor([sx, sy], dtype=torch.float32)
        if self.flip:
            out = torch.stack([float(self.size[1]) - out[..., 0], out[..., 1]], dim=-1)
        height, width = self.size
        inside = (out[..., 0] >= 0) & (out[..., 0] < width) & (out[..., 1] >= 0) & (out[..., 1] < height)
        return out, torch.where(inside, labels, torch.full_like(labels, -1))

    def apply_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """``[N, H, W]`` binary masks -> ``uint8[N, h, w]``.

        Nearest neighbour at pixel centres ("nearest-exact"), so a resized pixel takes the value of
        the original pixel under its centre, consistent with :meth:`apply_points`.
        """
        height, width = self.size
        if masks.shape[0] == 0:
            return torch.zeros((0, height, width), dtype=torch.uint8)
        out = masks.to(torch.uint8)
        if tuple(self.size) != tuple(self.original_size):
            out = F.interpolate(out[:, None].float(), size=(height, width), mode="nearest-exact")[:, 0]
            out = out.to(torch.uint8)
        if self.flip:
            out = out.flip(-1)
        return out.contiguous()


def sample_train_transform(height: int, width: int, min_sizes: Sequence[int], max_size: int,
                           hflip_prob: float, rng: np.random.Generator) -> ResizeFlip:
    """Multi-scale training: a short edge drawn uniformly from ``min_sizes``, a flip with ``hflip_prob``."""
    if not min_sizes:
        raise ValueError("min_sizes must name at least one training short-edge size")
    short_edge = int(min_sizes[int(rng.integers(len(min_sizes)))])
    flip = bool(rng.random() < hflip_prob)
    return ResizeFlip((height, width), resized_size(height, width, short_edge, max_size), flip)


def inference_transform(height: int, width: int, min_size: int, max_size: int) -> ResizeFlip:
    """Inference: one fixed short edge, no flip."""
    return ResizeFlip((height, width), resized_size(height, width, min_size, max_size), False)
