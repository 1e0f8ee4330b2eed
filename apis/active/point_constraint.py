"""Make a predicted mask agree with the points a person answered about its instance.

A model trained on an instance's points usually agrees with them, but not always: after training, some "yes"
points still fall outside the thresholded mask and some "no" points inside. An exported mask must not
contradict an answer, so one of these rules corrects it (``apis export-masks --constraint``):

* ``local`` (the default): each contradicted point pushes the model's logit map towards its answer, by a
  Gaussian bump centred on the point (standard deviation :data:`LOCAL_SIGMA_SHARE` of the box's mean side) just
  high enough that the point ends :data:`LOCAL_MARGIN` logits on its side. The shape the model drew is kept;
  the outline moves only near the point, further where the model was less sure. Points are taken in the order
  they were answered, each on the map the earlier ones left, and the answers themselves always win.
* ``threshold``: one threshold per instance, the one closest to the model's (0.5) that puts every "yes" point
  above and every "no" point below it; where none exists, the one that contradicts the fewest points, and
  ``local`` then mends the rest. This moves the whole outline, which helps when a model's masks are
  systematically too small or too large.
* ``none``: the model's mask as it is (the unconstrained baseline).

Which one helps is measured by ``bench/bench_label_quality.py`` (docs/benchmarks.md, "Training-mask quality").

Coordinates: ``probs`` is ``[h, w]`` on an instance's candidate grid (:class:`apis.structures.PredictionSet`);
points are integer pixel indices ``(x, y)`` on that grid (x = column, y = row), i.e. the image pixel minus the
grid's origin.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Constraint = Literal["local", "threshold", "none"]
CONSTRAINTS: tuple[str, ...] = ("local", "threshold", "none")
# The local correction's reach and strength. Chosen on one run (synthetic data, seed 0, P3: mean IoU with GT
# 0.575 unconstrained, 0.584 with these; flat for 0.05-0.15 and 1-3 logits) and measured on the others by
# bench/bench_label_quality.py (docs/benchmarks.md, "Training-mask quality").
LOCAL_SIGMA_SHARE = 0.1
LOCAL_MARGIN = 2.0


def contradicted(mask: np.ndarray, points: np.ndarray, labels: np.ndarray) -> int:
    """How many labelled points ``mask`` contradicts: a "yes" (1) outside it or a "no" (0) inside.

    Args:
        mask: ``bool[h, w]``.
        points: ``int[N, 2]`` grid pixel indices ``(x, y)``.
        labels: ``int[N]``, 1 object / 0 background (unsure answers must be left out by the caller).
    """
    if len(points) == 0:
        return 0
    inside = mask[points[:, 1], points[:, 0]]
    return int(np.sum(inside != (labels == 1)))


def constrain_mask(probs: np.ndarray, points: np.ndarray, labels: np.ndarray, method: Constraint = "local",
                   threshold: float = 0.5) -> np.ndarray:
    """The mask ``probs > threshold``, corrected by ``method`` so that it contradicts none of the points.

    Args:
        probs: ``float[h, w]`` mask probabilities on the instance's candidate grid.
        points: ``int[N, 2]`` grid pixel indices ``(x, y)`` of the answered points (N may be 0).
        labels: ``int[N]``: 1 object, 0 background.
        method: see the module docstring.
        threshold: the model's mask threshold.

    Returns:
        ``bool[h, w]``; with ``local`` or ``threshold``, ``contradicted(result, points, labels) == 0``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    points = np.asarray(points, dtype=np.int64).reshape(-1, 2)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    _check(probs, points, labels, method)
    if method == "threshold":
        threshold = point_threshold(probs[points[:, 1], points[:, 0]], labels, threshold)
    if method == "none" or len(points) == 0:
        return probs > threshold
    logits = _logit(probs) - _logit(np.float64(threshold))  # > 0: on the mask
    sigma = max(1.0, LOCAL_SIGMA_SHARE * (probs.shape[0] + probs.shape[1]) / 2)
    rows, cols = np.mgrid[0:probs.shape[0], 0:probs.shape[1]]
    for (x, y), label in zip(points.tolist(), labels.tolist()):
        if (logits[y, x] > 0) != bool(label):
            push = (LOCAL_MARGIN if label else -LOCAL_MARGIN) - logits[y, x]
            logits = logits + push * np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * sigma ** 2))
    mask = logits > 0
    # Two answers close together can pull one region both ways: the answers themselves always win.
    mask[points[:, 1], points[:, 0]] = labels == 1
    return mask


def _logit(probs: np.ndarray) -> np.ndarray:
    clipped = np.clip(probs, 1e-6, 1 - 1e-6)
    return np.log(clipped / (1 - clipped))


def point_threshold(point_probs: np.ndarray, labels: np.ndarray, default: float = 0.5) -> float:
    """The threshold ``t`` (mask: ``p > t``) that contradicts the fewest points, the closest to ``default``
    among those.

    Candidates are ``default`` and the points' own probabilities just below or at them; a "yes" point is
    satisfied when ``p > t``, a "no" point when ``p <= t``.
    """
    point_probs = np.asarray(point_probs, dtype=np.float64)
    labels = np.asarray(labels)
    candidates = np.unique(np.concatenate([[default], point_probs, np.nextafter(point_probs, -np.inf)]))
    wrong = [int(np.sum((point_probs > t) != (labels == 1))) for t in candidates]
    fewest = min(wrong)
    best = candidates[np.array(wrong) == fewest]
    return float(best[np.argmin(np.abs(best - default))])


def _check(probs: np.ndarray, points: np.ndarray, labels: np.ndarray, method: str) -> None:
    if method not in CONSTRAINTS:
        raise ValueError(f"unknown point constraint {method!r}; choose one of {', '.join(CONSTRAINTS)}")
    if probs.ndim != 2 or probs.size == 0:
        raise ValueError(f"probs must be a non-empty [h, w] map, got shape {probs.shape}")
    if len(points) != len(labels):
        raise ValueError(f"{len(points)} points but {len(labels)} labels")
    if len(points) and not ((points[:, 0] >= 0) & (points[:, 0] < probs.shape[1])
                            & (points[:, 1] >= 0) & (points[:, 1] < probs.shape[0])).all():
        raise ValueError(f"a point lies outside the {probs.shape[1]}x{probs.shape[0]} grid")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 1 (object) or 0 (background); leave unsure answers out")
