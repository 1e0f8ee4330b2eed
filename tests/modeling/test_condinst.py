"""CondInst end to end on tiny inputs: construction, loss dicts and inference outputs."""

import dataclasses
import inspect
import math

import pytest
import torch

from apis.config import LossConfig, ModelConfig
from apis.data.coords import box_pixel_range
from apis.modeling.condinst import CondInst
from apis.modeling.condinst_loss import CondInstLoss, gather_training_points
from apis.modeling.refinement import build_refinement

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


# ModelConfig keys that are not CondInst's: which model to build, and Mask R-CNN's own.
NOT_CONDINST = {"arch", "roi_samples_per_image"}


def _condinst_keys(model_cfg: ModelConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(model_cfg).items() if k not in NOT_CONDINST}


def test_keyword_defaults_are_the_config_defaults():
    """A model built with plain keywords in a notebook is the one the config system builds by default."""
    model_params = inspect.signature(CondInst).parameters
    assert set(model_params) == {f.name for f in dataclasses.fields(ModelConfig)} - NOT_CONDINST | {"loss"}
    for name, value in _condinst_keys(ModelConfig()).items():
        default = model_params[name].default
        if name == "refinement":  # the config's section is built into the object the keyword takes
            value = build_refinement(ModelConfig().refinement)
        assert (list(default) if name == "size_ranges" else default) == value, name
    loss_params = inspect.signature(CondInstLoss).parameters
    assert dataclasses.asdict(LossConfig()) == {name: p.default for name, p in loss_params.items()}


def test_from_config_passes_every_key():
    model_cfg = ModelConfig(num_classes=3, depth=18, norm="bn", fpn_channels=16, head_convs=1, mask_branch_channels=8,
                            mask_channels=4, dynamic_channels=6, dynamic_layers=2, dynamic_init="zeros",
                            dynamic_activation="leaky_relu", mask_out_stride=8, centre_sampling_radius=2.5,
                            size_ranges=[0, 32, 64, 128, 256, math.inf], max_proposals=7, score_threshold=0.2,
                            pre_nms_top_k=50, nms_threshold=0.4, detections_per_image=9, mask_threshold=0.3)
    loss_cfg = LossConfig(focal_alpha=0.3, focal_gamma=1.5, points=0.5, full=0.25, box=2.0, pairwise_weight=0.7,
                          pairwise_dilation=3, pairwise_colour_threshold=0.2, pairwise_warmup_iters=5,
                          points_per_iter=2, point_positive_weight=1.5, point_negative_weight=0.5)
    torch.manual_seed(0)
    built = CondInst.from_config(model_cfg, loss_cfg)
    torch.manual_seed(0)
    by_hand = CondInst(**_condinst_keys(model_cfg), loss=CondInstLoss(**dataclasses.asdict(loss_cfg)))
    assert vars(built.criterion) == vars(by_hand.criterion) == dataclasses.asdict(loss_cfg)
    for name in ("num_classes", "centre_sampling_radius", "size_ranges", "max_proposals", "score_threshold",
                 "pre_nms_top_k", "nms_threshold", "detections_per_image", "mask_threshold"):
        assert getattr(built, name) == getattr(model_cfg, name), name
    assert built.mask_stride == 8 and built.dynamic_head.shapes == by_hand.dynamic_head.shapes
    assert built.state_dict().keys() == by_hand.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), by_hand.state_dict().values()))


@pytest.mark.parametrize("loss, mask_keys", [
    (LossConfig(points=1.0), {"loss_mask_points"}),
    (LossConfig(points=0.0, full=1.0), {"loss_mask_full"}),
    (LossConfig(points=0.0, full=1.0, full_bce=0.5), {"loss_mask_full", "loss_mask_full_bce"}),
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


def test_predict_scales_boxes_by_original_over_resized(tiny_model):
    """At 1x the boxes are the network's; at 2x exactly twice those (boxes clamped to the image would hide
    a scale applied the wrong way round in a check of bounds alone)."""
    model = tiny_model(score_threshold=0.0, detections_per_image=7).eval()
    images, sizes, _ = batch()
    same = model.predict(images, sizes, sizes)
    double = model.predict(images, sizes, [(2 * h, 2 * w) for h, w in sizes])
    with torch.no_grad():
        outputs = model(images)
    for i, (at_1x, at_2x) in enumerate(zip(same, double)):
        assert len(at_1x.scores) > 0 and torch.equal(at_1x.scores, at_2x.scores)
        height, width = sizes[i]
        assert at_1x.masks.shape[-2:] == (height, width) and at_2x.masks.shape[-2:] == (2 * height, 2 * width)
        assert torch.allclose(at_2x.boxes, 2 * at_1x.boxes)
        # At 1x, the regressed boxes themselves (those inside the valid area, which clamping leaves alone).
        boxes = at_1x.boxes
        inside = (boxes[:, 0] > 0) & (boxes[:, 1] > 0) & (boxes[:, 2] < width) & (boxes[:, 3] < height)
        candidates = torch.nonzero(inside).squeeze(1)
        assert len(candidates) > 0
        decoded = model.decode_boxes(outputs, i, torch.arange(outputs.locations.shape[0]))
        for box in at_1x.boxes[candidates]:
            assert torch.isclose(decoded, box, atol=1e-4).all(dim=1).any()


def test_full_mask_loss_leaves_out_instances_whose_mask_is_not_known():
    """AFIS trains on some masks only: proposals of a GT with ``mask_known`` False add nothing to the Dice loss,
    whatever its (empty) mask holds; by hand, the loss is the Dice over the known GTs' proposals alone."""
    from apis.modeling.mask_losses import loss_full, masks_at_stride

    images, sizes, targets = batch()
    stride = 4
    logits = torch.randn(3, HEIGHT // stride, WIDTH // stride, generator=torch.Generator().manual_seed(1))
    image_index, local_gt = torch.tensor([0, 0, 0]), torch.tensor([0, 1, 1])  # proposals of GT 0, 1, 1
    criterion = CondInstLoss(points=0.0, full=1.0)
    targets[0]["mask_known"] = torch.tensor([False, True])
    losses, _ = criterion.mask_losses(logits, stride, targets, image_index, local_gt, images, sizes, 0)
    second = masks_at_stride(targets[0]["masks"][[1, 1]], stride)
    expected = loss_full(logits[1:], second)["loss_mask_full"]
    assert losses["loss_mask_full"].item() == pytest.approx(expected.item(), rel=1e-6)
    targets[0]["masks"][0] = 1  # the unknown mask's content is never read
    again, _ = criterion.mask_losses(logits, stride, targets, image_index, local_gt, images, sizes, 0)
    assert again["loss_mask_full"].item() == pytest.approx(expected.item(), rel=1e-6)
    targets[0]["mask_known"] = torch.tensor([False, False])
    none, _ = criterion.mask_losses(logits.requires_grad_(), stride, targets, image_index, local_gt, images, sizes, 0)
    assert none["loss_mask_full"].item() == 0.0 and none["loss_mask_full"].requires_grad
    del targets[0]["mask_known"]  # without flags every mask is known, as before
    every, _ = criterion.mask_losses(logits, stride, targets, image_index, local_gt, images, sizes, 0)
    both = masks_at_stride(targets[0]["masks"][[0, 1, 1]], stride)
    assert every["loss_mask_full"].item() == pytest.approx(loss_full(logits, both)["loss_mask_full"].item(), rel=1e-6)


@pytest.mark.parametrize(("feature_stride", "out_stride", "window"), [(4, 4, True), (4, 2, True), (8, 4, True)])
def test_finer_mask_paths_train_and_predict(feature_stride, out_stride, window, tiny_model):
    loss = LossConfig(points=0.1, full=1.0, box=1.0)
    model = tiny_model(loss, mask_feature_stride=feature_stride, mask_out_stride=out_stride, mask_head_window=window)
    assert model.mask_branch.stride == feature_stride and model.mask_stride == out_stride
    images, sizes, targets = batch()
    outputs = model(images)
    assert outputs.mask_features.shape == (2, 8, HEIGHT // feature_stride, WIDTH // feature_stride)
    logits = model.mask_logits(outputs, torch.tensor([0, 1]), torch.tensor([5, 40]))
    assert logits.shape == (2, HEIGHT // out_stride, WIDTH // out_stride)
    losses = model.losses(images, sizes, targets, iteration=100)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    if feature_stride == 4:
        assert model.mask_branch.refine_fine[0].weight.grad.abs().sum() > 0  # C2 is read and trained through
    model.eval()
    found = model.predict(images, sizes, [(60, 90), (64, 80)])
    assert [f.masks.shape[1:] for f in found] == [(60, 90), (64, 80)]
