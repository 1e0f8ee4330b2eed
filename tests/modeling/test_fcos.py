"""FCOS target assignment and losses against hand-derived expectations."""

import math

import pytest
import torch

from apis.modeling.fcos import (
    FCOSHead,
    assign_locations,
    centreness_targets,
    fcos_losses,
    group_norm,
    level_locations,
)

STRIDES = (8, 16, 32, 64, 128)
SIZE_RANGES = [0, 64, 128, 256, 512, math.inf]


def _locations(height, width):
    sizes = [(math.ceil(height / s), math.ceil(width / s)) for s in STRIDES]
    return level_locations(sizes, STRIDES, torch.device("cpu"))


def _positives(gt_index, locations, levels, g):
    """{(level, x, y)} of the locations assigned to GT ``g``."""
    chosen = torch.nonzero(gt_index == g).squeeze(1)
    return {(int(levels[i]), float(locations[i, 0]), float(locations[i, 1])) for i in chosen}


def test_level_locations_are_cell_centres():
    locations, levels = level_locations([(2, 3), (1, 2)], (8, 16), torch.device("cpu"))
    expected = [(4, 4), (12, 4), (20, 4), (4, 12), (12, 12), (20, 12), (8, 8), (24, 8)]
    assert locations.tolist() == [list(map(float, p)) for p in expected]
    assert levels.tolist() == [0] * 6 + [1] * 2


def test_centre_sampling_radius_limits_positives():
    # Box centre (30, 30); at stride 8 the centre region is (30 +- 12) = (18, 42), strictly inside:
    # level-0 locations 8j + 4 in that range are 20, 28, 36 -> a 3 x 3 block. max distance <= 64 everywhere.
    locations, levels = _locations(64, 64)
    gt_index, ltrb = assign_locations(locations, levels, torch.tensor([[0.0, 0.0, 60.0, 60.0]]), STRIDES,
                                      SIZE_RANGES, radius=1.5)
    expected = {(0, float(x), float(y)) for x in (20, 28, 36) for y in (20, 28, 36)}
    assert _positives(gt_index, locations, levels, 0) == expected
    assert int((gt_index >= 0).sum()) == 9
    at = torch.nonzero((locations[:, 0] == 20) & (locations[:, 1] == 36) & (levels == 0)).item()
    assert ltrb[at].tolist() == [20.0, 36.0, 40.0, 24.0]
    assert (ltrb[gt_index < 0] == 0).all()


def test_radius_changes_the_region():
    locations, levels = _locations(64, 64)
    box = torch.tensor([[0.0, 0.0, 60.0, 60.0]])
    # radius 0.5 at stride 8: (26, 34) contains only 28.
    gt_index, _ = assign_locations(locations, levels, box, STRIDES, SIZE_RANGES, radius=0.5)
    assert _positives(gt_index, locations, levels, 0) == {(0, 28.0, 28.0)}


def test_size_ranges_pick_the_level():
    # Box [0, 200]^2, centre 100. Level 0 (radius 12 -> 92, 100, 108): max distance >= 92 > 64, rejected.
    # Level 1 (radius 24 -> 88, 104, 120): max distances 104..112, inside [64, 128]: 9 positives.
    # Level 2 (radius 48 -> 80, 112, 144): max distance max(x, y, 200 - x, 200 - y) is 144 in [128, 256]
    # when x or y is 144 (5 locations), and 112 or 120 < 128 otherwise.
    # Level 3 (radius 96 -> 64j + 32 for 32, 96, 160): max distance <= 168 < 256, rejected.
    locations, levels = _locations(256, 256)
    gt_index, ltrb = assign_locations(locations, levels, torch.tensor([[0.0, 0.0, 200.0, 200.0]]), STRIDES,
                                      SIZE_RANGES, radius=1.5)
    expected = {(1, float(x), float(y)) for x in (88, 104, 120) for y in (88, 104, 120)}
    expected |= {(2, float(x), float(y)) for x in (80, 112, 144) for y in (80, 112, 144) if 144 in (x, y)}
    assert _positives(gt_index, locations, levels, 0) == expected
    at = torch.nonzero((locations[:, 0] == 104) & (locations[:, 1] == 88) & (levels == 1)).item()
    assert ltrb[at].tolist() == [104.0, 88.0, 96.0, 112.0]


def test_ambiguous_location_goes_to_the_smaller_box():
    # Both boxes are centred on (20, 20); the level-0 location (20, 20) qualifies for both.
    locations, levels = _locations(64, 64)
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0], [8.0, 8.0, 32.0, 32.0]])
    gt_index, ltrb = assign_locations(locations, levels, boxes, STRIDES, SIZE_RANGES, radius=1.5)
    at = torch.nonzero((locations[:, 0] == 20) & (locations[:, 1] == 20) & (levels == 0)).item()
    assert int(gt_index[at]) == 1
    assert ltrb[at].tolist() == [12.0, 12.0, 12.0, 12.0]
    # Same boxes in the other order: the answer follows the area, not the index.
    gt_index, _ = assign_locations(locations, levels, boxes.flip(0), STRIDES, SIZE_RANGES, radius=1.5)
    assert int(gt_index[at]) == 0


def test_no_boxes_gives_only_negatives():
    locations, levels = _locations(64, 64)
    gt_index, ltrb = assign_locations(locations, levels, torch.zeros(0, 4), STRIDES, SIZE_RANGES, radius=1.5)
    assert (gt_index == -1).all() and ltrb.shape == (len(locations), 4)


def test_centreness_targets_by_hand():
    ltrb = torch.tensor([[2.0, 2.0, 2.0, 2.0], [1.0, 2.0, 3.0, 8.0]])
    expected = [1.0, math.sqrt(1 / 3 * 2 / 8)]
    assert torch.allclose(centreness_targets(ltrb), torch.tensor(expected))


def test_fcos_losses_by_hand():
    # Two positives (class 0 of C = 1) and one negative. Relative boxes: prediction (1,1,1,1) is
    # [-1,-1,1,1] (area 4). Target (2,2,2,2) = [-2,-2,2,2]: IoU 4/16, encloses -> GIoU loss 0.75, ctr 1.
    # Target (1,1,3,1) = [-1,-1,3,1]: IoU 4/8, encloses -> loss 0.5, ctr sqrt(1/3).
    class_logits = torch.tensor([[0.0], [0.0], [0.0]])
    targets = torch.tensor([0, 0, -1])
    box_regression = torch.ones(3, 4)
    box_targets = torch.tensor([[2.0, 2, 2, 2], [1.0, 1, 3, 1], [0.0, 0, 0, 0]])
    centreness_logits = torch.tensor([0.0, 0.0, 5.0])
    losses = fcos_losses(class_logits, box_regression, centreness_logits, targets, box_targets, 0.25, 2.0)

    ctr = [1.0, math.sqrt(1 / 3)]
    assert losses["loss_fcos_box"].item() == pytest.approx((0.75 * ctr[0] + 0.5 * ctr[1]) / sum(ctr), rel=1e-5)
    # Focal at p = 0.5: positive alpha (1-p)^2 log 2, negative (1-alpha) p^2 log 2; divided by 2 positives.
    focal = (2 * 0.25 * 0.25 * math.log(2) + 0.75 * 0.25 * math.log(2)) / 2
    assert losses["loss_fcos_cls"].item() == pytest.approx(focal, rel=1e-5)
    # BCE at logit 0 is log 2 whatever the target; mean over the 2 positives.
    assert losses["loss_fcos_ctr"].item() == pytest.approx(math.log(2), rel=1e-5)


def test_fcos_losses_without_positives_are_finite_and_differentiable():
    class_logits = torch.zeros(4, 3, requires_grad=True)
    box_regression = torch.ones(4, 4, requires_grad=True)
    centreness_logits = torch.zeros(4, requires_grad=True)
    losses = fcos_losses(class_logits, box_regression, centreness_logits, torch.full((4,), -1),
                         torch.zeros(4, 4), 0.25, 2.0)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert losses["loss_fcos_box"].item() == 0.0 and losses["loss_fcos_ctr"].item() == 0.0


def test_head_output_shapes_and_group_norm():
    head = FCOSHead(channels=48, num_classes=3, num_convs=2, num_levels=2, controller_params=169)
    outputs = head([torch.randn(2, 48, 4, 6), torch.randn(2, 48, 1, 1)])
    assert outputs.class_logits.shape == (2, 25, 3)
    assert outputs.box_regression.shape == (2, 25, 4) and (outputs.box_regression >= 0).all()
    assert outputs.centreness_logits.shape == (2, 25)
    assert outputs.controller.shape == (2, 25, 169)
    assert group_norm(256).num_groups == 32
    assert group_norm(48).num_groups == 24
