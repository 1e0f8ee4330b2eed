"""Mask losses and the logit sampler against hand computations."""

import math

import pytest
import torch

from apis.modeling.dynamic_mask_head import sample_mask_logits
from apis.modeling.mask_losses import (
    box_masks_at_stride,
    colour_similarity,
    dice_loss,
    loss_box_pairwise,
    loss_box_projection,
    loss_full,
    loss_full_bce,
    loss_points,
    masks_at_stride,
    pairwise_disagreement,
    pairwise_warmup,
    point_accuracy,
    rgb_to_lab,
)

LOGITS = [[0.0, 1.0, -2.0, 3.0],
          [4.0, -1.0, 0.5, 2.0],
          [-3.0, 2.5, 1.5, -0.5]]
POINTS = [(2.0, 2.0), (6.0, 2.0), (4.0, 4.0), (5.5, 9.5), (0.5, 0.5), (15.5, 11.5), (13.0, 7.0), (9.25, 3.75)]


def test_sample_mask_logits_matches_manual_bilinear(manual_bilinear):
    logits = torch.tensor([LOGITS])
    points = torch.tensor([POINTS])
    samples = sample_mask_logits(logits, points, stride=4)
    expected = [manual_bilinear(LOGITS, x, y, 4) for x, y in POINTS]
    assert samples.shape == (1, len(POINTS))
    assert samples[0].tolist() == pytest.approx(expected, abs=1e-6)
    # A cell centre returns the cell's own value: (6, 2) is the centre of cell (0, 1).
    assert samples[0, 1].item() == pytest.approx(1.0)


def test_loss_points_by_hand(manual_bilinear):
    logits = torch.tensor([LOGITS, [[-v for v in row] for row in LOGITS]])
    points = torch.tensor([POINTS[1:4], POINTS[5:8]])
    labels = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 1.0]])
    terms = []
    for k in range(2):
        sign = 1 if k == 0 else -1
        for (x, y), label in zip(points[k].tolist(), labels[k].tolist()):
            if label < 0:
                continue
            z = sign * manual_bilinear(LOGITS, x, y, 4)
            p = 1 / (1 + math.exp(-z))
            terms.append(-(label * math.log(p) + (1 - label) * math.log(1 - p)))
    loss = loss_points(logits, points, labels, stride=4)["loss_mask_points"]
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    # Class weights: object points (label 1) weigh 2, background 0.5; the mean is weighted.
    hand_weights = [2.0, 0.5, 0.5, 2.0, 2.0]  # labels 1, 0 | 0, 1, 1 (the -1 is padding)
    weighted = loss_points(logits, points, labels, stride=4, positive_weight=2.0, negative_weight=0.5)
    expected = sum(w * t for w, t in zip(hand_weights, terms)) / sum(hand_weights)
    assert weighted["loss_mask_points"].item() == pytest.approx(expected, rel=1e-5)

    # Per instance: instance 0 has 2 labelled points, instance 1 has 3; each instance's terms summed, then
    # the mean over the instances (a third instance without labelled points does not count).
    per_instance = (sum(terms[:2]) + sum(terms[2:])) / 2
    padded = (torch.cat([logits, logits[:1]]), torch.cat([points, points[:1]]),
              torch.cat([labels, torch.full((1, 3), -1.0)]))
    instance = loss_points(*padded, stride=4, normalisation="instance")["loss_mask_points"]
    assert instance.item() == pytest.approx(per_instance, rel=1e-5)

    correct, counted = point_accuracy(logits, points, labels, stride=4)
    hand = [(sign * manual_bilinear(LOGITS, x, y, 4) > 0) == (label > 0)
            for sign, pts, lbl in ((1, POINTS[1:4], [1, 0, -1]), (-1, POINTS[5:8], [0, 1, 1]))
            for (x, y), label in zip(pts, lbl) if label >= 0]
    assert (correct, counted) == (sum(hand), 5)


def test_loss_points_ignores_padding_only_instances():
    logits = torch.zeros(2, 3, 4, requires_grad=True)
    loss = loss_points(logits, torch.zeros(2, 2, 2), torch.full((2, 2), -1.0), stride=4)["loss_mask_points"]
    assert loss.item() == 0.0
    loss.backward()


def test_dice_by_hand():
    scores = torch.tensor([[[0.5, 1.0], [0.0, 0.25]]])
    targets = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    inter = 0.5 + 1.0
    union = (0.25 + 1.0 + 0.0 + 0.0625) + 2.0 + 1e-5
    assert dice_loss(scores, targets).item() == pytest.approx(1 - 2 * inter / union, rel=1e-6)
    logits = torch.logit(scores)
    assert loss_full(logits, targets)["loss_mask_full"].item() == pytest.approx(1 - 2 * inter / union, rel=1e-5)


def test_masks_at_stride_is_cell_coverage():
    mask = torch.zeros(1, 8, 8, dtype=torch.uint8)
    mask[0, 0:3, 0:4] = 1  # covers 12 of the 16 pixels of cell (0, 0)
    mask[0, 5, 5] = 1
    coverage = masks_at_stride(mask, 4)
    assert coverage.tolist() == [[[0.75, 0.0], [0.0, 1 / 16]]]


def test_box_masks_at_stride_by_hand():
    # Cell centres at stride 4: x 2, 6, 10, 14, 18 and y 2, 6, 10, 14.
    boxes = torch.tensor([[5.0, 3.0, 14.0, 9.0], [1.0, 1.0, 2.0, 2.0]])
    masks = box_masks_at_stride(boxes, 4, 5, stride=4)
    expected = torch.zeros(2, 4, 5, dtype=torch.bool)
    expected[0, 1, 1:4] = True  # x in {6, 10, 14}, y in {6}
    expected[1, 0, 0] = True  # no centre inside: the cell holding the box centre (1.5, 1.5)
    assert torch.equal(masks, expected)


def test_box_projection_by_hand():
    logits = torch.logit(torch.tensor([[[0.2, 0.9, 0.1], [0.6, 0.3, 0.0001]]]))
    box = torch.tensor([[[False, True, True], [False, True, True]]])
    scores = torch.sigmoid(logits)[0]
    # max over rows (x projection) and over columns (y projection)
    proj_x, target_x = scores.max(dim=0).values, torch.tensor([0.0, 1.0, 1.0])
    proj_y, target_y = scores.max(dim=1).values, torch.tensor([1.0, 1.0])

    def dice(a, b):
        return 1 - 2 * float((a * b).sum()) / (float((a * a).sum()) + float((b * b).sum()) + 1e-5)

    expected = dice(proj_x, target_x) + dice(proj_y, target_y)
    assert loss_box_projection(logits, box)["loss_mask_box_proj"].item() == pytest.approx(expected, rel=1e-5)


def test_pairwise_disagreement_by_hand():
    centre, neighbour = torch.tensor([2.0, -1.0, 0.0]), torch.tensor([-0.5, -3.0, 4.0])
    p, q = torch.sigmoid(centre), torch.sigmoid(neighbour)
    expected = -torch.log(p * q + (1 - p) * (1 - q))
    assert torch.allclose(pairwise_disagreement(centre, neighbour), expected, rtol=1e-5)


def test_loss_box_pairwise_weights():
    logits = torch.tensor([[[3.0, -3.0, 3.0], [3.0, 3.0, 3.0]]])
    box = torch.tensor([[[True, True, False], [False, False, False]]])
    similarity = torch.zeros(1, 8, 2, 3)
    similarity[0, 4, 0, 0] = 0.9  # neighbour index 4 is (dy, dx) = (0, +1): cell (0, 0) with (0, 1)
    similarity[0, 4, 0, 1] = 0.2  # below the threshold: ignored
    loss = loss_box_pairwise(logits, box, similarity, torch.tensor([0]), dilation=1,
                             threshold=0.3)["loss_mask_box_pairwise"]
    p, q = 1 / (1 + math.exp(-3)), 1 / (1 + math.exp(3))
    assert loss.item() == pytest.approx(-math.log(p * q + (1 - p) * (1 - q)), rel=1e-5)


def test_loss_box_pairwise_by_brute_force():
    """Every (instance, cell in its box, neighbour) pair summed in Python loops, on two images."""
    torch.manual_seed(0)
    height, width, dilation, threshold = 6, 7, 2, 0.3
    logits = torch.randn(3, height, width, requires_grad=True)
    boxes = torch.zeros(3, height, width, dtype=torch.bool)
    boxes[0, 1:4, 2:6] = True
    boxes[1, 0:6, 0:3] = True
    boxes[2, 4:6, 5:7] = True
    similarity = torch.rand(2, 8, height, width)
    image_index = torch.tensor([0, 1, 1])
    loss = loss_box_pairwise(logits, boxes, similarity, image_index, dilation, threshold)["loss_mask_box_pairwise"]
    probs = torch.sigmoid(logits.detach())
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    total, count = 0.0, 0
    touched = torch.zeros(3, height, width, dtype=torch.bool)
    for n in range(3):
        for i in range(height):
            for j in range(width):
                for k, (dy, dx) in enumerate(offsets):
                    ni, nj = i + dy * dilation, j + dx * dilation
                    inside = 0 <= ni < height and 0 <= nj < width
                    if boxes[n, i, j] and inside and similarity[image_index[n], k, i, j] >= threshold:
                        p, q = float(probs[n, i, j]), float(probs[n, ni, nj])
                        total += -math.log(p * q + (1 - p) * (1 - q))
                        count += 1
                        touched[n, i, j] = touched[n, ni, nj] = True
    assert count > 20
    assert loss.item() == pytest.approx(total / count, rel=1e-5)
    loss.backward()
    assert logits.grad[~touched].abs().sum() == 0 and logits.grad[touched].abs().min() > 0


def test_rgb_to_lab_known_colours():
    # Reference values of skimage.color.rgb2lab (D65).
    rgb = torch.tensor([[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=torch.float32)
    lab = rgb_to_lab(rgb.T.reshape(1, 3, 5, 1))[0, :, :, 0].T
    expected = torch.tensor([[100.0, 0.0, 0.0], [0.0, 0.0, 0.0], [53.2408, 80.0925, 67.2032],
                             [87.7347, -86.1827, 83.1793], [32.2970, 79.1875, -107.8602]])
    assert torch.allclose(lab, expected, atol=2e-2)


def test_colour_similarity_uniform_image_and_padding():
    images = torch.full((1, 3, 16, 16), 128.0)
    images[0, :, :, 12:] = 0.0  # padding on the right; valid width 12 -> cell centres 2, 6, 10 are valid
    similarity = colour_similarity(images, [(16, 12)], stride=4, dilation=1)
    assert similarity.shape == (1, 8, 4, 4)
    # Cell (1, 1): all 8 neighbours inside and of the same colour.
    assert torch.allclose(similarity[0, :, 1, 1], torch.ones(8))
    # Cell (1, 2): right-hand neighbours (column 3) are padding -> 0.
    right = [2, 4, 7]  # (dy, dx) = (-1, 1), (0, 1), (1, 1)
    assert similarity[0, right, 1, 2].tolist() == [0.0, 0.0, 0.0]
    # Cell (0, 0): neighbours above / left are outside the map -> 0.
    assert similarity[0, 0, 0, 0].item() == 0.0


def test_pairwise_warmup_ramps_linearly():
    assert [pairwise_warmup(i, 100) for i in (0, 50, 100, 1000)] == [0.0, 0.5, 1.0, 1.0]
    assert pairwise_warmup(3, 0) == 1.0


def test_full_bce_counts_only_the_cells_of_the_box():
    logits = torch.tensor([[[0.0, 2.0], [-1.0, 5.0]]])
    coverage = torch.tensor([[[0.5, 1.0], [0.0, 0.25]]])
    inside = torch.tensor([[[True, True], [True, False]]])
    # By hand: BCE(x, t) = log(1 + e^x) - t x, mean over the three cells inside.
    expected = (math.log(2) - 0.0 + math.log(1 + math.e ** 2) - 2.0 + math.log(1 + math.e ** -1)) / 3
    assert float(loss_full_bce(logits, coverage, inside)["loss_mask_full_bce"]) == pytest.approx(expected, rel=1e-6)
