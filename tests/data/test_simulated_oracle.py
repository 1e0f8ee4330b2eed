import numpy as np
import pytest

from apis.active.oracle import Oracle
from apis.data.simulated_oracle import SimulatedOracle


def masks():
    a = np.zeros((4, 6), bool)
    a[1:3, 2:5] = True  # rows 1-2, columns 2-4
    return {7: a, 8: ~a}


def answers(oracle, points):
    return [oracle.answer(ann_id, x, y) for ann_id, x, y in points]


def test_answer_is_mask_at_row_y_column_x_and_costs_time():
    oracle = SimulatedOracle(masks().__getitem__)
    assert isinstance(oracle, Oracle) and oracle.name == "simulated-oracle"
    assert oracle.answer(7, 4, 2) == 1
    assert oracle.answer(7, 2, 4 - 1) == 0  # (x=2, y=3): row 3 is outside the object
    assert oracle.answer(7, 1, 1) == 0
    assert oracle.answer(8, 1, 1) == 1
    assert oracle.questions == 4
    assert oracle.spent_s == pytest.approx(4 * 0.9)


def test_cost_per_question_is_configurable():
    oracle = SimulatedOracle(masks().__getitem__, point_cost_s=2.0)
    assert answers(oracle, [(7, 2, 1), (7, 5, 1), (8, 2, 1)]) == [1, 0, 0]
    assert (oracle.questions, oracle.spent_s) == (3, pytest.approx(6.0))


def test_flip_prob_one_inverts_every_answer():
    truthful = SimulatedOracle(masks().__getitem__)
    liar = SimulatedOracle(masks().__getitem__, flip_prob=1.0)
    points = [(7, x, y) for y in range(4) for x in range(6)]
    assert answers(liar, points) == [1 - label for label in answers(truthful, points)]


def test_unsure_rate_one_answers_minus_one_and_still_costs():
    oracle = SimulatedOracle(masks().__getitem__, unsure_rate=1.0, flip_prob=1.0)
    assert answers(oracle, [(7, 3, 1), (7, 0, 0)]) == [-1, -1]
    assert (oracle.questions, oracle.spent_s) == (2, pytest.approx(1.8))


def test_noise_is_seeded_and_near_its_rate():
    points = [(7, 3, 1)] * 2000
    first = answers(SimulatedOracle(masks().__getitem__, flip_prob=0.3, seed=5), points)
    second = answers(SimulatedOracle(masks().__getitem__, flip_prob=0.3, seed=5), points)
    assert first == second
    flipped = first.count(0) / len(points)
    assert 0.25 < flipped < 0.35  # binomial sd ~0.01


def test_bad_input_is_rejected():
    oracle = SimulatedOracle(masks().__getitem__)
    with pytest.raises(ValueError, match="annotation 7: point \\(x=6, y=0\\)"):
        oracle.answer(7, 6, 0)
    with pytest.raises(ValueError, match="annotation 7"):
        oracle.answer(7, 0, -1)
    assert oracle.questions == 0
    with pytest.raises(ValueError, match="flip_prob"):
        SimulatedOracle(masks().__getitem__, flip_prob=1.5)
    with pytest.raises(ValueError, match="unsure_rate"):
        SimulatedOracle(masks().__getitem__, unsure_rate=-0.1)
