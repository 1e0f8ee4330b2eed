"""CondInst end to end on tiny inputs: loss dicts, inference outputs, prediction sets, and learning."""

import math

import pytest
import torch

from apis.config import LossConfig, ModelConfig
from apis.data.coords import box_pixel_range
from apis.modeling.condinst import gather_training_points
from apis.modeling.fcos import assign_locations, level_locations
from apis.modeling.postprocess import sample_box_grid

HEIGHT, WIDTH = 64, 96


def batch(with_masks=True):
    """Two images of 64 x 96 (valid 60 x 90 and 64 x 80): two instances, then none."""
    torch.manual_seed(0)
    images = torch.rand(2, 3, HEIGHT, WIDTH) * 255
    masks = torch.zeros(2, HEIGHT, WIDTH, dtype=torch.uint8)
    masks[0, 12:40, 10:38] = 1
    masks[1, 30:58, 50:86] = 1
    first = {"boxes": torch.tensor([[10.0, 12.0, 38.0, 40.0], [50.0, 30.0, 86.0, 58.0]]),
             "labels": torch.tensor([0, 2]), "ann_ids": torch.tensor([11, 12]),
             "points": torch.tensor([[[20.5, 20.5], [11.5, 39.5], [0.0, 0.0]],
                                     [[60.5, 40.5], [85.5, 31.5], [70.5, 50.5]]]),
             "point_labels": torch.tensor([[1.0, 0.0, -1.0], [1.0, 0.0, 1.0]])}
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
             "ann_ids": torch.zeros(0, dtype=torch.int64), "points": torch.zeros(0, 3, 2),
             "point_labels": torch.zeros(0, 3)}
    if with_masks:
        first["masks"] = masks
        empty["masks"] = torch.zeros(0, HEIGHT, WIDTH, dtype=torch.uint8)
    return images, [(60, 90), (64, 80)], [first, empty]


FCOS_KEYS = {"loss_fcos_cls", "loss_fcos_box", "loss_fcos_ctr"}


@pytest.mark.parametrize("loss, mask_keys", [
    (LossConfig(points=1.0), {"loss_mask_points"}),
    (LossConfig(points=0.0, full=1.0), {"loss_mask_full"}),
    (LossConfig(points=0.0, box=1.0), {"loss_mask_box_proj", "loss_mask_box_pairwise"}),
    (LossConfig(points=0.1, full=1.0, box=1.0),
     {"loss_mask_points", "loss_mask_full", "loss_mask_box_proj", "loss_mask_box_pairwise"}),
])
def test_losses_per_mode(loss, mask_keys, tiny_model):
    model = tiny_model(loss)
    images, sizes, targets = batch()
    losses, stats = model.losses_and_stats(images, sizes, targets, iteration=100)
    assert set(losses) == FCOS_KEYS | mask_keys
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.head.controller.weight.grad is not None
    assert stats["num_pos"] > 0 and stats["num_proposals"] == stats["num_pos"]
    assert 0.0 <= stats["point_acc"] <= 1.0
    assert set(model.losses(images, sizes, targets)) == set(losses)


def test_loss_weights_scale_the_mask_losses(tiny_model):
    images, sizes, targets = batch()
    torch.manual_seed(3)
    unit = tiny_model(LossConfig(points=1.0, box=1.0, pairwise_warmup_iters=100))
    torch.manual_seed(3)
    scaled = tiny_model(LossConfig(points=0.1, box=2.0, pairwise_weight=0.5, pairwise_warmup_iters=100))
    a = unit.losses(images, sizes, targets, iteration=50)
    b = scaled.losses(images, sizes, targets, iteration=50)
    assert b["loss_mask_points"].item() == pytest.approx(0.1 * a["loss_mask_points"].item(), rel=1e-5)
    assert b["loss_mask_box_proj"].item() == pytest.approx(2.0 * a["loss_mask_box_proj"].item(), rel=1e-5)
    assert b["loss_mask_box_pairwise"].item() == pytest.approx(a["loss_mask_box_pairwise"].item(), rel=1e-5)
    # warm-up: half way through it, half the weight
    c = unit.losses(images, sizes, targets, iteration=100)
    assert c["loss_mask_box_pairwise"].item() == pytest.approx(2 * a["loss_mask_box_pairwise"].item(), rel=1e-5)


def test_batch_without_instances(tiny_model):
    model = tiny_model(LossConfig(points=1.0, full=1.0, box=1.0))
    images, sizes, targets = batch()
    losses, stats = model.losses_and_stats(images, sizes, [targets[1], targets[1]])
    assert stats["num_pos"] == 0 and math.isnan(stats["point_acc"])
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_mask_full"].item() == 0.0 and losses["loss_fcos_box"].item() == 0.0
    sum(losses.values()).backward()


def test_max_proposals_caps_the_mask_head(tiny_model):
    model = tiny_model(LossConfig(points=1.0), max_proposals=5)
    images, sizes, targets = batch()
    _, stats = model.losses_and_stats(images, sizes, targets)
    assert stats["num_pos"] > 5 and stats["num_proposals"] == 5


def test_bad_targets_are_named(tiny_model):
    model = tiny_model(LossConfig(points=0.0, full=1.0))
    images, sizes, targets = batch(with_masks=False)
    with pytest.raises(ValueError, match="image 0 .*'masks'.*11, 12"):
        model.losses(images, sizes, targets)
    images, sizes, targets = batch()
    targets[0]["labels"] = torch.tensor([0, 3])
    with pytest.raises(ValueError, match="image 0.*labels must lie in 0..2"):
        model.losses(images, sizes, targets)
    with pytest.raises(ValueError, match="multiple of 32"):
        model.losses(images[:, :, :60], sizes, batch()[2])


def test_gather_training_points_pads_and_subsamples():
    _, _, targets = batch()
    points, labels = gather_training_points(targets, -1, torch.device("cpu"))
    assert points.shape == (2, 3, 2) and labels.tolist() == [[1, 0, -1], [1, 0, 1]]
    torch.manual_seed(0)
    _, kept = gather_training_points(targets, 1, torch.device("cpu"))
    assert ((kept >= 0).sum(dim=1) == 1).all()
    assert ((kept == labels) | (kept == -1)).all()
    no_points = {"boxes": torch.zeros(0, 4)}
    assert gather_training_points([no_points], -1, torch.device("cpu")) == (None, None)


def test_predict_on_a_random_model(tiny_model):
    model = tiny_model(score_threshold=0.0, detections_per_image=7).eval()
    images, sizes, _ = batch()
    originals = [(120, 180), (64, 80)]
    detections = model.predict(images, sizes, originals)
    assert len(detections) == 2
    for found, (height, width) in zip(detections, originals):
        count = len(found.scores)
        assert 0 < count <= 7
        assert found.boxes.shape == (count, 4) and found.labels.dtype == torch.int64
        assert found.masks.shape == (count, height, width) and found.masks.dtype == torch.bool
        assert (found.boxes[:, 0] >= 0).all() and (found.boxes[:, 2] <= width).all()
        assert (found.boxes[:, 1] >= 0).all() and (found.boxes[:, 3] <= height).all()
        assert (found.boxes[:, 2] > found.boxes[:, 0]).all() and (found.boxes[:, 3] > found.boxes[:, 1]).all()
        assert torch.all(found.scores[:-1] >= found.scores[1:])
        for mask, box in zip(found.masks, found.boxes.tolist()):
            xs, ys, xe, ye = box_pixel_range(*box, width, height)
            outside = mask.clone()
            outside[ys:ye, xs:xe] = False
            assert not outside.any()


def test_prediction_sets_follow_the_assignment_and_the_box_grid(tiny_model):
    model = tiny_model().eval()
    images, sizes, targets = batch()
    targets[0]["boxes"] = torch.cat([targets[0]["boxes"], torch.tensor([[30.0, 30.0, 31.0, 31.0]])])
    targets[0]["labels"] = torch.tensor([0, 2, 1])
    targets[0]["ann_ids"] = torch.tensor([11, 12, 13])
    originals = [(120, 180), (64, 80)]
    scales = [(90 / 180, 60 / 120), (1.0, 1.0)]
    running_mean = model.mask_branch.refine[0][1].running_mean.clone()
    sets = model.prediction_sets(images, sizes, targets, originals, scales)
    assert torch.equal(model.mask_branch.refine[0][1].running_mean, running_mean)
    assert sets[1] == {}
    assert set(sets[0]) == {11, 12, 13}

    pyramid_sizes = [(HEIGHT // s, WIDTH // s) for s in (8, 16, 32)] + [(1, 2), (1, 1)]  # P6, P7: stride-2 convs
    locations, levels = level_locations(pyramid_sizes, (8, 16, 32, 64, 128), torch.device("cpu"))
    gt_index, _ = assign_locations(locations, levels, targets[0]["boxes"], (8, 16, 32, 64, 128),
                                   ModelConfig().size_ranges, 1.5)
    for g, ann_id in enumerate([11, 12, 13]):
        found = sets[0][ann_id]
        x0, y0, x1, y1 = (targets[0]["boxes"][g] / torch.tensor([0.5, 0.5, 0.5, 0.5])).tolist()
        xs, ys, xe, ye = box_pixel_range(x0, y0, x1, y1, 180, 120)
        members = int((gt_index == g).sum())
        assert found.ann_id == ann_id and found.origin == (xs, ys)
        assert found.probs.shape == (members, ye - ys, xe - xs)
        assert found.boxes.shape == (members, 4) and found.scores.shape == (members,)
        assert ((found.probs >= 0) & (found.probs <= 1)).all()
    assert sets[0][13].probs.shape[0] == 0  # 1-pixel box: no location strictly inside its centre region

    model.train()
    with pytest.raises(RuntimeError, match="eval"):
        model.prediction_sets(images, sizes, targets, originals, scales)


@pytest.mark.parametrize("chunk", [3, 128])
def test_prediction_sets_members_match_a_direct_computation(monkeypatch, chunk, tiny_model):
    """Members of each GT, their probabilities and scores, whether GTs share a dynamic-head pass (128) or
    each needs its own (3 < members per GT)."""
    import apis.modeling.condinst as condinst_module

    model = tiny_model().eval()
    images, sizes, targets = batch()
    originals = [(120, 180), (64, 80)]
    scales = [(0.5, 0.5), (1.0, 1.0)]
    monkeypatch.setattr(condinst_module, "MEMBERS_PER_CHUNK", chunk)
    sets = model.prediction_sets(images, sizes, targets, originals, scales)[0]
    with torch.no_grad():
        forward = model._forward(images)
        gt_index, _ = model._assign(forward, targets)
        for g, ann_id in enumerate([11, 12]):
            members = torch.nonzero(gt_index[0] == g).squeeze(1)
            logits = model.dynamic_head(forward.mask_features, forward.head.controller[0, members],
                                        forward.locations[members], forward.levels[members],
                                        torch.zeros_like(members))
            box = (targets[0]["boxes"][g] * 2).tolist()
            origin, grid = sample_box_grid(logits, 4, box, (0.5, 0.5), (120, 180))
            label = int(targets[0]["labels"][g])
            scores = (forward.head.class_logits[0, members, label].sigmoid()
                      * forward.head.centreness_logits[0, members].sigmoid()).sqrt()
            found = sets[ann_id]
            assert found.origin == origin
            assert torch.allclose(found.probs, grid.sigmoid(), atol=1e-6)
            assert torch.allclose(found.scores, scores, atol=1e-6)
            assert len(members) > 3
