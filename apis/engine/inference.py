"""Inference over a dataset: checkpoint -> model -> COCO results -> mask and box AP.

Images are resized like at test time (``data.min_size_test``, ``data.max_size``), predicted in
batches and turned into COCO results image by image, so memory does not grow with the dataset
beyond the (RLE-compressed) results themselves.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from apis.config import ConfigError, ExperimentConfig
from apis.config_loading import config_from_dict
from apis.config_versions import UNVERSIONED
from apis.data.coco import CocoDataset, load_coco
from apis.data.dataset import InferenceDataset, collate
from apis.engine.checkpoint import load_checkpoint, load_model_weights
from apis.engine.distributed import (
    DistributedContext,
    broadcast_from_main,
    gather_to_main,
    in_dataset_order,
    run_on_main,
    shard_images,
)
from apis.evaluation.coco_eval import evaluate
from apis.evaluation.results import detections_to_results, write_results
from apis.modeling.build import InstanceModel, build_model
from apis.utils.device import resolve_device


def load_model(checkpoint: str | Path | dict, cfg: ExperimentConfig, device: torch.device) -> InstanceModel:
    """The model ``cfg.model`` describes (CondInst or Mask R-CNN), with the checkpoint's weights (a file or a loaded
    checkpoint dict), on ``device``, in eval mode."""
    model = build_model(cfg.model, cfg.loss)
    load_model_weights(model, checkpoint)
    return model.to(device).eval()


def run_inference(model: nn.Module, coco: CocoDataset, cfg: ExperimentConfig, device: torch.device,
                  batch_size: int = 1, progress: bool | None = None) -> list[dict]:
    """COCO results (masks as RLE, boxes ``xywh``, COCO category ids) for every image of ``coco``.

    The model is run in eval mode without gradients and put back in its previous mode afterwards.
    ``progress``: show a progress bar (default: when stderr is a terminal).
    """
    dataset = InferenceDataset(coco, cfg.data.min_size_test, cfg.data.max_size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         num_workers=cfg.data.num_workers, collate_fn=collate)
    category_ids = np.asarray(coco.category_ids)
    was_training = model.training
    model.eval()
    results: list[dict] = []
    show = sys.stderr.isatty() if progress is None else progress
    try:
        with torch.no_grad():
            for batch in tqdm(loader, desc="inference", unit="batch", disable=not show):
                detections = model.predict(batch.images.to(device), batch.image_sizes,
                                           [meta["original_size"] for meta in batch.metas])
                for meta, found in zip(batch.metas, detections):
                    results.extend(detections_to_results(
                        meta["image_id"], found.masks.cpu().numpy(), found.boxes.cpu().numpy(),
                        found.scores.cpu().numpy(), category_ids[found.labels.cpu().numpy()]))
    finally:
        model.train(was_training)
    return results


def ground_truth_of(coco: CocoDataset) -> dict[str, Any]:
    """The COCO json of ``coco``'s images only (all of them unless it is a :meth:`subset`)."""
    data = json.loads(Path(coco.json_path).read_text())
    image_ids = {record.image_id for record in coco.images}
    return {**data, "images": [im for im in data["images"] if im["id"] in image_ids],
            "annotations": [a for a in data["annotations"] if a["image_id"] in image_ids]}


def checkpoint_config(checkpoint: str | Path | dict, overrides: list[str] | None = None) -> ExperimentConfig:
    """The config a checkpoint was trained with (migrated from an older config version), then ``overrides``.

    Raises:
        ConfigError: the checkpoint stores no config, or one this APIS cannot read (naming the file).
    """
    state = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    return _stored_config(state, "checkpoint" if isinstance(checkpoint, dict) else str(checkpoint), overrides)


def _stored_config(state: dict, source: str, overrides: list[str] | None = None) -> ExperimentConfig:
    if "config" not in state:
        raise ConfigError(f"{source} stores no config; pass the config it was trained with")
    try:
        return config_from_dict(state["config"], overrides, UNVERSIONED)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def evaluate_checkpoint(checkpoint: str | Path | dict, cfg: ExperimentConfig | None = None,
                        gt_json: str | None = None, dataset: CocoDataset | None = None,
                        results_path: str | Path | None = None, device: str | None = None,
                        batch_size: int = 1, ctx: DistributedContext | None = None) -> dict[str, float]:
    """Mask and box AP of a checkpoint (``apis eval --checkpoint``).

    Args:
        checkpoint: a file written by the trainer, or its loaded dict.
        cfg: model and test-time resizing; ``None`` uses the config stored in the checkpoint.
        gt_json: the evaluation set (default ``cfg.data.val_json``), cut to ``data.max_val_images``.
        dataset: an already loaded evaluation set instead of ``gt_json`` (used as is).
        results_path: also write the COCO results there.
        device: overrides ``cfg.device``.
        ctx: under ``torchrun``, each rank predicts its shard of the images
            (:func:`apis.engine.distributed.shard_images`); rank 0 gathers the results, writes them and
            evaluates once, and every rank returns its metrics.

    Returns:
        ``{"segm/AP": ..., "bbox/AP": ..., ...}`` in percent (see :func:`apis.evaluation.coco_eval.evaluate`).
    """
    state = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    if cfg is None:
        cfg = _stored_config(state, "checkpoint" if isinstance(checkpoint, dict) else str(checkpoint))
    if dataset is None:
        gt_json = gt_json or cfg.data.val_json
        if not gt_json:
            raise ConfigError("no evaluation set: pass gt_json or set config key 'data.val_json'")
        if not Path(gt_json).is_file():
            raise ConfigError(f"evaluation json not found: {gt_json}")
        image_root = cfg.data.val_image_root or cfg.data.image_root or None
        dataset = load_coco(gt_json, image_root, used_images=cfg.data.max_val_images).subset(cfg.data.max_val_images)
    ctx = ctx or DistributedContext()
    torch_device = resolve_device(device or cfg.device, ctx.local_rank if ctx.enabled else None)
    model = load_model(state, cfg, torch_device)
    results = sharded_inference(model, dataset, cfg, torch_device, ctx, batch_size=batch_size)

    def write_and_evaluate() -> dict[str, float]:
        if results_path is not None:
            write_results(results_path, results)
        return evaluate(ground_truth_of(dataset), results)

    return broadcast_from_main(run_on_main(write_and_evaluate, ctx), ctx)


def sharded_inference(model: nn.Module, coco: CocoDataset, cfg: ExperimentConfig, device: torch.device,
                      ctx: DistributedContext, batch_size: int = 1) -> list[dict]:
    """:func:`run_inference` of this rank's shard of ``coco``; on rank 0, every rank's results in the order one
    process gives them (elsewhere: an empty list). One process: :func:`run_inference` of the whole set."""
    if not ctx.enabled:
        return run_inference(model, coco, cfg, device, batch_size=batch_size)
    shard = coco.only_images(shard_images([record.image_id for record in coco.images], ctx))
    gathered = gather_to_main(run_inference(model, shard, cfg, device, batch_size=batch_size,
                                            progress=None if ctx.is_main else False), ctx)
    if gathered is None:
        return []
    return in_dataset_order(gathered, [record.image_id for record in coco.images], lambda result: result["image_id"])
