"""CondInst (Tian et al., ECCV 2020): FCOS + controller + mask branch + dynamic mask head.

Build it with keyword arguments, ``CondInst(num_classes=3, depth=18, loss=CondInstLoss(points=1.0))``, or
from the config dataclasses, ``CondInst.from_config(cfg.model, cfg.loss)``. One job per entry point:

* ``model(images)`` -> :class:`NetworkOutputs`: one pass of the network, nothing decoded;
* :meth:`CondInst.losses_and_stats` (and :meth:`CondInst.losses`): the training losses of a batch;
* :meth:`CondInst.predict`: detections with masks at original resolution.

:meth:`CondInst.assign`, :meth:`CondInst.mask_logits` and :meth:`CondInst.decode_boxes` are the steps in
between; :meth:`CondInst.prediction_sets` builds the active loop's prediction sets from them.

Inputs everywhere: ``images [B, 3, Hp, Wp]`` float RGB in 0..255, padded bottom/right to a multiple of 32,
and ``image_sizes`` = ``(h, w)`` of each image's valid (resized, unpadded) area. Training targets are
per-image dicts in the resized frame (continuous coordinates, pixel ``(x, y)`` has centre ``(x+.5, y+.5)``;
docs/design.md, "Coordinates"):

* ``boxes [N, 4]`` float xyxy, ``labels [N]`` int64 in ``0..C-1``, ``ann_ids [N]`` int64;
* ``points [N, P, 2]`` float (x, y), ``point_labels [N, P]`` float in {1, 0, -1} (-1 = padding);
* ``masks [N, Hp, Wp]`` uint8/bool, padded like the image (only needed by the ``full`` loss).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from apis.modeling.anchor_sets import anchor_prediction_sets
from apis.modeling.backbone import build_backbone
from apis.modeling.condinst_loss import CondInstLoss
from apis.modeling.dynamic_mask_head import DynamicMaskHead, fan_in_parameters, sizes_of_interest, window_radii
from apis.modeling.fcos import FCOSHead, HeadOutputs, assign_locations, level_locations, ltrb_to_boxes
from apis.modeling.inputs import check_batch, check_targets
from apis.modeling.mask_branch import MaskBranch
from apis.modeling.postprocess import Detections, paste_masks, select_detections, to_original_boxes
from apis.modeling.refinement import ColourCRF, build_refinement
from apis.structures import PredictionSet

if TYPE_CHECKING:
    from apis.config import LossConfig, ModelConfig

PIXEL_MEAN = (123.675, 116.28, 103.53)  # ImageNet statistics of RGB in 0..255 (torchvision's)
PIXEL_STD = (58.395, 57.12, 57.375)
MASK_BRANCH_CONVS = 4
SIZE_RANGES = (0.0, 64.0, 128.0, 256.0, 512.0, math.inf)  # FCOS's object sizes per level P3-P7


@dataclass
class NetworkOutputs:
    """One pass of the network over a batch, shared by training, inference and the active loop."""

    head: HeadOutputs  # [B, L, ...] per location of every level
    mask_features: Tensor  # [B, C, Hp/s, Wp/s], s = the mask branch's stride (8 or 4)
    locations: Tensor  # [L, 2] continuous (x, y) of every location in the padded resized frame
    levels: Tensor  # [L] pyramid level (0 = P3) of every location


class CondInst(nn.Module):
    """CondInst with FCOS on P3-P7.

    Args:
        num_classes: number of object classes (labels ``0..num_classes-1``).
        depth: ResNet depth: 18, 34, 50 or 101.
        backbone_weights: "none", "imagenet" (torchvision's, cached locally) or a checkpoint file.
        norm: backbone normalisation, "frozen_bn" or "bn".
        fpn_channels: channels of the FPN levels and of the FCOS towers.
        head_convs: convolutions in each FCOS tower.
        mask_branch_channels: channels inside the mask branch.
        mask_channels: channels of the mask features the dynamic head reads.
        dynamic_channels: channels of the dynamic mask head's hidden layers.
        dynamic_layers: layers of the dynamic mask head.
        dynamic_init: controller bias at initialisation, "fan_in" (every instance starts with a
            He-initialised mask head) or "zeros" (AdelaiDet's).
        dynamic_activation: between the dynamic head's layers, "relu" or "leaky_relu".
        mask_feature_stride: stride of the mask branch's features and of the dynamic head's evaluation: 8
            (CondInst's: P3-P5) or 4 (P3-P5 and the ResNet's stride-4 stage C2).
        mask_out_stride: stride of the mask logits (the dynamic head's output upsampled bilinearly).
        mask_head_window: run each instance's dynamic head only around its location, on the cells that can
            hold a box its level is assigned (background elsewhere), instead of on the whole image.
        centre_sampling_radius: FCOS centre sampling radius, in strides.
        size_ranges: the 6 edges of the object sizes each level P3-P7 is assigned.
        max_proposals: mask-head training instances per batch (-1: all).
        score_threshold: inference: minimum ``sigmoid(cls) * sigmoid(ctr)`` of a candidate.
        pre_nms_top_k: inference: candidates kept per level before NMS.
        nms_threshold: inference: IoU threshold of the class-aware NMS.
        detections_per_image: inference: detections kept per image.
        mask_threshold: inference: a mask pixel is on when its probability exceeds this.
        refinement: inference: sharpens each predicted mask along the image's colour edges (None: off).
        loss: the training losses and their weights (default: :class:`CondInstLoss` with its defaults).

    The defaults are those of :class:`apis.config.ModelConfig` and :class:`apis.config.LossConfig`.
    """

    def __init__(self, num_classes: int = 80, *, depth: int = 50, backbone_weights: str = "none",
                 norm: str = "frozen_bn", fpn_channels: int = 256, head_convs: int = 4,
                 mask_branch_channels: int = 128, mask_channels: int = 8, dynamic_channels: int = 8,
                 dynamic_layers: int = 3, dynamic_init: str = "fan_in", dynamic_activation: str = "relu",
                 mask_feature_stride: int = 8, mask_out_stride: int = 4,
                 mask_head_window: bool = False, centre_sampling_radius: float = 1.5,
                 size_ranges: Sequence[float] = SIZE_RANGES, max_proposals: int = 500, score_threshold: float = 0.05,
                 pre_nms_top_k: int = 1000, nms_threshold: float = 0.6, detections_per_image: int = 100,
                 mask_threshold: float = 0.5, refinement: ColourCRF | None = None,
                 loss: CondInstLoss | None = None):
        super().__init__()
        if dynamic_init not in ("fan_in", "zeros"):
            raise ValueError(f"dynamic_init must be 'fan_in' or 'zeros', got {dynamic_init!r}")
        self.backbone = build_backbone(depth, norm, backbone_weights, fpn_channels)
        self.strides = self.backbone.strides
        if len(size_ranges) != len(self.strides) + 1:
            raise ValueError(f"size_ranges needs {len(self.strides) + 1} edges for the {len(self.strides)} "
                             f"levels P3-P7, got {size_ranges}")
        self.num_classes = num_classes
        self.size_ranges = [float(edge) for edge in size_ranges]
        self.centre_sampling_radius = centre_sampling_radius
        self.max_proposals = max_proposals
        self.score_threshold = score_threshold
        self.pre_nms_top_k = pre_nms_top_k
        self.nms_threshold = nms_threshold
        self.detections_per_image = detections_per_image
        self.mask_threshold = mask_threshold
        self.refinement = refinement
        self.criterion = loss or CondInstLoss()
        self.mask_branch = MaskBranch(fpn_channels, mask_branch_channels, mask_channels, num_convs=MASK_BRANCH_CONVS,
                                      stride=mask_feature_stride, fine_channels=self.backbone.c2_channels)
        self.dynamic_head = DynamicMaskHead(mask_channels, dynamic_channels, dynamic_layers,
                                            sizes_of_interest(self.size_ranges), mask_feature_stride, mask_out_stride,
                                            dynamic_activation,
                                            window_radii(self.size_ranges, mask_feature_stride) if mask_head_window
                                            else None)
        self.head = FCOSHead(fpn_channels, num_classes, head_convs, len(self.strides), self.dynamic_head.num_params)
        if dynamic_init == "fan_in":
            with torch.no_grad():
                self.head.controller.bias.copy_(fan_in_parameters(self.dynamic_head.shapes))
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, model: ModelConfig, loss: LossConfig | None = None) -> CondInst:
        """CondInst as ``model`` (``cfg.model``) describes, training with the losses of ``loss`` (``cfg.loss``)."""
        criterion = None if loss is None else CondInstLoss(**dataclasses.asdict(loss))  # every loss key, by name
        return cls(
            model.num_classes, depth=model.depth, backbone_weights=model.backbone_weights, norm=model.norm,
            fpn_channels=model.fpn_channels, head_convs=model.head_convs,
            mask_branch_channels=model.mask_branch_channels, mask_channels=model.mask_channels,
            dynamic_channels=model.dynamic_channels, dynamic_layers=model.dynamic_layers,
            dynamic_init=model.dynamic_init, dynamic_activation=model.dynamic_activation,
            mask_feature_stride=model.mask_feature_stride, mask_out_stride=model.mask_out_stride,
            mask_head_window=model.mask_head_window,
            centre_sampling_radius=model.centre_sampling_radius,
            size_ranges=model.size_ranges, max_proposals=model.max_proposals, score_threshold=model.score_threshold,
            pre_nms_top_k=model.pre_nms_top_k, nms_threshold=model.nms_threshold,
            detections_per_image=model.detections_per_image, mask_threshold=model.mask_threshold,
            refinement=build_refinement(model.refinement), loss=criterion)

    # ------------------------------------------------------------------ the network and its pieces

    def forward(self, images: Tensor) -> NetworkOutputs:
        """One pass of the network over ``images [B, 3, Hp, Wp]`` (RGB 0..255, padded to a multiple of 32)."""
        c2, pyramid = self.backbone.c2_and_pyramid((images - self.pixel_mean) / self.pixel_std)
        head = self.head(pyramid)
        mask_features = self.mask_branch(pyramid[:3], c2)
        locations, levels = level_locations([tuple(p.shape[-2:]) for p in pyramid], self.strides, images.device)
        return NetworkOutputs(head, mask_features, locations, levels)

    @property
    def mask_stride(self) -> int:
        """Stride of :meth:`mask_logits` in the padded resized frame."""
        return self.dynamic_head.out_stride

    def location_strides(self, outputs: NetworkOutputs) -> Tensor:
        """``[L]`` stride of the level of every location."""
        return outputs.locations.new_tensor(self.strides)[outputs.levels]

    def assign(self, outputs: NetworkOutputs, boxes: list[Tensor]) -> tuple[Tensor, Tensor]:
        """FCOS assignment of the GT ``boxes [N, 4]`` (resized frame) of every image.

        Returns:
            ``gt_index [B, L]``: the GT (index into the image's boxes) each location is assigned to, -1 for
            negatives; ``ltrb [B, L, 4]``: regression targets in pixels.
        """
        assigned = [assign_locations(outputs.locations, outputs.levels, image_boxes.to(outputs.locations),
                                     self.strides, self.size_ranges, self.centre_sampling_radius)
                    for image_boxes in boxes]
        return torch.stack([gt for gt, _ in assigned]), torch.stack([ltrb for _, ltrb in assigned])

    def mask_logits(self, outputs: NetworkOutputs, image_index: Tensor, location_index: Tensor) -> Tensor:
        """Float mask logits ``[n, Hp/s, Wp/s]`` (``s`` = :attr:`mask_stride`) of the instances predicted at
        locations ``location_index [n]`` of images ``image_index [n]``."""
        return self.dynamic_head(outputs.mask_features, outputs.head.controller[image_index, location_index],
                                 outputs.locations[location_index], outputs.levels[location_index],
                                 image_index).float()

    def decode_boxes(self, outputs: NetworkOutputs, image: int, location_index: Tensor) -> Tensor:
        """Boxes ``[n, 4]`` (xyxy, resized frame, not clipped) regressed at ``location_index [n]`` of ``image``."""
        stride = self.location_strides(outputs)[location_index, None]
        return ltrb_to_boxes(outputs.locations[location_index],
                             outputs.head.box_regression[image, location_index].float() * stride)

    # ------------------------------------------------------------------ training

    def losses(self, images: Tensor, image_sizes: list[tuple[int, int]], targets: list[dict],
               iteration: int = 0) -> dict[str, Tensor]:
        """The weighted training losses (see :meth:`losses_and_stats`)."""
        return self.losses_and_stats(images, image_sizes, targets, iteration)[0]

    def losses_and_stats(self, images: Tensor, image_sizes: list[tuple[int, int]], targets: list[dict],
                         iteration: int = 0) -> tuple[dict[str, Tensor], dict[str, float]]:
        """Training losses and statistics of one batch.

        Returns:
            ``losses``: ``loss_fcos_cls``, ``loss_fcos_box``, ``loss_fcos_ctr`` and, per enabled mask loss
            (weight > 0 in :class:`CondInstLoss`), ``loss_mask_points`` / ``loss_mask_full`` /
            ``loss_mask_box_proj`` + ``loss_mask_box_pairwise``, already weighted; and ``stats``: ``num_pos``
            (FCOS positives), ``num_proposals`` (mask-head instances) and ``point_acc`` (share of the labelled
            points the mask head classifies right, sampled from the logits of the point loss; NaN when no
            labelled point was seen).
        """
        check_batch(images, image_sizes, targets=targets)
        check_targets(targets, images, self.num_classes, needs_masks=self.criterion.full > 0)
        outputs = self(images)
        gt_index, ltrb = self.assign(outputs, [target["boxes"] for target in targets])
        losses = self.criterion.detection_losses(outputs.head, [target["labels"] for target in targets], gt_index,
                                                 ltrb, self.location_strides(outputs))

        image_index, location_index = torch.nonzero(gt_index >= 0, as_tuple=True)
        stats = {"num_pos": float(image_index.numel()), "point_acc": math.nan}
        if 0 <= self.max_proposals < image_index.numel():
            subset = torch.randperm(image_index.numel(), device=image_index.device)[:self.max_proposals]
            image_index, location_index = image_index[subset], location_index[subset]
        stats["num_proposals"] = float(image_index.numel())
        if not self.criterion.uses_masks:
            return losses, stats
        if image_index.numel() == 0:
            # No proposals in this batch: zeros that keep the mask branch and controller in the graph.
            zero = outputs.mask_features.sum() * 0.0 + outputs.head.controller.sum() * 0.0
            return {**losses, **self.criterion.zero_mask_losses(zero)}, stats
        logits = self.mask_logits(outputs, image_index, location_index)
        mask_losses, mask_stats = self.criterion.mask_losses(logits, self.mask_stride, targets, image_index,
                                                             gt_index[image_index, location_index], images,
                                                             image_sizes, iteration)
        return {**losses, **mask_losses}, {**stats, **mask_stats}

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def predict(self, images: Tensor, image_sizes: list[tuple[int, int]],
                original_sizes: list[tuple[int, int]]) -> list[Detections]:
        """Detections per image in ORIGINAL coordinates (call ``model.eval()`` first).

        Masks: the stride-4 logits sampled at each original pixel centre inside the predicted box, refined
        (``refinement``) and thresholded at ``mask_threshold``; boxes scaled by ``original / resized`` and clipped.
        """
        check_batch(images, image_sizes, original_sizes=original_sizes)
        outputs = self(images)
        head = outputs.head
        candidates = [select_detections(head.class_logits[i], head.centreness_logits[i], head.box_regression[i],
                                        outputs.locations, outputs.levels, self.strides, image_sizes[i],
                                        self.score_threshold, self.pre_nms_top_k, self.nms_threshold,
                                        self.detections_per_image)
                      for i in range(images.shape[0])]
        image_index = torch.cat([torch.full_like(c.locations, i) for i, c in enumerate(candidates)])
        logits = self.mask_logits(outputs, image_index, torch.cat([c.locations for c in candidates]))
        results = []
        for i, found in enumerate(candidates):
            scale = resize_scale(image_sizes[i], original_sizes[i])
            boxes = to_original_boxes(found.boxes, scale, original_sizes[i])
            masks = paste_masks(logits[image_index == i], self.mask_stride, boxes, scale, original_sizes[i],
                                self.mask_threshold, images[i], self.refinement)
            results.append(Detections(boxes, found.scores, found.labels, masks))
        return results

    def prediction_sets(self, images: Tensor, image_sizes: list[tuple[int, int]], targets: list[dict],
                        original_sizes: list[tuple[int, int]], scale_factors: list[tuple[float, float]]
                        ) -> list[dict[int, PredictionSet]]:
        """Per image, ``ann_id -> PredictionSet`` of each GT in ``targets``: the locations training assigns to it
        (:func:`apis.modeling.anchor_sets.anchor_prediction_sets`, which has the arguments; call ``eval()``
        first)."""
        return anchor_prediction_sets(self, images, image_sizes, targets, original_sizes, scale_factors)


def resize_scale(image_size: tuple[int, int], original_size: tuple[int, int]) -> tuple[float, float]:
    """``(sx, sy) = resized / original`` from the resized ``(h, w)`` and the original ``(H, W)``."""
    return image_size[1] / original_size[1], image_size[0] / original_size[0]

