import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from apis.config import DataConfig
from apis.data.coco import load_coco
from apis.data.coords import box_pixel_range, continuous_to_index
from apis.data.dataset import (
    InferenceDataset,
    InfiniteSampler,
    TrainingDataset,
    collate,
    random_points,
)


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def _disc(height, width, cx, cy, r):
    yy, xx = np.mgrid[:height, :width]
    return (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r ** 2


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    """Three images: two discs + a crowd region, one disc, and one image with only a crowd region."""
    root = tmp_path_factory.mktemp("tiny_coco")
    (root / "images").mkdir()
    (root / "annotations").mkdir()
    specs = {1: (32, 48, [(1, 12, 12, 7, 0), (2, 34, 18, 9, 0), (3, 40, 5, 4, 1)]),
             2: (40, 40, [(4, 20, 20, 12, 0)]),
             3: (32, 32, [(5, 16, 16, 6, 1)])}
    images, annotations = [], []
    rng = np.random.default_rng(0)
    for image_id, (height, width, objects) in specs.items():
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": width, "height": height})
        for ann_id, cx, cy, r, crowd in objects:
            mask = _disc(height, width, cx, cy, r)
            ys, xs = np.nonzero(mask)
            bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": 7 if ann_id != 2 else 9,
                                "bbox": bbox, "area": float(mask.sum()), "iscrowd": crowd,
                                "segmentation": _rle(mask)})
    path = root / "annotations" / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 7, "name": "a"}, {"id": 9, "name": "b"}]}))
    return path


def _gt_mask(json_path, ann_id):
    data = json.loads(json_path.read_text())
    ann = next(a for a in data["annotations"] if a["id"] == ann_id)
    return mask_utils.decode(ann["segmentation"]).astype(bool)


def test_random_points_lie_in_the_box_and_carry_the_gt_label(tiny_coco):
    coco = load_coco(tiny_coco)
    points = random_points(coco, 5, seed=3)
    assert sorted(points) == [1, 2, 4]  # crowd annotations 3 and 5 get no points
    for ann_id, instance_points in points.items():
        instance = coco.instance(ann_id)
        record = coco.image(instance.image_id)
        xs, ys, xe, ye = box_pixel_range(*instance.bbox_xyxy, record.width, record.height)
        x, y = instance_points.coords[:, 0], instance_points.coords[:, 1]
        assert len(instance_points) == 5 and len({(int(a), int(b)) for a, b in zip(x, y)}) == 5
        assert ((xs <= x) & (x < xe) & (ys <= y) & (y < ye)).all()
        assert np.array_equal(instance_points.labels, _gt_mask(tiny_coco, ann_id)[y, x].astype(np.int64))
    again = random_points(coco, 5, seed=3)
    assert all(np.array_equal(again[a].coords, points[a].coords) for a in points)
    other = random_points(coco, 5, seed=4)
    assert any(not np.array_equal(other[a].coords, points[a].coords) for a in points)
    # An instance's points do not depend on the other images loaded.
    alone = random_points(coco.subset(1), 5, seed=3)
    assert sorted(alone) == [1, 2] and np.array_equal(alone[2].coords, points[2].coords)


def test_training_never_reads_masks_without_full_supervision(tiny_coco, monkeypatch):
    coco = load_coco(tiny_coco)
    monkeypatch.setattr(type(coco), "masks", lambda self, purpose: pytest.fail(f"masks read for {purpose}"))
    dataset = TrainingDataset(coco, None, DataConfig(min_size_train=[32], max_size=100), with_masks=False, seed=0)
    sample = dataset[(0, 0)]
    assert "masks" not in sample["target"]


def test_training_reads_only_the_masks_it_is_given(tiny_coco, monkeypatch):
    """AFIS: with ``mask_ids`` only those instances' masks are read; the others are empty, flagged unknown."""
    coco = load_coco(tiny_coco)
    masks = coco.masks("full-supervision")
    read, original = [], type(masks).mask
    monkeypatch.setattr(type(masks), "mask", lambda self, ann_id: read.append(ann_id) or original(self, ann_id))
    monkeypatch.setattr(type(coco), "masks", lambda self, purpose: masks)
    dataset = TrainingDataset(coco, None, DataConfig(min_size_train=[32], max_size=100), with_masks=True, seed=0,
                              mask_ids={2})
    target = dataset[(0, 0)]["target"]
    assert target["ann_ids"].tolist() == [1, 2] and read == [2]
    assert target["mask_known"].tolist() == [False, True]
    assert target["masks"][0].sum() == 0


def test_training_sample_has_no_crowd_and_consistent_geometry(tiny_coco):
    coco = load_coco(tiny_coco)
    points = random_points(coco, 6, seed=0)
    # Scales 1 and 2 keep nearest-neighbour masks exact, so every point must read its own label.
    cfg = DataConfig(min_size_train=[32, 64], max_size=1000, hflip_prob=0.5)
    dataset = TrainingDataset(coco, points, cfg, with_masks=True, seed=5)
    assert [r.image_id for r in dataset.images] == [1, 2]  # image 3 has only a crowd region
    seen = set()
    for position in range(12):
        sample = dataset[(0, position)]
        target = sample["target"]
        assert target["ann_ids"].tolist() == [1, 2]
        assert target["labels"].tolist() == [0, 1]  # category 7 -> 0, 9 -> 1
        sx, sy = sample["scale"]
        height, width = sample["image"].shape[1:]
        assert sample["original_size"] == (32, 48) and (sx, sy) == (width / 48, height / 32)
        original = torch.tensor([coco.instance(a).bbox_xyxy for a in (1, 2)]) * torch.tensor([sx, sy, sx, sy])
        if sample["flip"]:
            original = torch.stack([width - original[:, 2], original[:, 1], width - original[:, 0],
                                    original[:, 3]], 1)
        assert torch.allclose(target["boxes"], original)
        index = continuous_to_index(target["points"].numpy())
        for row in range(2):
            read = target["masks"][row].numpy()[index[row, :, 1], index[row, :, 0]]
            assert np.array_equal(read, target["point_labels"][row].numpy())
        seen.add((sx, sample["flip"]))
    assert len(seen) == 4  # both scales and both flips occur
    assert torch.equal(dataset[(1, 7)]["image"], dataset[(1, 7)]["image"])


def test_infinite_sampler_resumes_and_shards():
    def keys(sampler, count):
        iterator = iter(sampler)
        return [next(iterator) for _ in range(count)]

    full = keys(InfiniteSampler(5, 4, seed=1), 40)
    for epoch in range(8):
        assert sorted(i for i, _ in full[5 * epoch:5 * epoch + 5]) == [0, 1, 2, 3, 4]
    assert [p for _, p in full] == list(range(40))
    assert keys(InfiniteSampler(5, 4, seed=1, start_iter=3), 28) == full[12:]
    assert full[:5] != keys(InfiniteSampler(5, 4, seed=2), 5)
    rank0 = keys(InfiniteSampler(5, 4, seed=1, start_iter=2, rank=0, world_size=2), 10)
    rank1 = keys(InfiniteSampler(5, 4, seed=1, start_iter=2, rank=1, world_size=2), 10)
    for t in range(5):  # iteration 2 + t: the two halves of the single-process batch
        assert rank0[2 * t:2 * t + 2] + rank1[2 * t:2 * t + 2] == full[8 + 4 * t:12 + 4 * t]
    with pytest.raises(ValueError, match="not divisible"):
        InfiniteSampler(5, 3, seed=0, world_size=2)


def test_worker_processes_load_the_same_batches(tiny_coco):
    dataset = TrainingDataset(load_coco(tiny_coco), None, DataConfig(min_size_train=[32, 48, 64], max_size=200),
                              with_masks=False, seed=1)

    def first_batches(num_workers):
        loader = torch.utils.data.DataLoader(dataset, batch_size=2, sampler=InfiniteSampler(len(dataset), 2, 1),
                                             num_workers=num_workers, collate_fn=collate)
        batches = iter(loader)
        return [next(batches) for _ in range(4)]

    for a, b in zip(first_batches(0), first_batches(2)):
        assert torch.equal(a.images, b.images) and a.metas == b.metas


def test_collate_pads_to_multiples_of_the_divisibility():
    samples = []
    for height, width, n in ((50, 70, 2), (64, 40, 1)):
        image = torch.rand(3, height, width) * 255
        masks = torch.ones((n, height, width), dtype=torch.uint8)
        samples.append({"image": image, "target": {"boxes": torch.zeros(n, 4), "masks": masks},
                        "image_id": height, "original_size": (height, width), "scale": (1.0, 1.0)})
    batch = collate(samples, size_divisibility=32)
    assert batch.images.shape == (2, 3, 64, 96)
    assert batch.image_sizes == [(50, 70), (64, 40)]
    assert torch.equal(batch.images[0, :, :50, :70], samples[0]["image"])
    assert batch.images[0, :, 50:].abs().sum() == 0 and batch.images[0, :, :, 70:].abs().sum() == 0
    assert batch.targets[1]["masks"].shape == (1, 64, 96)
    assert batch.targets[1]["masks"].sum() == 64 * 40
    assert batch.metas[0] == {"image_id": 50, "original_size": (50, 70), "scale": (1.0, 1.0)}
    assert samples[0]["target"]["masks"].shape == (2, 50, 70)  # the samples themselves are not padded


def test_inference_dataset_resizes_without_targets(tiny_coco):
    coco = load_coco(tiny_coco)
    dataset = InferenceDataset(coco, min_size=64, max_size=80, max_images=2)
    assert len(dataset) == 2
    sample = dataset[0]
    assert sample["image"].shape == (3, 53, 80)  # 32x48 -> short 64 would give 96 wide: capped at 80
    assert sample["scale"] == (80 / 48, 53 / 32) and not sample["flip"]
    batch = collate([dataset[0], dataset[1]])
    assert batch.targets is None and batch.images.shape == (2, 3, 64, 96)  # 40x40 -> 64x64
