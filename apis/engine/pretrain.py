"""``apis pretrain``: a backbone + FPN trained with full masks on *source* data, for ``model.backbone_weights``.

The paper starts every model from an ImageNet backbone. Where none is on disk (this project never
downloads weights) or for data far from ImageNet, the same road can be taken with data of one's own:
train CondInst with full masks on a source dataset whose categories do not occur in the target data
(for the built-in data: ``apis data synth OUT --family source``), keep the backbone and FPN, and start the
target's models from them with ``model.backbone_weights=FILE``, exactly as with torchvision's ImageNet file
(docs/design.md, "Pretraining").

The written file is a plain state dict (torchvision's ResNet keys + ``fpn.*``); beside it,
``FILE.json`` records the source data, the schedule and the source val AP, so it can be re-made.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from apis.config import ExperimentConfig, to_dict
from apis.engine.checkpoint import load_model_weights, save_checkpoint
from apis.engine.trainer import train
from apis.modeling.backbone import backbone_state_dict
from apis.modeling.condinst import CondInst
from apis.utils.io import atomic_write_json

logger = logging.getLogger(__name__)


def full_mask_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with full-mask supervision only (no points, no box terms) and a backbone from scratch."""
    loss = dataclasses.replace(cfg.loss, full=1.0, points=0.0, box=0.0)
    data = dataclasses.replace(cfg.data, random_points_per_instance=0, train_points="")
    model = dataclasses.replace(cfg.model, backbone_weights="none")
    return dataclasses.replace(cfg, loss=loss, data=data, model=model)


def export_backbone(checkpoint: str | Path, cfg: ExperimentConfig, out: str | Path, half: bool = False) -> Path:
    """Write the backbone + FPN of a CondInst ``checkpoint`` (trained with ``cfg``) to ``out`` (atomically).

    ``half`` stores floating-point tensors as float16: half the size (23 MB for ResNet-18), for a file that
    ships with a package; loading casts them back to float32.
    """
    model = CondInst.from_config(cfg.model, cfg.loss)
    load_model_weights(model, checkpoint)  # names any missing or misshapen parameter
    state = backbone_state_dict(model.backbone)
    if half:
        state = {key: value.half() if value.is_floating_point() else value for key, value in state.items()}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(out, state)


def pretrain(cfg: ExperimentConfig, out: str | Path, half: bool = False) -> Path:
    """Train ``cfg`` with full masks (resumable in ``cfg.output_dir``: a finished run is only exported
    again), evaluate it on ``data.val_json`` when given, and write its backbone + FPN to ``out`` (float16 with
    ``half``) with a ``.json`` record beside it. Returns ``out``."""
    from apis.engine.inference import evaluate_checkpoint

    cfg = full_mask_config(cfg)
    checkpoint = train(cfg)
    out = export_backbone(checkpoint, cfg, out, half)
    metrics = evaluate_checkpoint(checkpoint, cfg) if cfg.data.val_json else {}
    record = {"source_train_json": cfg.data.train_json, "source_val_json": cfg.data.val_json,
              "source_val_mask_AP": metrics.get("segm/AP"), "source_val_box_AP": metrics.get("bbox/AP"),
              "checkpoint": str(checkpoint), "half": half, "config": to_dict(cfg)}
    atomic_write_json(out.with_name(out.name + ".json"), record, indent=2)
    logger.info("wrote %s (source val mask AP %s)", out, record["source_val_mask_AP"])
    return out
