"""A simulated annotator: answers "does pixel (x, y) lie on instance ``ann_id``?" from the GT masks.

It labels the random points of PointSup-style training (``data.random_points_per_instance``) and is the
default oracle of the active loop, which accepts anything with the same ``name`` and ``answer``
(:class:`apis.active.oracle.Oracle`). Labels: 1 = on the object, 0 = background, -1 = unsure (ignored by
the point loss). Points are integer pixel indices ``(x, y)`` in the original image (x = column, y = row).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from apis.data.points import UNSURE


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

    def __init__(self, gt_mask_fn: Callable[[int], np.ndarray], point_cost_s: float = 0.9,
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
