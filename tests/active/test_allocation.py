import math

import numpy as np
import pytest
import torch

from apis.active.allocation import allocate, ranked_points
from apis.active.strategies import get_metric
from apis.structures import PredictionSet

ENTROPY = get_metric("entropy")


def instance(ann_id, rows, origin=(10, 20)) -> PredictionSet:
    """One member's map of an instance, given row by row."""
    return PredictionSet(ann_id, origin, torch.tensor([rows], dtype=torch.float64))


def test_ranked_points_are_best_first_and_keep_their_distance():
    # One row: entropy is highest at 0.5, then 0.45 / 0.55 (equal entropy), then 0.3, 0.9.
    pred = instance(1, [[0.5, 0.45, 0.3, 0.55, 0.9]])
    close = ranked_points(pred, ENTROPY, np.random.default_rng(0), max_points=3, min_distance=0.0)
    assert [(p.x, p.y) for p in close][0] == (10, 20)
    assert {(p.x, p.y) for p in close[1:]} == {(11, 20), (13, 20)}  # the tie, in seeded order
    assert [p.score for p in close] == sorted((p.score for p in close), reverse=True)
    apart = ranked_points(pred, ENTROPY, np.random.default_rng(0), max_points=3, min_distance=2.0)
    # 0.45 at column 1 is 1 pixel from the first point: skipped; 0.55 at column 3 is 3 away: taken; 0.3 at
    # column 2 and 0.9 at column 4 are 1 away from column 3: skipped. Only two points keep their distance.
    assert [(p.x, p.y) for p in apart] == [(10, 20), (13, 20)]


def test_the_distance_is_euclidean_on_the_diagonal_too():
    """Rows and columns both count: the second best pixel is one row and one column away, sqrt(2) < 2 pixels, so it
    is skipped; the third is two rows and one column away, sqrt(5) >= 2, and taken."""
    pred = instance(1, [[0.5, 0.9, 0.9], [0.9, 0.48, 0.9], [0.9, 0.45, 0.9]])
    points = ranked_points(pred, ENTROPY, np.random.default_rng(0), max_points=2, min_distance=2.0)
    assert [(p.x, p.y) for p in points] == [(10, 20), (11, 22)]
    # At a distance of 1.4 the diagonal neighbour (1.414 away) keeps its distance.
    points = ranked_points(pred, ENTROPY, np.random.default_rng(0), max_points=2, min_distance=1.4)
    assert [(p.x, p.y) for p in points] == [(10, 20), (11, 21)]


def test_ranked_points_leave_out_asked_pixels_and_stop_at_max_points():
    pred = instance(1, [[0.5, 0.5], [0.5, 0.5]])
    points = ranked_points(pred, ENTROPY, np.random.default_rng(0), max_points=2, min_distance=0.0,
                           asked={(10, 20), (11, 21)})
    assert {(p.x, p.y) for p in points} == {(11, 20), (10, 21)}
    assert ranked_points(pred, ENTROPY, np.random.default_rng(0), 2, 0.0,
                         asked={(10, 20), (11, 20), (10, 21), (11, 21)}) == []
    with pytest.raises(ValueError, match="max_points"):
        ranked_points(pred, ENTROPY, np.random.default_rng(0), 0, 0.0)


def test_empty_set_offers_one_random_point_that_is_served_first():
    empty = PredictionSet(7, (0, 0), torch.zeros(0, 3, 3))
    (point,) = ranked_points(empty, ENTROPY, np.random.default_rng(0), max_points=4, min_distance=0.0)
    assert point.fallback == "empty-set" and math.isnan(point.score)
    sure = ranked_points(instance(8, [[0.5]]), ENTROPY, np.random.default_rng(0), 4, 0.0)
    assert allocate([sure, [point]], budget=1, rng=np.random.default_rng(0)) == [point]


def test_global_budget_goes_to_the_hard_instance_and_skips_the_confident_one():
    confident = instance(1, [[0.99, 0.01, 0.98]])  # entropies 0.056, 0.056, 0.098
    hard = instance(2, [[0.5, 0.9, 0.45, 0.5]])  # 0.693, 0.325, 0.688, 0.693
    medium = instance(3, [[0.8, 0.2, 0.7]])  # 0.500, 0.500, 0.611
    rng = np.random.default_rng(0)
    ranked = [ranked_points(p, ENTROPY, rng, max_points=3, min_distance=2.0) for p in (confident, hard, medium)]
    # hard: 0.5 at columns 0 and 3 (3 apart) then 0.45 at column 2 is 1 from column 3: skipped, 0.9 at 1: skipped
    assert sorted((p.x, p.y) for p in ranked[1]) == [(10, 20), (13, 20)]
    chosen = allocate(ranked, budget=3, rng=np.random.default_rng(0))
    # Three instances, three points: hard's two 0.693 and medium's 0.611; the confident instance gets none.
    assert [(p.ann_id, p.x) for p in chosen] == [(2, ranked[1][0].x), (2, ranked[1][1].x), (3, 12)]
    assert sum(p.ann_id == 1 for p in chosen) == 0
    # Per instance order is kept, and a budget larger than the pool returns all of it.
    assert len(allocate(ranked, budget=100, rng=np.random.default_rng(0))) == sum(map(len, ranked))
    assert allocate(ranked, budget=0, rng=np.random.default_rng(0)) == []


def test_allocation_is_seeded_and_uniform_over_ties_with_random_metric():
    preds = [instance(a, [[0.5, 0.5, 0.5]]) for a in range(4)]
    metric = get_metric("random")

    def run(seed):
        rng = np.random.default_rng(seed)
        ranked = [ranked_points(p, metric, rng, 2, 0.0) for p in preds]
        return [(p.ann_id, p.x) for p in allocate(ranked, 4, rng)]

    assert run(3) == run(3)
    counts = np.zeros(4)
    for seed in range(200):
        for ann_id, _ in run(seed):
            counts[ann_id] += 1
    assert counts.sum() == 800 and counts.min() > 150  # every instance gets its share (expected 200)


def test_several_questions_of_one_instance_in_one_step_are_posted_answered_and_merged(tmp_path):
    from apis.data.questions import PointToAsk, QuestionQueue

    with QuestionQueue(tmp_path / "ledger.sqlite") as queue:
        queue.register_instances([(5, 1, (0.0, 0.0, 8.0, 8.0), 10, 10)])
        asked = [PointToAsk(5, 1, 2, 3, "entropy"), PointToAsk(5, 1, 6, 6, "entropy")]
        assert queue.post(1, asked) == 2
        for question, label in zip(queue.questions(1), (1, 0)):
            queue.answer("ann", question.id, label, seconds=1.5)
        assert queue.merge(1) == 2
        points = queue.points(max_step=1)[5]
        assert points.coords.tolist() == [[2, 3], [6, 6]] and points.labels.tolist() == [1, 0]
        assert queue.total_cost_s(max_step=1) == pytest.approx(3.0)
