"""CondInst's prediction sets: the members training assigns each GT, against the assignment and a direct
computation."""

import pytest
import torch

from apis.config import ModelConfig
from apis.data.coords import box_pixel_range
from apis.modeling import anchor_sets
from apis.modeling.condinst import CondInst
from apis.modeling.fcos import assign_locations, level_locations
from apis.modeling.postprocess import sample_box_grid

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
    sets = model.prediction_sets(images, sizes, targets, originals, scales)
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
        model.prediction_sets(images, sizes, targets, originals, scales)


@pytest.mark.parametrize("chunk", [3, 128])
def test_anchor_set_members_match_a_direct_computation(monkeypatch, chunk):
    """Members of each GT, their probabilities and scores, whether GTs share a dynamic-head pass (128) or
    each needs its own (3 < members per GT)."""
    model = tiny_model()
    images, sizes, targets = batch()
    originals = [(120, 180), (64, 80)]
    scales = [(0.5, 0.5), (1.0, 1.0)]
    monkeypatch.setattr(anchor_sets, "MEMBERS_PER_CHUNK", chunk)
    sets = model.prediction_sets(images, sizes, targets, originals, scales)[0]
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
