"""The point constraint on hand-made probability maps: answered points are honoured, and only near them."""

import numpy as np
import pytest

from apis.active.point_constraint import constrain_mask, contradicted, point_threshold


def ramp(height=9, width=20):
    """Probabilities rising left to right: column c has p = (c + 0.5) / width, so the model's mask (p > 0.5)
    is the right half, columns 10..19."""
    return np.tile((np.arange(width) + 0.5) / width, (height, 1))


def test_none_is_the_model_mask_and_counts_what_it_contradicts():
    probs = ramp()
    points, labels = np.array([[3, 4], [15, 4], [12, 1]]), np.array([1, 1, 0])
    mask = constrain_mask(probs, points, labels, "none")
    assert np.array_equal(mask, probs > 0.5)
    assert contradicted(mask, points, labels) == 2  # the yes at column 3 and the no at column 12


def test_local_honours_a_yes_outside_and_leaves_far_pixels_alone():
    probs = ramp()
    mask = constrain_mask(probs, np.array([[7, 4]]), np.array([1]), "local")
    assert mask[4, 7] and contradicted(mask, np.array([[7, 4]]), np.array([1])) == 0
    # The correction grows from the point: columns 7..9 of its row join, the far left stays out, the model's
    # right half is untouched.
    assert mask[4, 7:].all() and not mask[:, :4].any()
    assert np.array_equal(mask[:, 10:], probs[:, 10:] > 0.5)
    # Rows far from the point (sigma is 0.1 of the mean side, 1.45 px here) keep the model's outline.
    assert np.array_equal(mask[0], probs[0] > 0.5) and np.array_equal(mask[8], probs[8] > 0.5)


def test_local_honours_a_no_inside():
    probs = ramp()
    mask = constrain_mask(probs, np.array([[12, 4]]), np.array([0]), "local")
    assert not mask[4, 10:13].any() and mask[4, 16:].all()
    assert np.array_equal(mask[0], probs[0] > 0.5)


def test_points_the_model_already_agrees_with_change_nothing():
    probs = ramp()
    points, labels = np.array([[15, 4], [2, 2]]), np.array([1, 0])
    for method in ("local", "threshold"):
        assert np.array_equal(constrain_mask(probs, points, labels, method), probs > 0.5)


def test_conflicting_neighbours_both_win_at_their_own_pixel():
    probs = np.full((5, 5), 0.5)
    points, labels = np.array([[2, 2], [3, 2]]), np.array([1, 0])
    for method in ("local", "threshold"):
        mask = constrain_mask(probs, points, labels, method)
        assert mask[2, 2] and not mask[2, 3]


def test_threshold_moves_the_whole_outline_to_the_closest_agreeing_threshold():
    probs = ramp()
    # A yes at p = 0.325 (column 6): the closest threshold below it that keeps every no below is just under 0.325.
    mask = constrain_mask(probs, np.array([[6, 4], [1, 4]]), np.array([1, 0]), "threshold")
    assert np.array_equal(mask, probs >= 0.325)


def test_point_threshold_by_hand():
    # No threshold separates a yes at 0.3 from a no at 0.6; 0.5 contradicts both, 0.3- or 0.6 contradict one.
    assert point_threshold(np.array([0.3, 0.6]), np.array([1, 0])) == pytest.approx(0.6)
    # Separable: yes at 0.7, no at 0.2: 0.5 already works.
    assert point_threshold(np.array([0.7, 0.2]), np.array([1, 0])) == 0.5
    # A no at 0.8 and a yes at 0.9: t in [0.8, 0.9); 0.8 is the closest to 0.5.
    assert point_threshold(np.array([0.8, 0.9]), np.array([0, 1])) == pytest.approx(0.8)
    # No points: the model's own threshold.
    assert point_threshold(np.zeros(0), np.zeros(0)) == 0.5


@pytest.mark.parametrize("method", ["local", "threshold"])
def test_every_answer_is_honoured_on_random_maps(method):
    rng = np.random.default_rng(0)
    for _ in range(50):
        height, width = rng.integers(1, 30, size=2)
        probs = rng.random((height, width))
        count = int(rng.integers(0, 8))
        points = np.stack([rng.integers(0, width, count), rng.integers(0, height, count)], axis=1)
        points = np.unique(points, axis=0)
        labels = rng.integers(0, 2, len(points))
        assert contradicted(constrain_mask(probs, points, labels, method), points, labels) == 0


@pytest.mark.parametrize("points, labels, message", [
    (np.array([[20, 0]]), np.array([1]), "outside"),
    (np.array([[1, 1]]), np.array([-1]), "unsure"),
    (np.array([[1, 1]]), np.array([1, 0]), "labels"),
])
def test_bad_points_are_refused(points, labels, message):
    with pytest.raises(ValueError, match=message):
        constrain_mask(ramp(), points, labels)


def test_an_unknown_method_is_refused():
    with pytest.raises(ValueError, match="local, threshold, none"):
        constrain_mask(ramp(), np.zeros((0, 2)), np.zeros(0), "bogus")
