"""Records that several layers exchange, so that none of them has to import another's module.

* :class:`PredictionSet`: the K mask probability maps a model gives one GT instance on its candidate
  pixels; built in :mod:`apis.active.prediction` from the model's outputs, read by point selection.
* :class:`SelectedPoint`: the pixel a strategy chose for one instance, with the scores that chose it.

Coordinates follow docs/design.md ("Coordinates"): ``origin``, ``x`` and ``y`` are integer pixel
indices in the original image (x = column, y = row); boxes are continuous ``xyxy``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class PredictionSet:
    """The K predictions of one GT instance, sampled on its candidate grid.

    * ``ann_id``: the COCO annotation id of the instance.
    * ``origin``: ``(xs, ys)``, integer pixel index of the top-left candidate pixel.
    * ``probs``: ``[K, h, w]`` float in [0, 1]; ``probs[:, i, j]`` belongs to pixel ``(xs + j, ys + i)``.
      K may be 0 (the model predicted nothing for the instance).
    * ``boxes`` ``[K, 4]`` (xyxy, continuous image coordinates) and ``scores`` ``[K]``: the predicted box
      and confidence of each member; both may be empty (length 0) when the source does not provide them.
    """

    ann_id: int
    origin: tuple[int, int]
    probs: Tensor
    boxes: Tensor = field(default_factory=lambda: torch.zeros(0, 4))
    scores: Tensor = field(default_factory=lambda: torch.zeros(0))

    def __post_init__(self) -> None:
        where = f"prediction set of annotation {self.ann_id}"
        if self.probs.ndim != 3 or self.probs.shape[1] < 1 or self.probs.shape[2] < 1:
            raise ValueError(f"{where}: probs must be [K, h, w] with h, w >= 1, "
                             f"got {tuple(self.probs.shape)}")
        if len(self.origin) != 2 or any(int(v) != v or v < 0 for v in self.origin):
            raise ValueError(f"{where}: origin must be two non-negative integer pixel indices, "
                             f"got {self.origin}")
        self.origin = (int(self.origin[0]), int(self.origin[1]))
        if self.k and not bool(((self.probs >= 0) & (self.probs <= 1)).all()):
            raise ValueError(f"{where}: probs must lie in [0, 1] (no NaN)")
        if tuple(self.boxes.shape) not in {(0, 4), (self.k, 4)}:
            raise ValueError(f"{where}: boxes must be [K={self.k}, 4] or empty, "
                             f"got {tuple(self.boxes.shape)}")
        if tuple(self.scores.shape) not in {(0,), (self.k,)}:
            raise ValueError(f"{where}: scores must be [K={self.k}] or empty, got {tuple(self.scores.shape)}")

    @property
    def k(self) -> int:
        """Number of members of the set."""
        return int(self.probs.shape[0])

    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(h, w)`` of the candidate grid."""
        return int(self.probs.shape[1]), int(self.probs.shape[2])

    @property
    def grid_range(self) -> tuple[int, int, int, int]:
        """Half-open pixel ranges ``(xs, ys, xe, ye)``, comparable with ``box_pixel_range``."""
        h, w = self.grid_shape
        xs, ys = self.origin
        return xs, ys, xs + w, ys + h


@dataclass(frozen=True)
class SelectedPoint:
    """The pixel chosen for one instance.

    ``x``, ``y``: integer pixel indices in the original image. ``score``: the metric's selection score
    there (higher = chosen first; NaN for the empty-set fallback). ``uncertainty``: the metric's reported
    value there (e.g. the entropy for both "entropy" and "least-entropy"; NaN for the empty-set fallback).
    ``k``: size of the prediction set. ``fallback``: the rule used instead of the metric, if any
    (``"empty-set"``: K == 0, uniform random candidate; ``"single-prediction-entropy"``: variance with
    K == 1). ``metric``: the metric's name. ``prob_mean``: ``p̄`` at the point (NaN when K == 0).
    """

    ann_id: int
    x: int
    y: int
    score: float
    uncertainty: float
    k: int
    fallback: str | None
    metric: str
    prob_mean: float

