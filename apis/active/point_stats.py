"""Analyses of the selected points (the paper's Fig. 4b/4c; docs/design.md, "Reading a run"): how often the
previous model got them wrong, and how far they lie from the GT boundary.

Points are integer pixel indices ``(x, y)``; distances are measured between pixel centres, in pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import numpy as np

from apis.data.ledger import Answer
from apis.data.points import UNSURE
from apis.structures import SelectedPoint

MASK_THRESHOLD = 0.5
"""A pixel is predicted foreground when its probability is strictly above this (CondInst's mask threshold)."""


def mask_boundary(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a boolean mask ``[H, W]`` as ``[N, 2]`` integer ``(x, y)``.

    A boundary pixel is a mask pixel with at least one 4-neighbour outside the mask; beyond the image
    border counts as outside. Only the mask's bounding box (plus a 1-pixel border) is examined.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be [H, W], got shape {mask.shape}")
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    cols = np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    # Everything around the bounding box is outside the mask (or outside the image).
    padded = np.pad(mask[y0:y1, x0:x1], 1, constant_values=False)
    centre = padded[1:-1, 1:-1]
    interior = centre & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    ys, xs = np.nonzero(centre & ~interior)
    return np.stack([xs + x0, ys + y0], axis=1).astype(np.int64)


def boundary_distances(mask: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distances ``[P]`` from pixels ``points [P, 2]`` (``(x, y)``) to the nearest boundary pixel of ``mask``.

    A boundary pixel is at distance 0; an empty mask gives NaN for every point.
    """
    mask = np.asarray(mask, dtype=bool)
    points = np.asarray(points, dtype=np.int64).reshape(-1, 2)
    height, width = mask.shape
    outside = (points[:, 0] < 0) | (points[:, 0] >= width) | (points[:, 1] < 0) | (points[:, 1] >= height)
    if outside.any():
        raise ValueError(f"point {points[outside][0].tolist()} outside the mask "
                         f"(width {width}, height {height})")
    boundary = mask_boundary(mask)
    if len(boundary) == 0:
        return np.full(len(points), math.nan)
    squared = ((points[:, None, :] - boundary[None, :, :]) ** 2).sum(axis=-1)
    return np.sqrt(squared.min(axis=1))


def boundary_distance(mask: np.ndarray, x: int, y: int) -> float:
    """Euclidean distance (pixels) from pixel ``(x, y)`` to the nearest boundary pixel of ``mask [H, W]``.

    See :func:`mask_boundary` for what the boundary is; NaN when the mask is empty.
    """
    return float(boundary_distances(mask, np.array([[x, y]]))[0])


def misclassified(prob_mean_at_point: float, label: int) -> bool | None:
    """Whether the prediction ``p̄ > 0.5`` disagrees with the oracle's label.

    ``None`` when there is nothing to compare: an unsure label (-1) or no prediction (NaN, K == 0).
    """
    if label == UNSURE or math.isnan(prob_mean_at_point):
        return None
    if label not in (0, 1):
        raise ValueError(f"label must be 1, 0 or -1, got {label}")
    return (prob_mean_at_point > MASK_THRESHOLD) != bool(label)


@dataclass(frozen=True)
class SelectionSummary:
    """Statistics of one step's selected points.

    ``misclassified_share``: misclassified / judged points, where judged excludes unsure labels and
    empty prediction sets (NaN if none was judged). ``mean_boundary_distance``: mean over points whose
    instance has a non-empty mask (NaN if none).
    """

    num_points: int
    num_judged: int
    num_misclassified: int
    misclassified_share: float
    mean_boundary_distance: float


def summarise_selection(points: Sequence[SelectedPoint], labels: Sequence[int],
                        gt_mask_fn: Callable[[int], np.ndarray]) -> SelectionSummary:
    """Share of ``points`` that the model which chose them misclassifies, and their mean distance to the
    GT boundary. ``labels[i]`` is the oracle's answer for ``points[i]``; ``gt_mask_fn(ann_id)`` returns the
    instance's full-image boolean mask ``[H, W]``."""
    if len(points) != len(labels):
        raise ValueError(f"summarise_selection: {len(points)} points but {len(labels)} labels")
    verdicts = [misclassified(p.prob_mean, label) for p, label in zip(points, labels)]
    judged = [v for v in verdicts if v is not None]
    distances = np.array([boundary_distance(gt_mask_fn(p.ann_id), p.x, p.y) for p in points],
                         dtype=np.float64)
    distances = distances[~np.isnan(distances)]
    return SelectionSummary(
        num_points=len(points),
        num_judged=len(judged),
        num_misclassified=sum(judged),
        misclassified_share=sum(judged) / len(judged) if judged else math.nan,
        mean_boundary_distance=float(distances.mean()) if distances.size else math.nan,
    )


SELECTED_POINT_FIELDS = [f.name for f in fields(SelectedPoint)]
NULLABLE_FLOATS = {"prob_mean", "score", "uncertainty"}  # NaN in memory, null in strict JSON


def point_from_json(entry: dict) -> SelectedPoint:
    """A :class:`SelectedPoint` from its ``selection.json`` entry (extra keys such as ``image_id`` ignored)."""
    return SelectedPoint(**{k: math.nan if entry[k] is None and k in NULLABLE_FLOATS else entry[k]
                            for k in SELECTED_POINT_FIELDS})


def selection_statistics(selection: dict, answers: Sequence[Answer],
                         gt_mask_fn: Callable[[int], np.ndarray]) -> dict[str, float]:
    """The loop's record of one step's selection: ``selection_seconds``, ``misclassified_share`` and
    ``boundary_distance_px`` of the answered points (see :func:`summarise_selection`), and
    ``empty_prediction_sets`` (points chosen from an empty set).

    Args:
        selection: the step's ``selection.json`` (``seconds`` and ``points``).
        answers: the ledger's answers of that step.
        gt_mask_fn: ``ann_id -> bool [H, W]``; an all-False mask (no GT, a person answering) gives NaN distances.
    """
    labels = {(a.ann_id, a.x, a.y): a.label for a in answers}
    answered = [p for p in selection["points"] if (p["ann_id"], p["x"], p["y"]) in labels]
    points = [point_from_json(p) for p in answered]
    summary = summarise_selection(points, [labels[(p.ann_id, p.x, p.y)] for p in points], gt_mask_fn)
    return {
        "selection_seconds": selection["seconds"],
        "misclassified_share": summary.misclassified_share,
        "boundary_distance_px": summary.mean_boundary_distance,
        "empty_prediction_sets": sum(1 for p in selection["points"] if p["k"] == 0),
    }
