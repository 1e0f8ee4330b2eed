"""AFIS: budget arithmetic and the scorers by hand (tests/loop/test_bought_masks.py runs it)."""

import math

import numpy as np
import pytest
import torch

from apis.active.afis import (
    NO_PREDICTION_ENTROPY,
    buy,
    cumulative_budget_s,
    detection_loss,
    instance_score,
    mean_box_entropy,
    rank,
)
from apis.structures import PredictionSet


def hand_entropy(p: float) -> float:
    return -p * math.log(p) - (1 - p) * math.log(1 - p)


def test_budget_buys_the_masks_of_the_points_seconds_and_carries_the_rest_over():
    """100 instances, 0.9 s a point, 79.2 s a mask (88 points): by step s APIS spent (s + 1) * 90 s, so AFIS owns
    floor((s + 1) * 90 / 79.2) masks: 1, 2, 3, 4, 5, 6, 7, 9, 10; step 7 buys two with the carried seconds."""
    assert 79.2 / 0.9 == pytest.approx(88)
    owned, per_step = 0, []
    for step in range(9):
        budget = cumulative_budget_s(100, 0.9, step) - owned * 79.2
        bought = buy([(f"instance {k}", 1) for k in range(100)], budget, 79.2)
        owned += len(bought)
        per_step.append(len(bought))
    assert cumulative_budget_s(100, 0.9, 8) == pytest.approx(810.0)
    assert per_step == [1, 1, 1, 1, 1, 1, 1, 2, 1] and owned == 10


def test_image_level_buys_whole_images_in_order_and_stops_at_the_first_that_does_not_fit():
    # Images holding 3, 1 and 2 instances, 4 masks' worth of seconds: the first two (4 masks), not the third.
    assert buy([("a", 3), ("b", 1), ("c", 2)], 4 * 79.2, 79.2) == ["a", "b"]
    # 3 then 2 instances: "b" does not fit in what is left (1 mask), and the purchase ends there, although "c"
    # would fit: order is kept and the seconds carry over.
    assert buy([("a", 3), ("b", 2), ("c", 1)], 4 * 79.2, 79.2) == ["a"]
    assert buy([("a", 1)], 79.1, 79.2) == []


def test_mean_box_entropy_by_hand():
    probs = torch.tensor([[[0.2, 0.5]], [[0.4, 0.5]]], dtype=torch.float64)  # mean [[0.3, 0.5]]
    pred = PredictionSet(1, (0, 0), probs)
    assert mean_box_entropy(pred) == pytest.approx((hand_entropy(0.3) + hand_entropy(0.5)) / 2, abs=1e-12)
    assert instance_score("mean-entropy", pred, (0, 0, 2, 1)) == mean_box_entropy(pred)
    assert mean_box_entropy(PredictionSet(1, (0, 0), torch.zeros(0, 1, 2))) == NO_PREDICTION_ENTROPY


def test_detection_loss_is_the_mean_giou_loss_of_the_members_by_hand():
    # GT (0, 0, 10, 10). Member 1: the same box, loss 0. Member 2: (0, 0, 10, 5), IoU 1/2 and the enclosing box
    # is the union: loss 1/2. Member 3: (20, 0, 30, 10), IoU 0, union 200, enclosing 300: GIoU -1/3, loss 4/3.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0], [20.0, 0.0, 30.0, 10.0]])
    pred = PredictionSet(1, (0, 0), torch.full((3, 10, 10), 0.5), boxes=boxes, scores=torch.ones(3))
    assert detection_loss(pred, (0.0, 0.0, 10.0, 10.0)) == pytest.approx((0 + 0.5 + 4 / 3) / 3, abs=1e-9)
    assert instance_score("min-det-loss", pred, (0.0, 0.0, 10.0, 10.0)) == pytest.approx(-(0 + 0.5 + 4 / 3) / 3)
    assert detection_loss(PredictionSet(1, (0, 0), torch.zeros(0, 2, 2)), (0, 0, 2, 2)) == 2.0


def test_rank_is_highest_first_with_seeded_ties():
    scores = {"a": 0.1, "b": 0.9, "c": 0.5, "d": 0.5}
    orders = {tuple(rank(scores, np.random.default_rng(seed))) for seed in range(20)}
    assert orders == {("b", "c", "d", "a"), ("b", "d", "c", "a")}
    assert rank(scores, np.random.default_rng(3)) == rank(scores, np.random.default_rng(3))
