"""A global point budget (``selection.allocation=global``): the step's points go to the instances where they
score highest, instead of one to every instance (docs/design.md, "The method").

The budget is what per-instance allocation would spend: one point per instance that still has a candidate.
Each instance offers a short ranked list of candidates (:func:`ranked_points`); :func:`allocate` pools the
lists of every instance and keeps the ``budget`` highest scores, so a confident instance may get no point
this step and a hard one several. Scores of one metric are comparable across instances (an entropy is an
entropy wherever it is measured).

Several points of one instance: the candidates are taken greedily in score order, skipping any closer than
``min_distance`` pixels (Euclidean, between pixel indices) to one already taken, up to ``max_points``;
without the distance rule an instance's extra points would be the neighbours of its first, which a model
learns from almost nothing new.
"""

from __future__ import annotations

import math
from collections.abc import Sequence, Set

import numpy as np
from torch import Tensor

from apis.active.selection import ScoredGrid, available_candidates
from apis.active.strategies import PointMetric
from apis.structures import PredictionSet, SelectedPoint


def ranked_points(pred: PredictionSet, metric: PointMetric, rng: np.random.Generator, max_points: int,
                  min_distance: float, asked: Set[tuple[int, int]] = frozenset(), gt: Tensor | None = None
                  ) -> list[SelectedPoint]:
    """Up to ``max_points`` not-yet-asked candidates of one instance, best first, pairwise at least
    ``min_distance`` pixels apart.

    Ties are broken by one seeded random permutation of the candidates (one call to ``rng`` per instance
    with a candidate). K == 0 with a metric that uses predictions: one uniformly random candidate,
    ``fallback="empty-set"``, score NaN (:func:`allocate` serves such instances first). No candidate left:
    an empty list.
    """
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    available = available_candidates(pred, asked)
    candidates = np.flatnonzero(available)
    if not len(candidates):
        return []
    grid = ScoredGrid(pred, metric, gt)
    shuffled = rng.permutation(candidates)
    order = shuffled[np.argsort(-grid.scores.reshape(-1)[shuffled], kind="stable")]
    wanted = 1 if grid.empty else max_points
    width = pred.grid_shape[1]
    taken: list[tuple[int, int]] = []
    for flat in order:
        i, j = divmod(int(flat), width)
        if all((i - ti) ** 2 + (j - tj) ** 2 >= min_distance ** 2 for ti, tj in taken):
            taken.append((i, j))
            if len(taken) == wanted:
                break
    return [grid.point(i, j) for i, j in taken]


def allocate(ranked: Sequence[Sequence[SelectedPoint]], budget: int, rng: np.random.Generator
             ) -> list[SelectedPoint]:
    """The ``budget`` best points of all instances' ranked lists.

    Args:
        ranked: per instance, its candidates best first (:func:`ranked_points`).
        budget: how many points to return (all of them when fewer are offered).
        rng: breaks ties between equal scores (one seeded permutation).

    Returns:
        The chosen points in the order of ``ranked`` (instance by instance, best first). A point with a NaN
        score (an instance the model predicts nothing for) comes before every scored one.
    """
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    pool = [(index, rank, point) for index, points in enumerate(ranked) for rank, point in enumerate(points)]
    shuffled = [pool[i] for i in rng.permutation(len(pool))]
    keys = np.array([math.inf if math.isnan(p.score) else p.score for _, _, p in shuffled], dtype=np.float64)
    best = [shuffled[i] for i in np.argsort(-keys, kind="stable")[:budget]]
    return [point for _, _, point in sorted(best, key=lambda entry: entry[:2])]
