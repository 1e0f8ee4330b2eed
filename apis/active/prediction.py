"""Prediction sets over a whole training set, streamed image by image into point selection.

The set of one instance holds K mask probability maps over its box's candidate pixels (docs/design.md,
"The method"):

* ``anchors``: the members the model itself gives the GT in one forward pass: CondInst's locations that
  training-time assignment gives it (:mod:`apis.modeling.anchor_sets`), Mask R-CNN's positive proposals
  (:meth:`apis.modeling.mask_rcnn.MaskRCNNPoints.prediction_sets`);
* ``scales``: the same at every short edge in ``selection.scales`` (and mirrored, with ``flips``);
* ``models``: the same from every model of the ensemble (one checkpoint per seed).

Nothing is accumulated across images: each image's sets are turned into selected points before
the next image is read, so memory does not grow with the dataset.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence, Set

import numpy as np
import torch
from tqdm import tqdm

from apis.active.allocation import allocate, ranked_points
from apis.active.selection import combine_sets, crop_to_grid, select_point
from apis.active.strategies import PointMetric
from apis.config import ExperimentConfig
from apis.data.coco import CocoDataset, GroundTruthMasks
from apis.data.dataset import collate, image_to_tensor
from apis.data.transforms import ResizeFlip, resized_size
from apis.engine.distributed import DistributedContext, all_gather_objects, in_dataset_order, shard_images
from apis.modeling.build import InstanceModel
from apis.structures import PredictionSet, SelectedPoint

logger = logging.getLogger(__name__)


def views(cfg: ExperimentConfig) -> list[tuple[int, bool]]:
    """The ``(short edge, flipped)`` views each image is run at."""
    scales = cfg.selection.scales if "scales" in cfg.selection.sets else [cfg.data.min_size_test]
    flips = (False, True) if ("scales" in cfg.selection.sets and cfg.selection.flips) else (False,)
    return [(scale, flip) for scale in scales for flip in flips]


class SelectionImages(torch.utils.data.Dataset):
    """Per image, one sample per view: the transformed image and its GT boxes (no masks, no points)."""

    def __init__(self, coco: CocoDataset, views: list[tuple[int, bool]], max_size: int):
        self.coco = coco
        self.images = [record for record in coco.images if record.instances]
        self.views = views
        self.max_size = max_size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> list[dict]:
        record = self.images[index]
        pixels = self.coco.load_image(record.image_id)
        boxes = torch.tensor([inst.bbox_xyxy for inst in record.instances], dtype=torch.float32)
        samples = []
        for short_edge, flip in self.views:
            size = resized_size(record.height, record.width, short_edge, self.max_size)
            transform = ResizeFlip((record.height, record.width), size, flip)
            target = {
                "boxes": transform.apply_boxes(boxes),
                "labels": torch.tensor([inst.label for inst in record.instances], dtype=torch.int64),
                "ann_ids": torch.tensor([inst.ann_id for inst in record.instances], dtype=torch.int64),
            }
            samples.append({"image": image_to_tensor(transform.apply_image(pixels)), "target": target,
                            "image_id": record.image_id, "original_size": (record.height, record.width),
                            "scale": transform.scale, "flip": flip})
        return samples


def unflip(pred: PredictionSet, width: int) -> PredictionSet:
    """A set computed on the mirrored image, brought back to the original pixel grid."""
    xs, ys = pred.origin
    w = pred.grid_shape[1]
    return PredictionSet(pred.ann_id, (width - (xs + w), ys), pred.probs.flip(-1), _unflip_boxes(pred.boxes, width),
                         pred.scores)


def _unflip_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    if boxes.numel() == 0:
        return boxes
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


@torch.no_grad()
def image_prediction_sets(models: Sequence[InstanceModel], samples: list[dict], device: torch.device
                          ) -> dict[int, PredictionSet]:
    """Every model on every view of one image, combined per instance along K (each model's sets:
    :meth:`~apis.modeling.condinst.CondInst.prediction_sets`, whatever its architecture)."""
    parts: dict[int, list[PredictionSet]] = {}
    for sample in samples:
        batch = collate([sample])
        images = batch.images.to(device)
        targets = [{k: v.to(device) for k, v in batch.targets[0].items()}]
        height, width = sample["original_size"]
        for model in models:
            (sets,) = model.prediction_sets(images, batch.image_sizes, targets, [sample["original_size"]],
                                            [sample["scale"]])
            for ann_id, pred in sets.items():
                pred = unflip(pred, width) if sample["flip"] else pred
                parts.setdefault(ann_id, []).append(_to_cpu(pred))
    combined = {}
    for ann_id, preds in parts.items():
        reference = preds[0]
        # A mirrored tiny box can land one pixel off its unmirrored grid; such members are left out.
        same_grid = [p for p in preds if p.origin == reference.origin and p.grid_shape == reference.grid_shape]
        combined[ann_id] = combine_sets(*same_grid) if len(same_grid) > 1 else reference
    return combined


def _to_cpu(pred: PredictionSet) -> PredictionSet:
    return PredictionSet(pred.ann_id, pred.origin, pred.probs.float().cpu(), pred.boxes.float().cpu(),
                         pred.scores.float().cpu())


def _keep_views(samples: list[dict]) -> list[dict]:
    return samples


def iter_prediction_sets(models: Sequence[InstanceModel], cfg: ExperimentConfig, dataset: CocoDataset,
                         device: torch.device, progress: bool = True, desc: str = "selecting"
                         ) -> Iterator[dict[int, PredictionSet]]:
    """Per image (in dataset order), ``{ann_id: PredictionSet}``; images are read by worker processes.
    ``desc`` names the work on the progress bar."""
    images = SelectionImages(dataset, views(cfg), cfg.data.max_size)
    loader = torch.utils.data.DataLoader(images, batch_size=None, num_workers=cfg.data.num_workers,
                                         collate_fn=_keep_views)
    for samples in tqdm(loader, desc=desc, unit="img", disable=not progress, total=len(images)):
        yield image_prediction_sets(models, samples, device)


def instance_rng(seed: Sequence[int], ann_id: int) -> np.random.Generator:
    """The random stream of one instance's choice: keyed by ``seed`` (the run's seed and step) and the
    annotation id, so a choice does not depend on which instances were visited before it (nor on which
    process visits it)."""
    return np.random.default_rng([*seed, ann_id % 2**64])


def select_with_models(checkpoints: list[str], cfg: ExperimentConfig, dataset: CocoDataset, metric: PointMetric,
                       asked: Mapping[int, Set[tuple[int, int]]], seed: Sequence[int],
                       gt_masks: GroundTruthMasks | None = None, progress: bool = True,
                       ctx: DistributedContext | None = None) -> list[SelectedPoint]:
    """The step's points of ``dataset``'s instances, chosen by ``metric`` on the models' prediction sets.

    ``selection.allocation=per_instance``: one point per instance; ``global``: as many points in all, spent
    where they score highest (:mod:`apis.active.allocation`). Pure inference: every model is in eval mode and
    no gradient is kept. Each instance's random tie-break comes from :func:`instance_rng` with ``seed`` (and
    the global allocation's from ``seed`` alone), and the points come in image order, then annotation-id
    order, so the result is the same in one process or many.

    ``ctx``: under ``torchrun``, this rank selects on its shard of the images
    (:func:`apis.engine.distributed.shard_images`) and every rank gets all the points.
    """
    from apis.engine.inference import load_model
    from apis.utils.device import resolve_device

    ctx = ctx or DistributedContext()
    device = resolve_device(cfg.device, ctx.local_rank if ctx.enabled else None)
    models = [load_model(path, cfg, device) for path in checkpoints]
    shard = dataset.only_images(shard_images([im.image_id for im in dataset.images], ctx)) if ctx.enabled \
        else dataset
    per_instance = cfg.selection.allocation == "per_instance"
    chosen: list[tuple[int, list[SelectedPoint]]] = []  # (annotation id, its points), in visiting order
    for sets in iter_prediction_sets(models, cfg, shard, device, progress and ctx.is_main):
        for ann_id in sorted(sets):
            pred = sets[ann_id]
            gt = crop_to_grid(gt_masks.mask(ann_id), pred) if gt_masks is not None else None
            done, rng = asked.get(ann_id, frozenset()), instance_rng(seed, ann_id)
            if per_instance:
                point = select_point(pred, metric, rng, done, gt)
                chosen.append((ann_id, [point] if point is not None else []))
            else:
                chosen.append((ann_id, ranked_points(pred, metric, rng, cfg.selection.max_points_per_instance,
                                                     cfg.selection.min_point_distance, done, gt)))
    if ctx.enabled:
        chosen = in_dataset_order(all_gather_objects(chosen, ctx), [im.image_id for im in dataset.images],
                                  lambda entry: dataset.instance(entry[0]).image_id)
    ranked = [points for _, points in chosen]
    if per_instance:
        return [point for points in ranked for point in points]
    return allocate(ranked, budget=sum(1 for points in ranked if points), rng=np.random.default_rng(list(seed)))
