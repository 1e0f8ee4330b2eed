"""Inference pieces: detection selection, box-grid sampling and mask pasting, by hand."""

import math

import pytest
import torch

from apis.data.coords import box_pixel_range
from apis.modeling.postprocess import paste_masks, sample_box_grid, select_detections, to_original_boxes

LOGITS = [[0.0, 1.0, -2.0, 3.0],
          [4.0, -1.0, 0.5, 2.0],
          [-3.0, 2.5, 1.5, -0.5]]


def _selection_inputs():
    """Three locations (two at stride 8, one at stride 16), two classes, centreness 0.5 everywhere.

    cls * ctr: loc0 (0.4, 0.01), loc1 (0.3, 0.15), loc2 (0.005, 0.25). Boxes (clipped to 20 x 20):
    loc0 [0, 0, 12, 12], loc1 [4, 0, 20, 12], loc2 [0, 0, 16, 16]. IoU(loc0, loc1) = 96 / 240 = 0.4,
    IoU(loc1, loc2) = 144 / 304 = 0.47.
    """
    probabilities = torch.tensor([[0.8, 0.02], [0.6, 0.3], [0.01, 0.5]])
    return dict(class_logits=torch.logit(probabilities), centreness_logits=torch.zeros(3),
                box_regression=torch.tensor([[1.0] * 4, [1.0] * 4, [0.5] * 4]),
                locations=torch.tensor([[4.0, 4.0], [12.0, 4.0], [8.0, 8.0]]), levels=torch.tensor([0, 0, 1]),
                strides=(8, 16), image_size=(20, 20), score_threshold=0.05)


def test_select_detections_thresholds_scores_and_sorts():
    found = select_detections(**_selection_inputs(), pre_nms_top_k=1000, nms_threshold=0.6, max_detections=3)
    assert found.scores.tolist() == pytest.approx([math.sqrt(0.4), math.sqrt(0.3), math.sqrt(0.25)], rel=1e-5)
    assert found.locations.tolist() == [0, 1, 2]
    assert found.labels.tolist() == [0, 0, 1]
    assert found.boxes.tolist() == [[0, 0, 12, 12], [4, 0, 20, 12], [0, 0, 16, 16]]


def test_select_detections_nms_is_class_aware():
    found = select_detections(**_selection_inputs(), pre_nms_top_k=1000, nms_threshold=0.3, max_detections=100)
    # class 0: loc1 overlaps loc0 by 0.4 > 0.3 -> removed; class 1: loc1 overlaps loc2 by 0.47 -> removed.
    assert list(zip(found.locations.tolist(), found.labels.tolist())) == [(0, 0), (2, 1)]


def test_select_detections_top_k_per_level():
    found = select_detections(**_selection_inputs(), pre_nms_top_k=1, nms_threshold=0.6, max_detections=100)
    assert list(zip(found.locations.tolist(), found.labels.tolist())) == [(0, 0), (2, 1)]


def test_to_original_boxes_scales_and_clips():
    boxes = torch.tensor([[2.0, 3.0, 10.0, 30.0]])
    assert to_original_boxes(boxes, (0.5, 2.0), (12, 30)).tolist() == [[4.0, 1.5, 20.0, 12.0]]


def test_sample_box_grid_matches_manual_bilinear(manual_bilinear):
    # Original image 20 x 28, resized by 0.5 -> 10 x 14, padded to the 12 x 16 frame of the stride-4 map.
    logits = torch.tensor([LOGITS, [[2 * v for v in row] for row in LOGITS]])
    box = (3.2, 5.0, 17.9, 11.0)
    scale = (0.5, 0.5)
    origin, grid = sample_box_grid(logits, 4, box, scale, (20, 28))
    xs, ys, xe, ye = box_pixel_range(*box, 28, 20)
    assert origin == (xs, ys) == (3, 5)
    assert grid.shape == (2, ye - ys, xe - xs) == (2, 6, 15)
    for i in range(ye - ys):
        for j in range(xe - xs):
            x, y = (xs + j + 0.5) * scale[0], (ys + i + 0.5) * scale[1]
            assert grid[0, i, j].item() == pytest.approx(manual_bilinear(LOGITS, x, y, 4), abs=1e-5)
            assert grid[1, i, j].item() == pytest.approx(2 * manual_bilinear(LOGITS, x, y, 4), abs=1e-5)


def test_sample_box_grid_without_members():
    origin, grid = sample_box_grid(torch.zeros(0, 3, 4), 4, (1.0, 1.0, 5.0, 3.0), (1.0, 1.0), (12, 16))
    assert origin == (1, 1) and grid.shape == (0, 2, 4)


def test_paste_masks_thresholds_inside_the_box_only(manual_bilinear):
    logits = torch.tensor([LOGITS, [[5.0] * 4] * 3])
    boxes = torch.tensor([[0.0, 0.0, 16.0, 12.0], [2.2, 3.0, 7.6, 9.4]])
    masks = paste_masks(logits, 4, boxes, (1.0, 1.0), (12, 16), threshold=0.5)
    assert masks.shape == (2, 12, 16) and masks.dtype == torch.bool
    # Whole-image box: on where the interpolated logit is positive.
    for y in range(12):
        for x in range(16):
            value = manual_bilinear(LOGITS, x + 0.5, y + 0.5, 4)
            if abs(value) > 1e-4:  # the sign at an exact zero crossing is a rounding matter
                assert bool(masks[0, y, x]) == (value > 0)
    # Everywhere-positive logits: exactly the pixels whose centre lies in the box.
    expected = torch.zeros(12, 16, dtype=torch.bool)
    expected[3:9, 2:8] = True  # centres 2.5..7.5 in [2.2, 7.6], 3.5..8.5 in [3.0, 9.4]
    assert torch.equal(masks[1], expected)
