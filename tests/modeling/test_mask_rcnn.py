"""Mask R-CNN from boxes and points: the point loss in each proposal's frame (against a hand computation),
the box-frame mask grid, training, and the detections contract it shares with CondInst."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from apis.config import ConfigError, LossConfig, ModelConfig
from apis.config_loading import load_config
from apis.data.coords import box_pixel_range
from apis.modeling.build import build_model
from apis.modeling.condinst import CondInst
from apis.modeling.mask_rcnn import (
    MaskRCNNLoss,
    MaskRCNNPoints,
    ProposalMembers,
    box_grid_logits,
    gt_box_cells,
    loss_mask_points,
    roi_colour_similarity,
)

A, B, C, D = 1.0, -2.0, 0.5, 3.0  # a 2 x 2 mask grid [[A, B], [C, D]]


def _bce(logit, label):
    return -(label * math.log(1 / (1 + math.exp(-logit))) + (1 - label) * math.log(1 - 1 / (1 + math.exp(-logit))))


def test_point_loss_samples_each_proposal_frame_by_hand():
    """Proposal 0 spans (10, 20)-(30, 40): its 2 x 2 cells are 10 px wide, centres at x = 15, 25 and y = 25, 35.
    Proposal 1 spans (0, 20)-(40, 40) with the same logits: the same GT point lands elsewhere in its grid."""
    logits = torch.tensor([[[A, B], [C, D]]] * 2)
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0], [0.0, 20.0, 40.0, 40.0]])
    points = torch.tensor([[[15.0, 25.0], [25.0, 35.0], [20.0, 30.0], [5.0, 25.0], [15.0, 35.0]]] * 2)
    labels = torch.tensor([[1.0, 0.0, 1.0, 1.0, -1.0]] * 2)
    # Proposal 0: cell (0,0) centre -> A; cell (1,1) centre -> D; box centre -> mean of the 4;
    # (5, 25) is left of the box -> ignored; label -1 -> ignored.
    terms0 = [_bce(A, 1), _bce(D, 0), _bce((A + B + C + D) / 4, 1)]
    # Proposal 1 (cells 20 px wide, centres x = 10, 30): x = 15 is a quarter of the way from column 0 to 1, x = 25
    # three quarters, x = 20 half, x = 5 left of the first centre (border value); y as for proposal 0.
    terms1 = [_bce(0.75 * A + 0.25 * B, 1), _bce(0.25 * C + 0.75 * D, 0), _bce((A + B + C + D) / 4, 1),
              _bce(A, 1)]
    loss = loss_mask_points(logits, boxes, points, labels)["loss_mask_points"]
    assert float(loss) == pytest.approx(sum(terms0 + terms1) / 7, rel=1e-5)
    # Per instance: each proposal's terms summed, averaged over proposals.
    per_instance = loss_mask_points(logits, boxes, points, labels, normalisation="instance")["loss_mask_points"]
    assert float(per_instance) == pytest.approx((sum(terms0) + sum(terms1)) / 2, rel=1e-5)
    # Class weights: label-1 points count twice.
    weighted = loss_mask_points(logits[:1], boxes[:1], points[:1], labels[:1], positive_weight=2.0)
    assert float(weighted["loss_mask_points"]) == pytest.approx(
        (2 * terms0[0] + terms0[1] + 2 * terms0[2]) / 5, rel=1e-5)


def test_point_loss_is_a_graph_keeping_zero_without_counted_points():
    logits = torch.zeros(1, 4, 4, requires_grad=True)
    loss = loss_mask_points(logits, torch.tensor([[0.0, 0.0, 8.0, 8.0]]), torch.tensor([[[20.0, 20.0]]]),
                            torch.tensor([[1.0]]))["loss_mask_points"]
    assert float(loss.detach()) == 0.0 and loss.requires_grad


def test_box_grid_pastes_each_mask_in_its_box_and_nothing_outside():
    """The GT grid (original frame, scale 0.5) read from two RoIs: one covering it, one its left half."""
    logits = torch.tensor([[[A, B], [C, D]], [[A, B], [C, D]]])
    rois = torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 2.0, 4.0]])  # resized frame
    origin, grid = box_grid_logits(logits, rois, (0.0, 0.0, 8.0, 8.0), (0.5, 0.5), (8, 8))
    assert origin == (0, 0) and grid.shape == (2, 8, 8)
    # Original pixel (1, 1) has centre (1.5, 1.5) -> resized (0.75, 0.75): RoI 0's cell (0, 0) region -> A.
    assert float(grid[0, 1, 1]) == pytest.approx(A)
    assert float(grid[0, 6, 6]) == pytest.approx(D)
    # RoI 1 ends at resized x = 2 (original 4): pixels x >= 4 are outside it, probability 0.
    assert torch.isinf(grid[1, :, 4:]).all() and (grid[1, :, 4:] < 0).all()
    assert torch.isfinite(grid[1, :, :4]).all()
    # An odd box: its grid is box_pixel_range's.
    origin, grid = box_grid_logits(logits[:1], rois[:1], (1.2, 0.4, 6.6, 7.0), (0.5, 0.5), (8, 8))
    xs, ys, xe, ye = box_pixel_range(1.2, 0.4, 6.6, 7.0, 8, 8)
    assert origin == (xs, ys) and grid.shape == (1, ye - ys, xe - xs)


def _tiny(points=1.0, seed=0, box=0.0):
    torch.manual_seed(seed)
    return MaskRCNNPoints(num_classes=3, depth=18, norm="bn", fpn_channels=16,
                          loss=MaskRCNNLoss(points=points, box=box, pairwise_warmup_iters=10))


def _batch():
    images = torch.rand(2, 3, 64, 96) * 255
    targets = [
        {"boxes": torch.tensor([[5.0, 5.0, 30.0, 40.0], [40.0, 10.0, 70.0, 50.0]]), "labels": torch.tensor([0, 2]),
         "ann_ids": torch.tensor([1, 2]), "points": torch.tensor([[[10.0, 10.0], [20.0, 30.0]], [[50.0, 20.0],
                                                                                               [0.0, 0.0]]]),
         "point_labels": torch.tensor([[1.0, 0.0], [1.0, -1.0]])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
         "ann_ids": torch.zeros(0, dtype=torch.int64), "points": torch.zeros(0, 1, 2),
         "point_labels": torch.zeros(0, 1)},
    ]
    return images, [(60, 90), (64, 80)], targets


def test_training_losses_train_every_head_and_the_mask_head_from_points():
    model = _tiny().train()
    images, sizes, targets = _batch()
    losses, stats = model.losses_and_stats(images, sizes, targets)
    assert set(losses) == {"loss_rpn_obj", "loss_rpn_box", "loss_rcnn_cls", "loss_rcnn_box", "loss_mask_points"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert stats["num_pos"] >= 2  # the GT boxes are proposals too
    assert 0.0 <= stats["point_acc"] <= 1.0
    losses["loss_mask_points"].backward()
    assert model.mask_predictor.mask_fcn_logits.weight.grad.abs().sum() > 0
    # Without the point loss the mask head is not trained at all.
    plain, _ = _tiny(points=0.0).train().losses_and_stats(images, sizes, targets)
    assert "loss_mask_points" not in plain


def test_a_few_steps_fit_the_labelled_points():
    model = _tiny().train()
    images, sizes, targets = _batch()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.002, momentum=0.9)
    first = None
    for _ in range(15):
        losses, _ = model.losses_and_stats(images, sizes, targets)
        first = first if first is not None else float(losses["loss_mask_points"].detach())
        optimiser.zero_grad()
        sum(losses.values()).backward()
        optimiser.step()
    assert float(losses["loss_mask_points"].detach()) < 0.5 * first


def test_detections_follow_condinsts_contract():
    model = _tiny().eval()
    images, sizes, _ = _batch()
    found = model.predict(images, sizes, [(120, 180), (64, 80)])
    assert len(found) == 2
    for detections, (height, width) in zip(found, [(120, 180), (64, 80)]):
        count = len(detections.scores)
        assert detections.masks.shape == (count, height, width) and detections.masks.dtype == torch.bool
        assert detections.boxes.shape == (count, 4) and detections.labels.dtype == torch.int64
        assert ((detections.labels >= 0) & (detections.labels < 3)).all()
        assert (detections.boxes[:, 2] <= width).all() and (detections.boxes[:, 3] <= height).all()
        assert (detections.scores[:-1] >= detections.scores[1:]).all()
        for box, mask in zip(detections.boxes.tolist(), detections.masks):
            xs, ys, xe, ye = box_pixel_range(*box, width, height)
            outside = mask.clone()
            outside[ys:ye, xs:xe] = False
            assert not outside.any()


def test_gt_proposals_start_with_the_gt_boxes_and_match_by_iou():
    model = _tiny().eval()
    images, sizes, targets = _batch()
    boxes = [t["boxes"] for t in targets]
    (members, empty) = model.gt_proposals(images, sizes, boxes, [t["labels"] for t in targets])
    assert torch.equal(members.boxes[:2], boxes[0]) and members.gt_index[:2].tolist() == [0, 1]
    from torchvision.ops import box_iou

    overlap = box_iou(members.boxes, boxes[0])
    assert (overlap.max(dim=1).values >= 0.5).all()
    assert torch.equal(overlap.argmax(dim=1), members.gt_index)
    assert members.logits.shape == (len(members.boxes), 28, 28)
    assert ((members.scores > 0) & (members.scores < 1)).all()
    assert len(empty.boxes) == 0


def test_build_model_follows_model_arch_and_refuses_mask_losses_it_lacks():
    tiny = ["model.depth=18", "model.fpn_channels=16", "model.num_classes=2", "model.norm=bn"]
    assert isinstance(build_model(load_config(None, tiny).model), CondInst)
    cfg = load_config(None, [*tiny, "model.arch=mask_rcnn"])
    assert isinstance(build_model(cfg.model, cfg.loss), MaskRCNNPoints)
    with pytest.raises(ConfigError, match="mask_rcnn learns its masks from points and boxes"):
        load_config(None, [*tiny, "model.arch=mask_rcnn", "loss.full=1.0"])
    with pytest.raises(ValueError, match="set it to 0"):
        MaskRCNNPoints.from_config(ModelConfig(depth=18, fpn_channels=16), LossConfig(full=1.0))
    boxed = load_config(None, [*tiny, "model.arch=mask_rcnn", "loss.box=1.0", "loss.pairwise_warmup_iters=7"])
    model = build_model(boxed.model, boxed.loss)
    assert model.criterion == MaskRCNNLoss(box=1.0, pairwise_warmup_iters=7)
    # Every field of the loss object is a LossConfig key of the same name, read from the config.
    changed = {field.name: field.default + 1 if isinstance(field.default, (int, float)) else "instance"
               for field in dataclasses.fields(MaskRCNNLoss)}
    assert MaskRCNNLoss.from_config(dataclasses.replace(LossConfig(), **changed)) == MaskRCNNLoss(**changed)


def test_point_samples_agree_with_roi_align_of_a_pasted_mask():
    """Independent reference: sampling a RoI's grid at its own cell centres gives the grid back, as roi_align
    of the mask pasted into the image (torchvision's GT projection) would."""
    logits = torch.randn(1, 4, 4)
    box = torch.tensor([[8.0, 4.0, 24.0, 20.0]])  # 4 px cells
    centres = torch.tensor([[[8 + 4 * j + 2.0, 4 + 4 * i + 2.0] for i in range(4) for j in range(4)]])
    from apis.modeling.mask_rcnn import box_frame_samples

    samples, inside = box_frame_samples(logits, box, centres)
    assert inside.all()
    assert torch.allclose(samples.reshape(4, 4), logits[0], atol=1e-6)
    image = F.pad(logits[0].repeat_interleave(4, 0).repeat_interleave(4, 1), (8, 8, 4, 12))
    from torchvision.ops import roi_align

    projected = roi_align(image[None, None], [box], (4, 4), 1.0, sampling_ratio=2, aligned=True)
    assert torch.allclose(projected[0, 0], logits[0], atol=1e-6)


def test_gt_box_cells_mark_the_cells_whose_centre_lies_in_the_gt_box():
    rois = torch.tensor([[0.0, 0.0, 8.0, 8.0], [10.0, 10.0, 30.0, 30.0]])
    gt = torch.tensor([[2.0, 0.0, 5.0, 8.0], [10.0, 10.0, 30.0, 30.0]])
    cells = gt_box_cells(gt, rois, size=4)  # RoI 0: 2 px cells with centres 1, 3, 5, 7
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[:, 1:3] = True  # centres x = 3 and 5 lie in [2, 5]; every row's centre in [0, 8]
    assert torch.equal(cells[0], expected)
    assert cells[1].all()  # the GT box is the RoI
    # A GT box between cell centres still marks the cell nearest its centre.
    tiny = gt_box_cells(torch.tensor([[4.2, 4.2, 4.8, 4.8]]), rois[:1], size=4)
    assert tiny.sum() == 1 and bool(tiny[0, 2, 2])


def test_roi_colour_similarity_compares_the_colours_pooled_onto_each_roi_grid():
    images = torch.zeros(1, 3, 16, 16)
    images[0, :, :, 8:] = 255.0  # black left half, white right half
    rois = [torch.tensor([[0.0, 0.0, 16.0, 16.0], [0.0, 0.0, 8.0, 8.0]])]
    similarity = roi_colour_similarity(images, rois, dilation=1, size=4)
    assert similarity.shape == (2, 8, 4, 4)
    right = 4  # neighbour index of (dy, dx) = (0, +1)
    # RoI 0: cells 1 and 2 straddle black | white: L* 0 vs 100 -> exp(-50); within a half: 1.
    assert float(similarity[0, right, 1, 0]) == pytest.approx(1.0, abs=1e-5)
    assert float(similarity[0, right, 1, 1]) == pytest.approx(math.exp(-50.0), abs=1e-6)
    # RoI 1 lies in the black half: every pair inside the grid is alike.
    assert torch.allclose(similarity[1, right, :, :3], torch.ones(4, 3), atol=1e-5)


def test_box_terms_train_the_mask_head_in_each_roi_frame():
    model = _tiny(points=0.0, box=1.0).train()
    images, sizes, targets = _batch()
    losses, stats = model.losses_and_stats(images, sizes, targets, iteration=5)
    assert {"loss_mask_box_proj", "loss_mask_box_pairwise"} <= set(losses) and "loss_mask_points" not in losses
    assert math.isnan(stats["point_acc"])
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss_mask_box_proj"].backward()
    assert model.mask_predictor.mask_fcn_logits.weight.grad.abs().sum() > 0
    # The pairwise term ramps up: half its weight at iteration 5 of a 10-iteration warm-up.
    torch.manual_seed(1)
    half = model.losses_and_stats(images, sizes, targets, iteration=5)[0]["loss_mask_box_pairwise"].detach()
    torch.manual_seed(1)
    full = model.losses_and_stats(images, sizes, targets, iteration=10)[0]["loss_mask_box_pairwise"].detach()
    assert float(full) > 0 and float(half) == pytest.approx(0.5 * float(full), rel=1e-5)


def test_proposal_sets_paste_each_members_mask_onto_its_gts_grid(monkeypatch):
    """Mask R-CNN's prediction sets from hand-made members (constant mask logits, known boxes): GT 0 has itself
    and one proposal, GT 1 itself. At scale 1/2 a member's mask is its constant inside the member's box (in the
    original frame, twice the resized one) and 0 outside; boxes come back in the original frame, scores as the
    box head gave them."""
    model = _tiny().eval()
    images, sizes, targets = _batch()
    boxes = torch.tensor([[5.0, 5.0, 30.0, 40.0], [10.0, 10.0, 20.0, 20.0], [40.0, 10.0, 70.0, 50.0]])
    members = ProposalMembers(boxes=boxes, gt_index=torch.tensor([0, 0, 1]),
                              logits=torch.tensor([2.0, -1.0, 0.5])[:, None, None].expand(3, 28, 28).clone(),
                              scores=torch.tensor([0.9, 0.8, 0.7]))
    nothing = ProposalMembers(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.zeros(0, 28, 28),
                              torch.zeros(0))
    monkeypatch.setattr(model, "gt_proposals", lambda *args: [members, nothing])
    sets = model.prediction_sets(images, sizes, targets, [(120, 180), (64, 80)], [(0.5, 0.5), (1.0, 1.0)])
    assert sets[1] == {} and sorted(sets[0]) == [1, 2]
    first, second = sets[0][1], sets[0][2]
    # GT 0 is (10, 10)-(60, 80) in the original frame: pixels 10..59 x 10..79, all inside its own box.
    assert first.origin == (10, 10) and first.probs.shape == (2, 70, 50)
    assert torch.allclose(first.probs[0], torch.sigmoid(torch.tensor(2.0)).expand(70, 50))
    # The proposal is (20, 20)-(40, 40): pixel centres x + 0.5 in [20, 40] are columns 20..39 (grid 10..29).
    inside = torch.zeros(70, 50, dtype=torch.bool)
    inside[10:30, 10:30] = True
    assert torch.allclose(first.probs[1][inside], torch.sigmoid(torch.tensor(-1.0)))
    assert (first.probs[1][~inside] == 0).all()
    assert torch.equal(first.boxes, boxes[:2] * 2) and torch.equal(first.scores, torch.tensor([0.9, 0.8]))
    assert second.origin == (80, 20) and second.k == 1 and torch.equal(second.boxes, boxes[2:] * 2)
    assert torch.allclose(second.probs, torch.sigmoid(torch.tensor(0.5)))

    model.train()
    with pytest.raises(RuntimeError, match="eval"):
        model.prediction_sets(images, sizes, targets, [(120, 180), (64, 80)], [(0.5, 0.5), (1.0, 1.0)])


def test_proposal_sets_of_a_real_model_hold_the_gt_proposals():
    """Without hand-made members: each GT's set has as many members as its proposals, the GT box first."""
    model = _tiny().eval()
    images, sizes, targets = _batch()
    (members, _) = model.gt_proposals(images, sizes, [t["boxes"] for t in targets], [t["labels"] for t in targets])
    sets = model.prediction_sets(images, sizes, targets, [(60, 90), (64, 80)], [(1.0, 1.0), (1.0, 1.0)])
    for g, ann_id in enumerate((1, 2)):
        found = sets[0][ann_id]
        assert found.k == int((members.gt_index == g).sum()) and torch.equal(found.boxes[0], targets[0]["boxes"][g])
        assert found.origin == box_pixel_range(*targets[0]["boxes"][g].tolist(), 90, 60)[:2]
        assert ((found.probs >= 0) & (found.probs <= 1)).all()
