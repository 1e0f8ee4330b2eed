import math

import numpy as np
import pytest
import torch

from apis.active.selection import select_point
from apis.active.strategies import (
    ENTROPY_EPS,
    PointMetric,
    available_metrics,
    get_metric,
    register_metric,
)
from apis.structures import PredictionSet

BUILT_IN = ["bald", "entropy", "least-entropy", "least-error", "max-error", "random", "variance"]


def hand_entropy(p: float) -> float:
    return -p * math.log(p) - (1 - p) * math.log(1 - p)


def assert_grid(got: torch.Tensor, expected) -> None:
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)


def stack(*maps) -> torch.Tensor:
    return torch.tensor(maps, dtype=torch.float64)


def test_entropy_of_averaged_prediction_matches_hand_computation():
    probs = stack([[0.1, 0.5], [0.9, 0.3]], [[0.3, 0.5], [0.7, 0.5]])  # mean [[0.2, 0.5], [0.8, 0.4]]
    expected = [[hand_entropy(0.2), hand_entropy(0.5)], [hand_entropy(0.8), hand_entropy(0.4)]]
    assert_grid(get_metric("entropy").score(probs), expected)
    point = select_point(PredictionSet(1, (0, 0), probs), get_metric("entropy"), np.random.default_rng(0))
    assert (point.x, point.y) == (1, 0)
    assert point.uncertainty == pytest.approx(math.log(2), abs=1e-12)


def test_entropy_is_finite_for_saturated_probabilities():
    probs = stack([[0.0, 1.0]])
    got = get_metric("entropy").score(probs)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, torch.full((1, 2), hand_entropy(ENTROPY_EPS), dtype=torch.float64))


def test_variance_is_population_variance_by_hand():
    probs = stack([[0.0, 0.5], [0.2, 0.9]], [[0.6, 0.5], [0.2, 0.9]], [[0.3, 0.5], [0.8, 0.9]])
    # (0,0): values 0, .6, .3, mean .3 -> (.09 + .09 + 0) / 3; (1,0): .2, .2, .8, mean .4 -> (.04+.04+.16) / 3
    expected = [[0.06, 0.0], [0.08, 0.0]]
    assert_grid(get_metric("variance").score(probs), expected)
    point = select_point(PredictionSet(1, (0, 0), probs), get_metric("variance"), np.random.default_rng(0))
    assert (point.x, point.y, point.fallback) == (0, 1, None)
    # entropy would pick the 0.5 pixel instead: the two metrics really differ here
    entropy_point = select_point(PredictionSet(1, (0, 0), probs), get_metric("entropy"),
                                 np.random.default_rng(0))
    assert (entropy_point.x, entropy_point.y) == (1, 0)


def test_variance_with_single_prediction_falls_back_to_entropy():
    probs = stack([[0.2, 0.45], [0.9, 0.7]])
    metric = get_metric("variance")
    assert_grid(metric.score(probs),
                [[hand_entropy(0.2), hand_entropy(0.45)], [hand_entropy(0.9), hand_entropy(0.7)]])
    point = select_point(PredictionSet(1, (0, 0), probs), metric, np.random.default_rng(0))
    assert (point.x, point.y, point.fallback) == (1, 0, "single-prediction-entropy")


def test_bald_is_entropy_of_mean_minus_mean_entropy_by_hand():
    # (0,0): members 0.1 and 0.9 disagree, each confident: H(.5) - H(.1) (entropy is symmetric);
    # (0,1): members agree at 0.5: H(.5) - H(.5) = 0 although the entropy is the largest possible;
    # (1,0): 0.2 and 0.6 -> H(.4) - (H(.2) + H(.6)) / 2; (1,1): both 0.99 -> 0.
    probs = stack([[0.1, 0.5], [0.2, 0.99]], [[0.9, 0.5], [0.6, 0.99]])
    expected = [[hand_entropy(0.5) - hand_entropy(0.1), 0.0],
                [hand_entropy(0.4) - (hand_entropy(0.2) + hand_entropy(0.6)) / 2, 0.0]]
    metric = get_metric("bald")
    assert_grid(metric.score(probs), expected)
    point = select_point(PredictionSet(1, (0, 0), probs), metric, np.random.default_rng(0))
    assert (point.x, point.y, point.fallback) == (0, 0, None)
    assert point.uncertainty == pytest.approx(expected[0][0], abs=1e-12)
    # entropy of the mean is 0.693 at both (0,0) and (0,1); BALD tells the disagreement apart
    entropy_scores = get_metric("entropy").score(probs)
    assert entropy_scores[0, 0].item() == pytest.approx(entropy_scores[0, 1].item(), abs=1e-12)


def test_bald_with_single_prediction_falls_back_to_entropy():
    probs = stack([[0.2, 0.45], [0.9, 0.7]])
    metric = get_metric("bald")
    assert_grid(metric.score(probs),
                [[hand_entropy(0.2), hand_entropy(0.45)], [hand_entropy(0.9), hand_entropy(0.7)]])
    point = select_point(PredictionSet(1, (0, 0), probs), metric, np.random.default_rng(0))
    assert (point.x, point.y, point.fallback) == (1, 0, "single-prediction-entropy")


def test_least_entropy_picks_most_confident_and_reports_entropy():
    probs = stack([[0.5, 0.95], [0.3, 0.6]])
    metric = get_metric("least-entropy")
    assert_grid(metric.score(probs),
                [[-hand_entropy(0.5), -hand_entropy(0.95)], [-hand_entropy(0.3), -hand_entropy(0.6)]])
    point = select_point(PredictionSet(1, (0, 0), probs), metric, np.random.default_rng(0))
    assert (point.x, point.y) == (1, 0)
    assert point.uncertainty == pytest.approx(hand_entropy(0.95), abs=1e-12)
    assert point.score == pytest.approx(-hand_entropy(0.95), abs=1e-12)


def test_max_and_least_error_against_gt_grid():
    probs = stack([[0.8, 0.1], [0.7, 0.4]], [[1.0, 0.3], [0.5, 0.4]])  # mean [[0.9, 0.2], [0.6, 0.4]]
    gt = torch.tensor([[1, 1], [0, 0]])
    # errors |mean - gt|: [[0.1, 0.8], [0.6, 0.4]]
    assert_grid(get_metric("max-error").score(probs, gt), [[0.1, 0.8], [0.6, 0.4]])
    rng = np.random.default_rng(0)
    worst = select_point(PredictionSet(1, (0, 0), probs), get_metric("max-error"), rng, gt=gt)
    best = select_point(PredictionSet(1, (0, 0), probs), get_metric("least-error"), rng, gt=gt)
    assert (worst.x, worst.y, worst.uncertainty) == (1, 0, pytest.approx(0.8, abs=1e-12))
    assert (best.x, best.y, best.uncertainty) == (0, 0, pytest.approx(0.1, abs=1e-12))


def test_gt_metrics_declare_and_require_gt():
    assert {name for name in BUILT_IN if get_metric(name).needs_gt} == {"max-error", "least-error"}
    pred = PredictionSet(1, (0, 0), stack([[0.5, 0.2]]))
    with pytest.raises(ValueError, match="max-error"):
        select_point(pred, get_metric("max-error"), np.random.default_rng(0))
    with pytest.raises(ValueError, match="gt shape"):
        select_point(pred, get_metric("max-error"), np.random.default_rng(0), gt=torch.zeros(2, 2))


class TopLeftFirst(PointMetric):
    """Test metric: prefers pixels close to the grid's top-left corner."""

    name = "test-top-left-first"

    def score(self, probs, gt=None):
        h, w = probs.shape[1:]
        rows = torch.arange(h, dtype=probs.dtype)[:, None]
        cols = torch.arange(w, dtype=probs.dtype)[None, :]
        return -(rows * w + cols)


def test_user_metric_registers_and_drives_selection():
    assert register_metric(TopLeftFirst) is TopLeftFirst
    assert register_metric(TopLeftFirst) is TopLeftFirst  # re-registering the same class is harmless
    redefined = type("TopLeftFirst", (TopLeftFirst,),
                     {"__module__": __name__, "__qualname__": "TopLeftFirst"})
    assert register_metric(redefined) is redefined  # so is redefining it (a re-run notebook cell)
    assert isinstance(get_metric("test-top-left-first"), redefined)
    assert "test-top-left-first" in available_metrics()
    metric = get_metric("test-top-left-first")
    assert isinstance(metric, TopLeftFirst)
    pred = PredictionSet(7, (3, 4), torch.full((2, 2, 3), 0.5))
    point = select_point(pred, metric, np.random.default_rng(0), asked={(3, 4)})
    assert (point.ann_id, point.x, point.y, point.metric) == (7, 4, 4, "test-top-left-first")


def test_registry_rejects_clashes_and_non_metrics():
    class Impostor(PointMetric):
        name = "entropy"

    with pytest.raises(ValueError, match="already registered"):
        register_metric(Impostor)
    with pytest.raises(TypeError):
        register_metric(int)

    class Nameless(PointMetric):
        pass

    with pytest.raises(ValueError, match="non-empty"):
        register_metric(Nameless)


def test_unknown_metric_lists_the_available_names():
    with pytest.raises(ValueError, match="unknown point metric 'entropi'") as error:
        get_metric("entropi")
    for name in BUILT_IN:
        assert name in str(error.value)
    assert set(BUILT_IN) <= set(available_metrics())
