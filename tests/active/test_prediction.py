"""Prediction sets over a dataset: views (scales, flips), models, their combination, and selection with them."""

import pytest
import torch

from apis.active.prediction import (
    SelectionImages,
    image_prediction_sets,
    select_with_models,
    unflip,
    views,
)
from apis.active.strategies import get_metric
from apis.config import to_dict
from apis.config_loading import load_config
from apis.data.coco import load_coco
from apis.data.dataset import collate
from apis.engine.checkpoint import save_checkpoint
from apis.modeling.condinst import CondInst
from apis.structures import PredictionSet


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


def test_image_sets_concatenate_views_then_models_and_unflip_mirrored_views():
    """K = views x models members, in that order; a mirrored view is brought back to the original grid, and
    a view whose grid lands elsewhere (a tiny box mirrored one pixel off) is left out."""
    width = 20
    ramp = torch.arange(4.0) / 10  # along x on the original grid (13..16)

    class FakeModel:
        """Model ``index``: one member per view, a ramp raised by ``0.01 * (index + 2 * view)``."""

        def __init__(self, index):
            self.index = index

        def prediction_sets(self, images, image_sizes, targets, original_sizes, scale_factors):
            view = int(images[0, 0, 0, 0])
            level = ramp + 0.01 * (self.index + 2 * view)
            if view == 1:  # mirrored: the grid is at x' = 20 - 17 = 3..6 and the ramp runs the other way
                return [{5: PredictionSet(5, (3, 2), level.flip(0).expand(1, 3, 4).clone())}]
            origin = (12, 2) if view == 2 else (13, 2)
            return [{5: PredictionSet(5, origin, level.expand(1, 3, 4).clone())}]

    def sample(view, flip):
        return {"image": torch.full((3, 10, width), float(view)), "target": {"boxes": torch.zeros(1, 4)},
                "image_id": 1, "original_size": (10, width), "scale": (1.0, 1.0), "flip": flip}

    sets = image_prediction_sets([FakeModel(0), FakeModel(1)], [sample(0, False), sample(1, True), sample(2, False)],
                                 torch.device("cpu"))
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
            (sets,) = model.prediction_sets(batch.images, batch.image_sizes, batch.targets,
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
