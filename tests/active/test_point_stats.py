import math

import numpy as np
import pytest

from apis.active.point_stats import boundary_distance, mask_boundary, misclassified, summarise_selection
from apis.structures import SelectedPoint


def square_mask():
    mask = np.zeros((10, 10), bool)
    mask[2:8, 2:8] = True  # a 6x6 square: rows and columns 2..7
    return mask


@pytest.mark.parametrize("x, y, expected", [
    (4, 4, 2.0),             # interior; nearest boundary pixels at column 2 / row 2
    (2, 5, 0.0),             # on the left edge
    (7, 7, 0.0),             # corner
    (6, 5, 1.0),             # one pixel inside the right edge
    (0, 0, math.sqrt(8)),    # outside, nearest is the corner (2, 2)
    (5, 0, 2.0),             # above the top edge
    (9, 9, math.sqrt(8)),    # outside, nearest corner (7, 7)
])
def test_boundary_distance_on_a_square(x, y, expected):
    assert boundary_distance(square_mask(), x, y) == pytest.approx(expected)


def test_image_border_counts_as_outside():
    mask = np.ones((5, 5), bool)
    assert boundary_distance(mask, 2, 2) == pytest.approx(2.0)
    assert boundary_distance(mask, 0, 3) == 0.0


def test_empty_mask_gives_nan_and_outside_point_raises():
    assert math.isnan(boundary_distance(np.zeros((4, 4), bool), 1, 1))
    with pytest.raises(ValueError, match="outside"):
        boundary_distance(square_mask(), 10, 0)


def brute_force_boundary(mask):
    height, width = mask.shape
    found = set()
    for y in range(height):
        for x in range(width):
            if not mask[y, x]:
                continue
            for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                nx, ny = x + dx, y + dy
                if not (0 <= nx < width and 0 <= ny < height) or not mask[ny, nx]:
                    found.add((x, y))
    return found


def test_boundary_and_distances_match_brute_force_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(5):
        mask = rng.random((12, 15)) < 0.6
        boundary = brute_force_boundary(mask)
        assert {tuple(p) for p in mask_boundary(mask).tolist()} == boundary
        for x, y in rng.integers(0, [15, 12], size=(10, 2)):
            expected = min(math.hypot(x - bx, y - by) for bx, by in boundary)
            assert boundary_distance(mask, int(x), int(y)) == pytest.approx(expected)


def test_misclassified_thresholds_at_half():
    assert misclassified(0.7, 1) is False
    assert misclassified(0.7, 0) is True
    assert misclassified(0.5, 1) is True  # 0.5 is not foreground
    assert misclassified(0.2, 0) is False
    assert misclassified(0.9, -1) is None
    assert misclassified(math.nan, 1) is None
    with pytest.raises(ValueError):
        misclassified(0.5, 2)


def point(ann_id, x, y, prob_mean):
    return SelectedPoint(ann_id=ann_id, x=x, y=y, score=0.0, uncertainty=0.0, k=1, fallback=None,
                         metric="entropy", prob_mean=prob_mean)


def test_summarise_selection_by_hand():
    masks = {1: square_mask(), 2: np.zeros((10, 10), bool)}
    points = [point(1, 4, 4, 0.9),        # label 1, right; distance 2
              point(1, 0, 0, 0.6),        # label 0, wrong; distance sqrt(8)
              point(1, 2, 5, 0.1),        # unsure: not judged; distance 0
              point(2, 3, 3, math.nan)]   # empty set, empty mask: neither judged nor measured
    summary = summarise_selection(points, [1, 0, -1, 0], masks.__getitem__)
    assert (summary.num_points, summary.num_judged, summary.num_misclassified) == (4, 2, 1)
    assert summary.misclassified_share == pytest.approx(0.5)
    assert summary.mean_boundary_distance == pytest.approx((2 + math.sqrt(8) + 0) / 3)
    with pytest.raises(ValueError, match="3 labels"):
        summarise_selection(points, [1, 0, 1], masks.__getitem__)
