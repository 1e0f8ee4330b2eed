"""Prediction sets from CondInst's outputs: anchors, scales (with flips), models, and their combination."""

import pytest
import torch

from apis.active import prediction
from apis.active.prediction import (
    SelectionImages,
    anchor_prediction_sets,
    image_prediction_sets,
    select_with_models,
    unflip,
    views,
)
from apis.active.strategies import get_metric
from apis.config import ModelConfig, load_config, to_dict
from apis.data.coco import load_coco
from apis.data.coords import box_pixel_range
from apis.data.dataset import collate
from apis.engine.checkpoint import save_checkpoint
from apis.modeling.condinst import CondInst
from apis.modeling.fcos import assign_locations, level_locations
from apis.modeling.postprocess import sample_box_grid
from apis.structures import PredictionSet

HEIGHT, WIDTH = 64, 96
STRIDES = (8, 16, 32, 64, 128)


def tiny_model(seed=0, **kwargs):
    """A ResNet-18 CondInst built with plain keyword arguments, in eval mode."""
    torch.manual_seed(seed)
    settings = dict(depth=18, norm="bn", fpn_channels=32, mask_branch_channels=16, head_convs=1) | kwargs
    return CondInst(num_classes=3, **settings).eval()


def batch():
    """Two images of 64 x 96 (valid 60 x 90 and 64 x 80): two instances, then none."""
    torch.manual_seed(0)
    images = torch.rand(2, 3, HEIGHT, WIDTH) * 255
    first = {"boxes": torch.tensor([[10.0, 12.0, 38.0, 40.0], [50.0, 30.0, 86.0, 58.0]]),
             "labels": torch.tensor([0, 2]), "ann_ids": torch.tensor([11, 12])}
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
             "ann_ids": torch.zeros(0, dtype=torch.int64)}
    return images, [(60, 90), (64, 80)], [first, empty]


def test_anchor_sets_follow_the_assignment_and_the_box_grid():
    model = tiny_model()
    images, sizes, targets = batch()
    targets[0]["boxes"] = torch.cat([targets[0]["boxes"], torch.tensor([[30.0, 30.0, 31.0, 31.0]])])
    targets[0]["labels"] = torch.tensor([0, 2, 1])
    targets[0]["ann_ids"] = torch.tensor([11, 12, 13])
    originals = [(120, 180), (64, 80)]
    scales = [(90 / 180, 60 / 120), (1.0, 1.0)]
    running_mean = model.mask_branch.refine[0][1].running_mean.clone()
    sets = anchor_prediction_sets(model, images, sizes, targets, originals, scales)
    assert torch.equal(model.mask_branch.refine[0][1].running_mean, running_mean)
    assert sets[1] == {}
    assert set(sets[0]) == {11, 12, 13}

    pyramid_sizes = [(HEIGHT // s, WIDTH // s) for s in (8, 16, 32)] + [(1, 2), (1, 1)]  # P6, P7: stride-2 convs
    locations, levels = level_locations(pyramid_sizes, STRIDES, torch.device("cpu"))
    gt_index, _ = assign_locations(locations, levels, targets[0]["boxes"], STRIDES, ModelConfig().size_ranges, 1.5)
    for g, ann_id in enumerate([11, 12, 13]):
        found = sets[0][ann_id]
        x0, y0, x1, y1 = (targets[0]["boxes"][g] * 2).tolist()
        xs, ys, xe, ye = box_pixel_range(x0, y0, x1, y1, 180, 120)
        members = int((gt_index == g).sum())
        assert found.ann_id == ann_id and found.origin == (xs, ys)
        assert found.probs.shape == (members, ye - ys, xe - xs)
        assert found.boxes.shape == (members, 4) and found.scores.shape == (members,)
        assert ((found.probs >= 0) & (found.probs <= 1)).all()
    assert sets[0][13].probs.shape[0] == 0  # 1-pixel box: no location strictly inside its centre region

    model.train()
    with pytest.raises(RuntimeError, match="eval"):
        anchor_prediction_sets(model, images, sizes, targets, originals, scales)


@pytest.mark.parametrize("chunk", [3, 128])
def test_anchor_set_members_match_a_direct_computation(monkeypatch, chunk):
    """Members of each GT, their probabilities and scores, whether GTs share a dynamic-head pass (128) or
    each needs its own (3 < members per GT)."""
    model = tiny_model()
    images, sizes, targets = batch()
    originals = [(120, 180), (64, 80)]
    scales = [(0.5, 0.5), (1.0, 1.0)]
    monkeypatch.setattr(prediction, "MEMBERS_PER_CHUNK", chunk)
    sets = anchor_prediction_sets(model, images, sizes, targets, originals, scales)[0]
    with torch.no_grad():
        outputs = model(images)
        gt_index, _ = model.assign(outputs, [t["boxes"] for t in targets])
        for g, ann_id in enumerate([11, 12]):
            members = torch.nonzero(gt_index[0] == g).squeeze(1)
            logits = model.dynamic_head(outputs.mask_features, outputs.head.controller[0, members],
                                        outputs.locations[members], outputs.levels[members],
                                        torch.zeros_like(members))
            box = (targets[0]["boxes"][g] * 2).tolist()
            origin, grid = sample_box_grid(logits, 4, box, (0.5, 0.5), (120, 180))
            label = int(targets[0]["labels"][g])
            scores = (outputs.head.class_logits[0, members, label].sigmoid()
                      * outputs.head.centreness_logits[0, members].sigmoid()).sqrt()
            found = sets[ann_id]
            assert found.origin == origin
            assert torch.allclose(found.probs, grid.sigmoid(), atol=1e-6)
            assert torch.allclose(found.scores, scores, atol=1e-6)
            assert len(members) > 3


def test_views_are_the_test_size_or_every_scale_with_its_mirror():
    cfg = load_config(None, ["data.min_size_test=64", "selection.scales=[48,80]"])
    assert views(cfg) == [(64, False)]
    cfg.selection.flips = True  # flips belong to the scales set: alone they change nothing
    assert views(cfg) == [(64, False)]
    cfg.selection.sets = ["anchors", "scales"]
    assert views(cfg) == [(48, False), (48, True), (80, False), (80, True)]
    cfg.selection.flips = False
    assert views(cfg) == [(48, False), (80, False)]


def test_unflip_by_hand():
    """Pixel x' of a mirrored image of width W is pixel W - 1 - x' of the original; boxes map x -> W - x."""
    probs = torch.arange(8.0).view(1, 2, 4) / 10  # grid x' = 2..5, y = 1..2 of the mirrored image
    pred = PredictionSet(3, (2, 1), probs, boxes=torch.tensor([[2.0, 1.0, 6.5, 3.0]]), scores=torch.tensor([0.7]))
    back = unflip(pred, width=10)
    assert back.ann_id == 3 and back.origin == (4, 1)  # x' = 5..2 -> x = 4..7
    assert back.probs[0, 0].tolist() == pytest.approx([0.3, 0.2, 0.1, 0.0])  # x = 4 was x' = 5
    assert back.probs[0, 1].tolist() == pytest.approx([0.7, 0.6, 0.5, 0.4])
    assert back.boxes.tolist() == [[3.5, 1.0, 8.0, 3.0]]
    assert back.scores.tolist() == pytest.approx([0.7])
    assert unflip(back, width=10).origin == pred.origin and torch.equal(unflip(back, width=10).probs, probs)


def test_selection_views_mirror_the_image_and_its_boxes(synth_dir):
    coco = load_coco(synth_dir / "annotations" / "train.json")
    plain, mirrored = SelectionImages(coco, [(64, False), (64, True)], 128)[0]
    assert torch.equal(mirrored["image"], plain["image"].flip(-1))
    width = plain["image"].shape[-1]
    x0, y0, x1, y1 = plain["target"]["boxes"].unbind(1)
    assert torch.allclose(mirrored["target"]["boxes"], torch.stack([width - x1, y0, width - x0, y1], dim=1))
    assert (plain["flip"], mirrored["flip"]) == (False, True)


def test_image_sets_concatenate_views_then_models_and_unflip_mirrored_views(monkeypatch):
    """K = views x models members, in that order; a mirrored view is brought back to the original grid, and
    a view whose grid lands elsewhere (a tiny box mirrored one pixel off) is left out."""
    width = 20
    ramp = torch.arange(4.0) / 10  # along x on the original grid (13..16)

    def fake_anchor_sets(model, images, image_sizes, targets, original_sizes, scale_factors):
        view = int(images[0, 0, 0, 0])
        level = ramp + 0.01 * (model + 2 * view)
        if view == 1:  # mirrored: the grid is at x' = 20 - 17 = 3..6 and the ramp runs the other way
            return [{5: PredictionSet(5, (3, 2), level.flip(0).expand(1, 3, 4).clone())}]
        origin = (12, 2) if view == 2 else (13, 2)
        return [{5: PredictionSet(5, origin, level.expand(1, 3, 4).clone())}]

    monkeypatch.setattr(prediction, "anchor_prediction_sets", fake_anchor_sets)

    def sample(view, flip):
        return {"image": torch.full((3, 10, width), float(view)), "target": {"boxes": torch.zeros(1, 4)},
                "image_id": 1, "original_size": (10, width), "scale": (1.0, 1.0), "flip": flip}

    sets = image_prediction_sets([0, 1], [sample(0, False), sample(1, True), sample(2, False)], torch.device("cpu"))
    combined = sets[5]
    assert combined.origin == (13, 2) and combined.k == 4
    for k, (view, model) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        assert torch.allclose(combined.probs[k, 0], ramp + 0.01 * (model + 2 * view)), (view, model)


@pytest.fixture
def two_checkpoints(synth_dir, tmp_path):
    """A tiny config on the synthetic data and two differently initialised checkpoints of it."""
    cfg = load_config(None, [
        f"data.train_json={synth_dir / 'annotations' / 'train.json'}", "device=cpu", "model.num_classes=4",
        "model.depth=18", "model.norm=bn", "model.fpn_channels=16", "model.mask_branch_channels=16",
        "model.head_convs=1", "data.min_size_test=64", "data.max_size=96", "data.num_workers=0",
        "selection.sets=[anchors,models]"])
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = CondInst.from_config(cfg.model, cfg.loss)
        paths.append(str(save_checkpoint(tmp_path / f"m{seed}.pth", {"model": model.state_dict(), "iteration": 0,
                                                                         "config": to_dict(cfg)})))
    return cfg, paths


def test_models_set_holds_every_member_of_every_model(two_checkpoints):
    cfg, paths = two_checkpoints
    dataset = load_coco(cfg.data.train_json)
    points = select_with_models(paths, cfg, dataset, get_metric("entropy"), asked={}, seed=(0, 1), progress=False)
    expected_k = {}
    models = []
    for path in paths:
        model = CondInst.from_config(cfg.model, cfg.loss)
        model.load_state_dict(torch.load(path, weights_only=True)["model"])
        models.append(model.eval())
    for (sample,) in SelectionImages(dataset, [(64, False)], 96):
        batch = collate([sample])
        for model in models:
            (sets,) = anchor_prediction_sets(model, batch.images, batch.image_sizes, batch.targets,
                                             [sample["original_size"]], [sample["scale"]])
            for ann_id, pred in sets.items():
                expected_k[ann_id] = expected_k.get(ann_id, 0) + pred.k
    assert sorted(p.ann_id for p in points) == sorted(inst.ann_id for inst in dataset.instances())
    assert {p.ann_id: p.k for p in points} == expected_k
    assert any(k > 0 for k in expected_k.values())


def test_selection_of_an_image_does_not_depend_on_the_other_images(two_checkpoints):
    """Each instance's draw is keyed by its annotation id: selecting on any part of the images (a rank's shard)
    chooses the points the whole set chooses there. The random metric draws for every instance, so a
    shared stream would shift every later choice."""
    cfg, paths = two_checkpoints
    dataset = load_coco(cfg.data.train_json)
    metric = get_metric("random")
    whole = select_with_models(paths[:1], cfg, dataset, metric, asked={}, seed=(3, 1), progress=False)
    ids = [im.image_id for im in dataset.images]
    parts = [select_with_models(paths[:1], cfg, dataset.only_images(set(ids[i::2])), metric, asked={}, seed=(3, 1),
                                progress=False) for i in (1, 0)]
    assert sorted(parts[0] + parts[1], key=lambda p: p.ann_id) == sorted(whole, key=lambda p: p.ann_id)
    again = select_with_models(paths[:1], cfg, dataset, metric, asked={}, seed=(4, 1), progress=False)
    assert {(p.x, p.y) for p in again} != {(p.x, p.y) for p in whole}  # the seed matters
