"""The records shared between layers check what they are given."""

import pytest
import torch

from apis.structures import PredictionSet


@pytest.mark.parametrize("kwargs, message", [
    (dict(probs=torch.zeros(2, 2)), "probs must be"),
    (dict(probs=torch.full((1, 2, 2), 1.5)), r"\[0, 1\]"),
    (dict(probs=torch.full((1, 2, 2), float("nan"))), r"\[0, 1\]"),
    (dict(probs=torch.zeros(1, 2, 2), boxes=torch.zeros(2, 4)), "boxes"),
    (dict(probs=torch.zeros(1, 2, 2), scores=torch.zeros(3)), "scores"),
    (dict(probs=torch.zeros(1, 2, 2), origin=(-1, 0)), "origin"),
])
def test_prediction_set_rejects_bad_input(kwargs, message):
    arguments = dict(ann_id=99, origin=(0, 0)) | kwargs
    with pytest.raises(ValueError, match=message) as error:
        PredictionSet(**arguments)
    assert "annotation 99" in str(error.value)


def test_prediction_set_grid_by_hand():
    pred = PredictionSet(5, (3, 2), torch.full((4, 2, 6), 0.5), boxes=torch.zeros(4, 4), scores=torch.ones(4))
    assert (pred.k, pred.grid_shape, pred.grid_range) == (4, (2, 6), (3, 2, 9, 4))
    assert PredictionSet(5, (3.0, 2.0), torch.zeros(0, 1, 1)).origin == (3, 2)  # integral floats become ints
