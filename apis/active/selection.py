"""Model-agnostic point selection: pick the most informative candidate pixel of each instance
(docs/design.md, "The method").

Any model can drive it: sample its K mask probability maps of an instance at the instance's candidate
pixels (the GT box's pixel grid, :func:`apis.data.coords.box_pixel_range`), wrap them in a
:class:`PredictionSet` and call :func:`select_point` with a metric from :mod:`apis.active.strategies`.

Coordinates: ``origin = (xs, ys)`` is the integer pixel index of the grid's top-left candidate, so
``probs[:, i, j]`` is the prediction at image pixel ``(x, y) = (xs + j, ys + i)``. Selected points and
``asked`` pixels are integer pixel indices ``(x, y)`` in the original image (x = column, y = row).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Set

import numpy as np
import torch
from torch import Tensor

from apis.active.strategies import PointMetric
from apis.structures import PredictionSet, SelectedPoint

TIE_TOLERANCE = 1e-12
"""Scores (computed in float64) within this absolute distance of the maximum count as tied maxima."""


def crop_to_grid(mask: Tensor | np.ndarray, pred: PredictionSet) -> Tensor:
    """Cut a full-image mask ``[H, W]`` to the candidate grid of ``pred``: ``[h, w]`` float64 in {0, 1}."""
    mask = torch.as_tensor(np.asarray(mask) if isinstance(mask, np.ndarray) else mask)
    xs, ys, xe, ye = pred.grid_range
    if mask.ndim != 2 or mask.shape[0] < ye or mask.shape[1] < xe:
        raise ValueError(f"annotation {pred.ann_id}: GT mask of shape {tuple(mask.shape)} does not contain "
                         f"the candidate grid x in [{xs}, {xe}), y in [{ys}, {ye})")
    return mask[ys:ye, xs:xe].to(torch.float64)


def available_candidates(pred: PredictionSet, asked: Iterable[tuple[int, int]]) -> np.ndarray:
    """Boolean ``[h, w]``: grid pixels not asked yet. Asked pixels outside the grid are irrelevant."""
    xs, ys, xe, ye = pred.grid_range
    available = np.ones(pred.grid_shape, dtype=bool)
    for x, y in asked:
        if xs <= x < xe and ys <= y < ye:
            available[y - ys, x - xs] = False
    return available


class ScoredGrid:
    """A metric's scores over one instance's candidate grid, and the selected point at any grid cell.

    ``scores``: float64 ``[h, w]`` numpy (zeros for an empty set, where ``empty`` is True: K == 0 with a
    metric that uses predictions, whose points are uniformly random candidates).
    """

    def __init__(self, pred: PredictionSet, metric: PointMetric, gt: Tensor | None = None):
        probs = pred.probs.detach().to(torch.float64)
        gt64 = None
        if gt is not None:
            gt64 = torch.as_tensor(gt, device=probs.device).detach().to(torch.float64)
            if tuple(gt64.shape) != pred.grid_shape:
                raise ValueError(f"annotation {pred.ann_id}: gt shape {tuple(gt64.shape)} "
                                 f"!= grid {pred.grid_shape}")
        if metric.needs_gt and gt64 is None:
            raise ValueError(f"metric {metric.name!r} needs the GT mask of annotation {pred.ann_id} (gt=None)")
        self.pred, self.metric, self.probs, self.gt = pred, metric, probs, gt64
        self._values: Tensor | None = None  # the metric's reported map, computed once a point asks for it
        self.empty = pred.k == 0 and metric.uses_predictions
        scores = torch.zeros(pred.grid_shape, dtype=torch.float64) if self.empty else metric.score(probs, gt64)
        self.scores = scores.detach().to(device="cpu", dtype=torch.float64).numpy()
        if self.scores.shape != pred.grid_shape or np.isnan(self.scores).any():
            raise ValueError(f"metric {metric.name!r} on annotation {pred.ann_id}: scores must be a NaN-free "
                             f"{pred.grid_shape} map, got shape {self.scores.shape}")

    def point(self, i: int, j: int) -> SelectedPoint:
        """The :class:`SelectedPoint` at grid row ``i``, column ``j``."""
        pred, metric = self.pred, self.metric
        if self.empty:
            score = uncertainty = prob_mean = math.nan
        else:
            score = float(self.scores[i, j])
            if self._values is None:
                self._values = metric.value(self.probs, self.gt)
            uncertainty = float(self._values[i, j])
            prob_mean = float(self.probs[:, i, j].mean()) if pred.k else math.nan
        return SelectedPoint(ann_id=pred.ann_id, x=pred.origin[0] + j, y=pred.origin[1] + i, score=score,
                             uncertainty=uncertainty, k=pred.k,
                             fallback="empty-set" if self.empty else metric.fallback(pred.k),
                             metric=metric.name, prob_mean=prob_mean)


def select_point(pred: PredictionSet, metric: PointMetric, rng: np.random.Generator,
                 asked: Set[tuple[int, int]] = frozenset(), gt: Tensor | None = None) -> SelectedPoint | None:
    """The most informative not-yet-asked candidate of one instance.

    Args:
        pred: the instance's prediction set.
        metric: scores the candidates; the argmax is chosen.
        rng: the run's seeded generator. Exactly one draw is made per call (the index among the tied
            maxima, or among all candidates for the empty-set fallback), so the random stream does not
            depend on the scores and a seed fixes every choice.
        asked: pixels ``(x, y)`` already queried for this instance; they are never chosen again.
        gt: the instance's GT mask on the candidate grid, ``[h, w]`` in {0, 1}; required when
            ``metric.needs_gt`` (see :func:`crop_to_grid`).

    Ties: every candidate whose score is within ``TIE_TOLERANCE`` of the maximum is a maximum; one of them
    is chosen uniformly at random. K == 0 with a metric that uses predictions: a uniformly random
    candidate, ``fallback="empty-set"``.

    Returns:
        The selected point, or ``None`` when every pixel of the grid was asked already.
    """
    available = available_candidates(pred, asked)
    if not available.any():
        return None
    grid = ScoredGrid(pred, metric, gt)
    candidates = np.flatnonzero(available)
    candidate_scores = grid.scores.reshape(-1)[candidates]
    tied = candidates[candidate_scores >= candidate_scores.max() - TIE_TOLERANCE]
    flat = int(tied[rng.integers(len(tied))])
    return grid.point(*divmod(flat, pred.grid_shape[1]))


def select_points(preds: Iterable[PredictionSet], metric: PointMetric, rng: np.random.Generator,
                  asked: Mapping[int, Set[tuple[int, int]]] | None = None,
                  gt_masks: Mapping[int, Tensor | np.ndarray] | None = None) -> list[SelectedPoint]:
    """:func:`select_point` for many instances, in the given order (deterministic for a seeded ``rng``).

    ``asked`` maps an annotation id to its already-queried pixels (missing id: none). ``gt_masks`` maps an
    annotation id to its **full-image** GT mask ``[H, W]``; each is cut to the instance's grid. Instances
    whose every candidate was asked already are left out of the result.
    """
    asked = asked or {}
    selected: list[SelectedPoint] = []
    seen: set[int] = set()
    for pred in preds:
        if pred.ann_id in seen:
            raise ValueError(f"annotation {pred.ann_id} has more than one prediction set; combine them first")
        seen.add(pred.ann_id)
        gt = None
        if gt_masks is not None and pred.ann_id in gt_masks:
            gt = crop_to_grid(gt_masks[pred.ann_id], pred)
        point = select_point(pred, metric, rng, asked.get(pred.ann_id, frozenset()), gt)
        if point is not None:
            selected.append(point)
    return selected


def combine_sets(*sets: PredictionSet) -> PredictionSet:
    """Concatenate prediction sets of the same instance along K (the "models" and "scales" sets).

    All sets must share ``ann_id``, ``origin`` and grid shape. Boxes and scores are concatenated when every
    set provides them for all of its members, and left empty otherwise.
    """
    if not sets:
        raise ValueError("combine_sets needs at least one prediction set")
    first = sets[0]
    for other in sets[1:]:
        identity, other_identity = (first.ann_id, first.origin, first.grid_shape), (
            other.ann_id, other.origin, other.grid_shape)
        if other_identity != identity:
            raise ValueError(f"combine_sets: sets differ in (ann_id, origin, grid shape): "
                             f"{identity} vs {other_identity}")
    # Empty sets add nothing; leaving them out also avoids mixing devices with their placeholder tensors.
    members = [s for s in sets if s.k] or [first]
    probs = torch.cat([s.probs for s in members], dim=0)
    complete = all(len(s.boxes) == s.k and len(s.scores) == s.k for s in members)
    boxes = torch.cat([s.boxes for s in members]) if complete else torch.zeros(0, 4)
    scores = torch.cat([s.scores for s in members]) if complete else torch.zeros(0)
    return PredictionSet(ann_id=first.ann_id, origin=first.origin, probs=probs, boxes=boxes, scores=scores)
