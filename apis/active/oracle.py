"""Who answers "does pixel (x, y) lie on instance ``ann_id``?" and what the answers cost (SPEC §1, §6).

Labels: 1 = on the object, 0 = background, -1 = unsure (ignored by the point loss). Points are integer
pixel indices ``(x, y)`` in the original image (x = column, y = row).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

UNSURE = -1


@dataclass(frozen=True)
class AnnotationCosts:
    """Seconds per annotation, SPEC §1: a yes/no point 0.9 s, a COCO polygon mask 79.2 s, a box 7.0 s
    (extreme clicking). 79.2 / 0.9 = 88 points cost as much as one mask."""

    point_s: float = 0.9
    mask_s: float = 79.2
    box_s: float = 7.0


DEFAULT_COSTS = AnnotationCosts()


def annotation_seconds(num_points: int, num_boxes: int, num_masks: int = 0,
                       costs: AnnotationCosts = DEFAULT_COSTS) -> float:
    """Total annotation time: ``num_points * point_s + num_boxes * box_s + num_masks * mask_s``."""
    if min(num_points, num_boxes, num_masks) < 0:
        raise ValueError(f"annotation counts must be >= 0, got points={num_points}, boxes={num_boxes}, "
                         f"masks={num_masks}")
    return num_points * costs.point_s + num_boxes * costs.box_s + num_masks * costs.mask_s


@runtime_checkable
class Oracle(Protocol):
    """Anything that labels points: the simulated oracle here, a person behind a UI later."""

    name: str

    def answer(self, ann_id: int, x: int, y: int) -> int:
        """1 (on the object), 0 (background) or -1 (unsure) for pixel ``(x, y)`` of instance ``ann_id``."""
        ...


class SimulatedOracle:
    """Answers from GT masks, optionally noisy.

    Args:
        gt_mask_fn: ``ann_id -> bool array [H, W]``, the instance's full-image GT mask. Called once per
            question; cache inside it if decoding is expensive.
        point_cost_s: seconds charged per question (unsure answers are charged too).
        flip_prob: probability that a (sure) answer is inverted.
        unsure_rate: probability of answering -1.
        seed: seeds the noise. Each question draws the same two numbers whatever the settings, so a seed
            gives the same noise pattern across runs.

    ``spent_s`` and ``questions`` accumulate the cost of every answer given.
    """

    name = "simulated-oracle"

    def __init__(self, gt_mask_fn: Callable[[int], np.ndarray], point_cost_s: float = DEFAULT_COSTS.point_s,
                 flip_prob: float = 0.0, unsure_rate: float = 0.0, seed: int = 0) -> None:
        for label, prob in (("flip_prob", flip_prob), ("unsure_rate", unsure_rate)):
            if not 0.0 <= prob <= 1.0:
                raise ValueError(f"SimulatedOracle: {label} must be in [0, 1], got {prob}")
        if point_cost_s < 0:
            raise ValueError(f"SimulatedOracle: point_cost_s must be >= 0, got {point_cost_s}")
        self.gt_mask_fn = gt_mask_fn
        self.point_cost_s = point_cost_s
        self.flip_prob = flip_prob
        self.unsure_rate = unsure_rate
        self.spent_s = 0.0
        self.questions = 0
        self._rng = np.random.default_rng(seed)

    def answer(self, ann_id: int, x: int, y: int) -> int:
        """``mask[y, x]`` as 1/0, inverted with ``flip_prob``, or -1 with ``unsure_rate``."""
        mask = np.asarray(self.gt_mask_fn(ann_id))
        if mask.ndim != 2:
            raise ValueError(f"annotation {ann_id}: GT mask must be [H, W], got shape {mask.shape}")
        if not (0 <= x < mask.shape[1] and 0 <= y < mask.shape[0]):
            raise ValueError(f"annotation {ann_id}: point (x={x}, y={y}) outside its image "
                             f"(width {mask.shape[1]}, height {mask.shape[0]})")
        unsure_draw, flip_draw = self._rng.random(2)
        self.spent_s += self.point_cost_s
        self.questions += 1
        if unsure_draw < self.unsure_rate:
            return UNSURE
        label = int(bool(mask[y, x]))
        return 1 - label if flip_draw < self.flip_prob else label

    def answer_many(self, points: Iterable[tuple[int, int, int]]) -> list[int]:
        """Answers for ``(ann_id, x, y)`` triples, in order."""
        return [self.answer(ann_id, x, y) for ann_id, x, y in points]
