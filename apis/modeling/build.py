"""The model a config names (``model.arch``): CondInst or Mask R-CNN, built from the config dataclasses."""

from __future__ import annotations

from typing import TYPE_CHECKING

from apis.modeling.condinst import CondInst
from apis.modeling.mask_rcnn import MaskRCNNPoints

if TYPE_CHECKING:
    from apis.config import LossConfig, ModelConfig

InstanceModel = CondInst | MaskRCNNPoints
"""What the trainer, inference and the active loop take: both have ``losses_and_stats``, ``predict`` and
``prediction_sets`` (each instance's members, for point selection)."""


def build_model(model: ModelConfig, loss: LossConfig | None = None) -> InstanceModel:
    """``CondInst.from_config`` or ``MaskRCNNPoints.from_config`` as ``model.arch`` says."""
    if model.arch == "mask_rcnn":
        return MaskRCNNPoints.from_config(model, loss)
    return CondInst.from_config(model, loss)
