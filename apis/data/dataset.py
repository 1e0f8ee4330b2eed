"""Training and inference samples over a :class:`~apis.data.coco.CocoDataset`, the resumable sampler
and the batch collation the model expects.

Every random choice of a training sample (scale, flip) is drawn from a generator
seeded by ``(seed, stream position)``, where the stream position is the sample's place in the
endless sequence the :class:`InfiniteSampler` produces. A sample therefore looks the same whichever
worker process loads it, and a run resumed at iteration ``i`` sees exactly the batches an
uninterrupted run would.

Coordinates follow :mod:`apis.data.coords`: boxes ``xyxy`` and points ``(x, y)`` are continuous, in
the frame of the resized image.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Set
from typing import NamedTuple

import numpy as np
import torch

from apis.config import DataConfig
from apis.data.coco import CocoDataset, ImageRecord
from apis.data.coords import box_pixel_range
from apis.data.points import InstancePoints, to_tensors
from apis.data.simulated_oracle import SimulatedOracle
from apis.data.transforms import ResizeFlip, inference_transform, sample_train_transform

NO_POINTS = InstancePoints(np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64))


def random_points(coco: CocoDataset, n: int, seed: int, oracle: SimulatedOracle | None = None
                  ) -> dict[int, InstancePoints]:
    """``n`` points per non-crowd instance, uniform over its candidate pixels, labelled by an oracle.

    The stand-in for an annotator used by ``data.random_points_per_instance`` (PointSup's setting).
    Candidates are the pixels whose centres lie in the GT box (:func:`apis.data.coords.box_pixel_range`);
    points are distinct while the box has at least ``n`` pixels. Each instance draws from a generator
    seeded by ``(seed, ann_id)``, so its points do not depend on which other images are loaded.
    ``oracle`` defaults to a noise-free :class:`~apis.data.simulated_oracle.SimulatedOracle` on the GT masks
    (read with purpose "oracle").

    Returns:
        ``{ann_id: InstancePoints}`` with integer pixel indices in the original image.
    """
    if n < 1:
        raise ValueError(f"random_points needs n >= 1 points per instance, got {n}")
    if oracle is None:
        oracle = SimulatedOracle(coco.masks("oracle"))
    coords = {}
    for record in coco.images:
        for instance in record.instances:
            xs, ys, xe, ye = box_pixel_range(*instance.bbox_xyxy, record.width, record.height)
            rng = np.random.default_rng([seed, instance.ann_id])
            count = (xe - xs) * (ye - ys)
            flat = rng.choice(count, size=n, replace=count < n)
            coords[instance.ann_id] = np.stack([xs + flat % (xe - xs), ys + flat // (xe - xs)], axis=1).astype(np.int64)
    if not coords:
        return {}
    every = np.concatenate(list(coords.values()))
    labels = oracle.answer_many(np.repeat(list(coords), n), every[:, 0], every[:, 1]).reshape(-1, n)
    return {ann_id: InstancePoints(points, labels[index]) for index, (ann_id, points) in enumerate(coords.items())}


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """``uint8[H, W, 3]`` RGB -> ``float32[3, H, W]`` in 0..255 (the model normalises)."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))


def _meta(record: ImageRecord, transform: ResizeFlip) -> dict:
    return {"image_id": record.image_id, "original_size": (record.height, record.width),
            "scale": transform.scale, "flip": transform.flip}


class TrainingDataset(torch.utils.data.Dataset):
    """Training samples: an augmented image and its instances' boxes, classes, points (and masks).

    Images without non-crowd instances are left out (as detectron2 does by default); crowd
    instances are never included. ``data.max_train_images`` keeps the first N images.

    Args:
        coco: the training set.
        points: labelled points per annotation id; instances without an entry get no points.
            ``None``: no point supervision at all.
        cfg: resizing, flipping and the image subset.
        with_masks: read GT masks (purpose "full-supervision"): only for the fully supervised loss.
        seed: seeds every random choice together with the stream position.
        mask_ids: with ``with_masks``, read only these instances' masks (AFIS: the masks bought); the others
            get an empty mask and ``mask_known`` False, so the mask loss leaves them out. ``None``: all.

    Point augmentation (``loss.points_per_iter``) is the model's job: it sees all points of an instance.

    Indexed by ``(image index, stream position)`` keys from :class:`InfiniteSampler`. A sample is
    ``{"image": float32[3, h, w], "target": {...}, **meta}`` where target holds ``boxes [N, 4]``,
    ``labels [N]`` int64 (contiguous), ``ann_ids [N]`` int64, ``points [N, P, 2]`` float32,
    ``point_labels [N, P]`` float32 in {1, 0, -1} and, with masks, ``masks uint8[N, h, w]`` (with ``mask_ids``
    also ``mask_known bool[N]``); meta is
    ``image_id``, ``original_size (H, W)``, ``scale (sx, sy)`` and ``flip``.
    """

    def __init__(self, coco: CocoDataset, points: Mapping[int, InstancePoints] | None, cfg: DataConfig,
                 with_masks: bool, seed: int, mask_ids: Set[int] | None = None):
        self.coco = coco.subset(cfg.max_train_images)
        self.images = [record for record in self.coco.images if record.instances]
        if not self.images:
            raise ValueError(f"{coco.json_path}: no training image has a non-crowd instance")
        self.points = points
        self.cfg = cfg
        self.masks = self.coco.masks("full-supervision") if with_masks else None
        self.mask_ids = mask_ids
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, position = key
        rng = np.random.default_rng([self.seed, position])
        record = self.images[index]
        transform = sample_train_transform(record.height, record.width, self.cfg.min_size_train,
                                           self.cfg.max_size, self.cfg.hflip_prob, rng)
        image = transform.apply_image(self.coco.load_image(record.image_id))
        instances = record.instances
        boxes = torch.tensor([inst.bbox_xyxy for inst in instances], dtype=torch.float32).reshape(-1, 4)
        instance_points = [self._points_of(inst.ann_id) for inst in instances]
        coords, point_labels = transform.apply_points(*to_tensors(instance_points))
        target = {
            "boxes": transform.apply_boxes(boxes),
            "labels": torch.tensor([inst.label for inst in instances], dtype=torch.int64),
            "ann_ids": torch.tensor([inst.ann_id for inst in instances], dtype=torch.int64),
            "points": coords,
            "point_labels": point_labels,
        }
        if self.masks is not None:
            known = [self.mask_ids is None or inst.ann_id in self.mask_ids for inst in instances]
            empty = np.zeros((record.height, record.width), dtype=bool)
            masks = np.stack([self.masks.mask(inst.ann_id) if has else empty for inst, has in zip(instances, known)])
            target["masks"] = transform.apply_masks(torch.from_numpy(masks))
            if self.mask_ids is not None:
                target["mask_known"] = torch.tensor(known, dtype=torch.bool)
        return {"image": image_to_tensor(image), "target": target, **_meta(record, transform)}

    def _points_of(self, ann_id: int) -> InstancePoints:
        return NO_POINTS if self.points is None else self.points.get(ann_id, NO_POINTS)


class InferenceDataset(torch.utils.data.Dataset):
    """Images resized for inference (short edge ``min_size``, long edge at most ``max_size``, no flip).

    A sample is ``{"image": float32[3, h, w], "image_id", "original_size", "scale", "flip"}``.
    ``max_images > 0`` keeps the first N images.
    """

    def __init__(self, coco: CocoDataset, min_size: int, max_size: int, max_images: int = 0):
        self.coco = coco.subset(max_images)
        self.min_size = min_size
        self.max_size = max_size

    def __len__(self) -> int:
        return len(self.coco.images)

    def __getitem__(self, index: int) -> dict:
        record = self.coco.images[index]
        transform = inference_transform(record.height, record.width, self.min_size, self.max_size)
        image = transform.apply_image(self.coco.load_image(record.image_id))
        return {"image": image_to_tensor(image), **_meta(record, transform)}


class InfiniteSampler(torch.utils.data.Sampler):
    """Endless ``(image index, stream position)`` keys, epoch after epoch in a seeded random order.

    Stream position ``p`` belongs to epoch ``p // size`` and holds image ``perm_e[p % size]``, where
    ``perm_e`` is a permutation seeded by ``(seed, e)``. Iteration ``t`` consumes the global batch of
    positions ``[t * B, (t + 1) * B)``; rank ``r`` of ``world_size`` takes its contiguous share of
    ``B / world_size`` positions. Starting at ``start_iter`` therefore yields exactly what an
    uninterrupted stream would from there, and the ranks together see the single-process batches.
    """

    def __init__(self, size: int, global_batch_size: int, seed: int, start_iter: int = 0, rank: int = 0,
                 world_size: int = 1):
        if size < 1:
            raise ValueError("InfiniteSampler needs a dataset with at least one item")
        if global_batch_size % world_size:
            raise ValueError(f"batch size {global_batch_size} is not divisible by the {world_size} processes")
        self.size = size
        self.global_batch_size = global_batch_size
        self.batch_per_rank = global_batch_size // world_size
        self.seed = seed
        self.start_iter = start_iter
        self.rank = rank
        self._epoch = -1
        self._order = np.zeros(0, dtype=np.int64)

    def index_at(self, position: int) -> int:
        epoch = position // self.size
        if epoch != self._epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.size)
            self._epoch = epoch
        return int(self._order[position % self.size])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        iteration = self.start_iter
        while True:
            first = iteration * self.global_batch_size + self.rank * self.batch_per_rank
            for position in range(first, first + self.batch_per_rank):
                yield self.index_at(position), position
            iteration += 1


class Batch(NamedTuple):
    """A collated batch.

    ``images``: float32 ``[B, 3, Hp, Wp]``, zero-padded at the bottom/right to multiples of the size
    divisibility; ``image_sizes``: the valid ``(h, w)`` of each; ``targets``: per-image target dicts
    with masks padded to ``[N, Hp, Wp]`` (``None`` for inference samples); ``metas``: per-image
    ``image_id``, ``original_size``, ``scale``, ``flip``.
    """

    images: torch.Tensor
    image_sizes: list[tuple[int, int]]
    targets: list[dict] | None
    metas: list[dict]


def collate(samples: Iterable[dict], size_divisibility: int = 32) -> Batch:
    """Stack samples into a padded :class:`Batch`."""
    samples = list(samples)
    image_sizes = [(int(s["image"].shape[1]), int(s["image"].shape[2])) for s in samples]
    padded_h = math.ceil(max(h for h, _ in image_sizes) / size_divisibility) * size_divisibility
    padded_w = math.ceil(max(w for _, w in image_sizes) / size_divisibility) * size_divisibility
    images = samples[0]["image"].new_zeros((len(samples), 3, padded_h, padded_w))
    for i, (sample, (h, w)) in enumerate(zip(samples, image_sizes)):
        images[i, :, :h, :w] = sample["image"]
    targets = None
    if "target" in samples[0]:
        targets = [_pad_target(s["target"], padded_h, padded_w) for s in samples]
    metas = [{k: v for k, v in s.items() if k not in ("image", "target")} for s in samples]
    return Batch(images, image_sizes, targets, metas)


def _pad_target(target: dict, height: int, width: int) -> dict:
    if "masks" not in target:
        return dict(target)
    masks = target["masks"]
    padded = masks.new_zeros((masks.shape[0], height, width))
    padded[:, : masks.shape[1], : masks.shape[2]] = masks
    return {**target, "masks": padded}
