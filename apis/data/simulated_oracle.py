"""A simulated annotator: answers "does pixel (x, y) lie on instance ``ann_id``?" from the GT masks.

It labels the random points of PointSup-style training (``data.random_points_per_instance``) and is the
default oracle of the active loop, which accepts anything with the same ``name`` and ``answer``
(:class:`apis.loop.oracle.Oracle`). Labels: 1 = on the object, 0 = background, -1 = unsure (ignored by
the point loss). Points are integer pixel indices ``(x, y)`` in the original image (x = column, y = row).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from apis.data.points import UNSURE


class PointTruth(Protocol):
    """Where the truth comes from: :class:`apis.data.coco.GroundTruthMasks` (the GT masks' run-length codes)."""

    def labels_at(self, ann_ids: Sequence[int], xs: Sequence[int], ys: Sequence[int]) -> np.ndarray:
        """``bool [N]``: whether pixel ``(xs[n], ys[n])`` lies on instance ``ann_ids[n]``; ValueError naming the
        annotation and the point when one lies outside its image."""
        ...


class SimulatedOracle:
    """Answers from GT masks, optionally noisy.

    Args:
        truth: the GT masks, read point by point without decoding them (``dataset.masks("oracle")``).
        point_cost_s: seconds charged per question (unsure answers are charged too).
        flip_prob: probability that a (sure) answer is inverted.
        unsure_rate: probability of answering -1.
        seed: seeds the noise. Each question draws the same two numbers whatever the settings, so a seed
            gives the same noise pattern across runs, and :meth:`answer_many` gives what as many calls of
            :meth:`answer` give.

    ``spent_s`` and ``questions`` accumulate the cost of every answer given.
    """

    name = "simulated-oracle"

    def __init__(self, truth: PointTruth, point_cost_s: float = 0.9, flip_prob: float = 0.0,
                 unsure_rate: float = 0.0, seed: int = 0) -> None:
        for label, prob in (("flip_prob", flip_prob), ("unsure_rate", unsure_rate)):
            if not 0.0 <= prob <= 1.0:
                raise ValueError(f"SimulatedOracle: {label} must be in [0, 1], got {prob}")
        if point_cost_s < 0:
            raise ValueError(f"SimulatedOracle: point_cost_s must be >= 0, got {point_cost_s}")
        self.truth = truth
        self.point_cost_s = point_cost_s
        self.flip_prob = flip_prob
        self.unsure_rate = unsure_rate
        self.spent_s = 0.0
        self.questions = 0
        self._rng = np.random.default_rng(seed)

    def answer(self, ann_id: int, x: int, y: int) -> int:
        """``mask[y, x]`` as 1/0, inverted with ``flip_prob``, or -1 with ``unsure_rate``."""
        return int(self.answer_many([ann_id], [x], [y])[0])

    def answer_many(self, ann_ids: Sequence[int], xs: Sequence[int], ys: Sequence[int]) -> np.ndarray:
        """int64 ``[N]``: :meth:`answer` of every ``(ann_ids[n], xs[n], ys[n])`` in order, looked up in one pass.
        A point outside its image raises ValueError naming it, and no question of the batch is charged."""
        truth = np.asarray(self.truth.labels_at(ann_ids, xs, ys), dtype=bool)
        draws = self._rng.random((truth.size, 2))  # the stream of truth.size calls drawing two numbers each
        self.spent_s += self.point_cost_s * truth.size
        self.questions += truth.size
        labels = np.where(draws[:, 1] < self.flip_prob, ~truth, truth).astype(np.int64)
        labels[draws[:, 0] < self.unsure_rate] = UNSURE
        return labels
