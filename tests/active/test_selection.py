import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from apis.active.selection import (
    combine_sets,
    crop_to_grid,
    select_point,
    select_points,
)
from apis.active.strategies import get_metric
from apis.data.coords import box_pixel_range
from apis.structures import PredictionSet

DOCS = Path(__file__).resolve().parents[2] / "docs" / "strategies.md"
CHI2_7_DOF_P001 = 24.322  # 0.999 quantile of the chi-square distribution with 7 degrees of freedom


def empty_set(ann_id=1, origin=(5, 8), h=3, w=3) -> PredictionSet:
    return PredictionSet(ann_id, origin, torch.zeros(0, h, w))


def test_origin_offset_maps_grid_index_to_image_pixel():
    probs = torch.full((1, 3, 4), 0.99)
    probs[0, 1, 2] = 0.5  # row i=1, column j=2
    point = select_point(PredictionSet(3, (10, 20), probs), get_metric("entropy"), np.random.default_rng(0))
    assert (point.ann_id, point.x, point.y, point.k) == (3, 12, 21, 1)
    assert point.prob_mean == pytest.approx(0.5)


def test_grid_from_box_pixel_range_round_trips_to_image_pixels():
    height, width = 30, 40
    prob_map = torch.rand(2, height, width, generator=torch.Generator().manual_seed(0))
    xs, ys, xe, ye = box_pixel_range(7.2, 3.6, 19.5, 11.0, width, height)
    assert (xs, ys, xe, ye) == (7, 4, 20, 11)  # centres 7.5..19.5 and 4.5..10.5
    pred = PredictionSet(1, (xs, ys), prob_map[:, ys:ye, xs:xe])
    assert pred.grid_shape == (7, 13) and pred.grid_range == (7, 4, 20, 11)
    point = select_point(pred, get_metric("entropy"), np.random.default_rng(0))
    mean = prob_map[:, ys:ye, xs:xe].mean(0)
    best = (mean - 0.5).abs().argmin()
    assert (point.y - ys, point.x - xs) == divmod(int(best), xe - xs)
    assert point.prob_mean == pytest.approx(float(prob_map[:, point.y, point.x].mean()))


def test_empty_set_falls_back_to_a_seeded_candidate_inside_the_grid():
    asked = {(5, 8), (6, 9)}
    points = [select_point(empty_set(), get_metric("entropy"), np.random.default_rng(seed), asked)
              for seed in range(30)]
    for point in points:
        assert 5 <= point.x < 8 and 8 <= point.y < 11
        assert (point.x, point.y) not in asked
        assert point.fallback == "empty-set" and point.k == 0
        assert math.isnan(point.score) and math.isnan(point.uncertainty) and math.isnan(point.prob_mean)
    again = [select_point(empty_set(), get_metric("entropy"), np.random.default_rng(seed), asked)
             for seed in range(30)]
    assert [(p.x, p.y) for p in again] == [(p.x, p.y) for p in points]
    assert len({(p.x, p.y) for p in points}) > 1


@pytest.mark.parametrize("metric_name, k", [("entropy", 0), ("random", 0), ("random", 2)])
def test_random_choices_are_uniform_over_candidates(metric_name, k):
    probs = torch.rand(k, 3, 3, generator=torch.Generator().manual_seed(1))
    pred = PredictionSet(1, (5, 8), probs)
    asked = {(6, 9)}  # the centre pixel: 8 candidates remain
    rng = np.random.default_rng(123)
    counts: dict[tuple[int, int], int] = {}
    draws = 4000
    for _ in range(draws):
        point = select_point(pred, get_metric(metric_name), rng, asked)
        counts[(point.x, point.y)] = counts.get((point.x, point.y), 0) + 1
    assert (6, 9) not in counts and len(counts) == 8
    expected = draws / 8
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < CHI2_7_DOF_P001


def test_ties_are_broken_randomly_and_only_among_the_tied():
    probs = torch.full((1, 2, 3), 0.9)
    probs[0, 0, 1] = 0.5
    probs[0, 1, 2] = 0.5
    chosen = {(p.x, p.y) for p in (select_point(PredictionSet(1, (0, 0), probs), get_metric("entropy"),
                                                 np.random.default_rng(seed)) for seed in range(40))}
    assert chosen == {(1, 0), (2, 1)}


def test_asked_pixels_are_excluded_and_exhaustion_gives_none():
    probs = torch.tensor([[[0.5, 0.4], [0.2, 0.99]]])
    pred = PredictionSet(1, (2, 3), probs)
    rng = np.random.default_rng(0)
    first = select_point(pred, get_metric("entropy"), rng)
    assert (first.x, first.y) == (2, 3)
    second = select_point(pred, get_metric("entropy"), rng, asked={(2, 3), (40, 40)})
    assert (second.x, second.y) == (3, 3)
    third = select_point(pred, get_metric("entropy"), rng, asked={(2, 3), (3, 3)})
    assert (third.x, third.y) == (2, 4)
    assert select_point(pred, get_metric("entropy"), rng, asked={(2, 3), (3, 3), (2, 4), (3, 4)}) is None


def test_select_points_crops_full_image_gt_and_keeps_order():
    height, width = 6, 8
    masks = {10: np.zeros((height, width), bool), 20: np.zeros((height, width), bool)}
    masks[10][1:3, 1:3] = True
    masks[20][3:6, 4:8] = True
    prob_map = torch.full((height, width), 0.6)
    preds = [PredictionSet(20, (4, 2), prob_map[None, 2:6, 4:8]),
             PredictionSet(10, (1, 1), prob_map[None, 1:3, 1:3]),
             PredictionSet(30, (0, 0), prob_map[None, 0:1, 0:1])]
    asked = {30: {(0, 0)}}
    gt_masks = masks | {30: masks[10]}
    points = select_points(preds, get_metric("max-error"), np.random.default_rng(0), asked, gt_masks)
    # annotation 20: the only background pixels of its grid are in row y=2 (error 0.6 vs 0.4 elsewhere)
    assert [p.ann_id for p in points] == [20, 10]  # 30 has no candidate left
    assert points[0].y == 2 and 4 <= points[0].x < 8
    assert points[0].uncertainty == pytest.approx(0.6)
    assert points[1].uncertainty == pytest.approx(0.4)
    repeat = select_points(preds, get_metric("max-error"), np.random.default_rng(0), asked, gt_masks)
    assert repeat == points
    with pytest.raises(ValueError, match="annotation 20 has more than one"):
        select_points(preds + preds[:1], get_metric("entropy"), np.random.default_rng(0))


def test_crop_to_grid_and_its_errors():
    mask = np.arange(20).reshape(4, 5) % 2 == 0
    pred = PredictionSet(4, (1, 2), torch.zeros(0, 2, 3))
    assert crop_to_grid(mask, pred).tolist() == mask[2:4, 1:4].astype(float).tolist()
    with pytest.raises(ValueError, match="annotation 4"):
        crop_to_grid(mask[:3], pred)


def test_combine_sets_concatenates_members():
    a = PredictionSet(2, (1, 1), torch.full((2, 2, 2), 0.3), torch.ones(2, 4), torch.tensor([0.9, 0.8]))
    b = PredictionSet(2, (1, 1), torch.full((1, 2, 2), 0.6), torch.zeros(1, 4), torch.tensor([0.5]))
    both = combine_sets(a, b, empty_set(2, (1, 1), 2, 2))
    assert both.k == 3
    assert both.probs[:, 0, 0].tolist() == pytest.approx([0.3, 0.3, 0.6])
    assert both.scores.tolist() == pytest.approx([0.9, 0.8, 0.5])
    assert both.boxes.tolist() == [[1.0] * 4, [1.0] * 4, [0.0] * 4]
    without_boxes = combine_sets(a, PredictionSet(2, (1, 1), torch.full((1, 2, 2), 0.6)))
    assert without_boxes.k == 3 and len(without_boxes.boxes) == 0 and len(without_boxes.scores) == 0
    assert combine_sets(empty_set(2, (1, 1), 2, 2), empty_set(2, (1, 1), 2, 2)).k == 0
    for other in (empty_set(3, (1, 1), 2, 2), empty_set(2, (0, 1), 2, 2), empty_set(2, (1, 1), 2, 3)):
        with pytest.raises(ValueError, match="combine_sets"):
            combine_sets(a, other)
    with pytest.raises(ValueError):
        combine_sets()


def test_metric_returning_nan_is_reported():
    class Broken(type(get_metric("entropy"))):
        name = "broken"

        def score(self, probs, gt=None):
            return torch.full(probs.shape[1:], float("nan"))

    with pytest.raises(ValueError, match="'broken' on annotation 5"):
        select_point(PredictionSet(5, (0, 0), torch.zeros(1, 2, 2)), Broken(), np.random.default_rng(0))


def test_documentation_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert blocks, "docs/strategies.md has no python examples"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), namespace)
