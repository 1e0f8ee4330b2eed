"""Mask R-CNN (He et al., ICCV 2017) trained from boxes and points, PointSup's way (Cheng et al., CVPR 2022).

The second model of APIS (``model.arch=mask_rcnn``; docs/design.md, "The model"): torchvision's RPN, RoI heads,
mask head and predictor, on the same ResNet + FPN as CondInst (:func:`apis.modeling.backbone.build_backbone`,
levels P3-P7; RoIs pooled from P3-P6), so both models take the same ``model.depth`` and
``model.backbone_weights`` and nothing is downloaded. Build it with keyword arguments,
``MaskRCNNPoints(num_classes=3, depth=18)``, or ``MaskRCNNPoints.from_config(cfg.model, cfg.loss)``.

The mask of a RoI is a ``28 x 28`` grid over the RoI's box: cell ``(i, j)`` covers ``[x0 + j w / 28,
x0 + (j + 1) w / 28) x [y0 + i h / 28, ...)`` (as torchvision projects GT masks onto proposals and pastes
predicted masks back). The point loss samples that grid bilinearly at the labelled points of the GT a positive
proposal is matched to, mapped into the proposal's frame; points outside the proposal are ignored
(:func:`loss_mask_points`). BoxInst's box terms (``loss.box > 0``, the recipe of docs/design.md) work in the
same frame: the projection term against the cells of the grid whose centre lies in the matched GT box
(:func:`gt_box_cells`), the pairwise term between neighbouring cells of similar colour, the colours being the
image's L*a*b* values pooled onto each RoI's grid (:func:`roi_colour_similarity`).

Entry points, as CondInst's (:mod:`apis.modeling.condinst`: the same images, image sizes and targets):
``model(images)`` -> the feature pyramid; :meth:`MaskRCNNPoints.losses_and_stats`; :meth:`MaskRCNNPoints.predict`
-> :class:`~apis.modeling.postprocess.Detections` in original coordinates; and
:meth:`MaskRCNNPoints.gt_proposals`, the positive proposals of given GT boxes with their masks, from which
:meth:`MaskRCNNPoints.prediction_sets` builds the active loop's prediction sets.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.models.detection.rpn import AnchorGenerator, RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign, box_iou, roi_align

from apis.data.coords import PIXEL_CENTRE, box_pixel_range
from apis.modeling.backbone import build_backbone
from apis.modeling.condinst import PIXEL_MEAN, PIXEL_STD, resize_scale
from apis.modeling.condinst_loss import gather_training_points
from apis.modeling.inputs import check_batch, check_targets
from apis.modeling.mask_losses import (
    box_masks_at_stride,
    lab_affinity,
    loss_box_pairwise,
    loss_box_projection,
    pairwise_warmup,
    rgb_to_lab,
    weighted_point_bce,
)
from apis.modeling.postprocess import Detections, box_colours, to_original_boxes
from apis.modeling.refinement import ColourCRF, build_refinement
from apis.structures import PredictionSet

if TYPE_CHECKING:
    from apis.config import LossConfig, ModelConfig

LEVELS = ("p3", "p4", "p5", "p6", "p7")
ROI_LEVELS = ["p3", "p4", "p5", "p6"]  # P7 feeds the RPN only, as torchvision's "pool" level
ANCHOR_SIZES = (32, 64, 128, 256, 512)  # one size per level, torchvision's
ASPECT_RATIOS = (0.5, 1.0, 2.0)
MASK_SIZE = 28  # side of the mask predictor's output grid
BOX_HEAD_WIDTH = 1024  # torchvision's TwoMLPHead representation size


def box_frame_samples(logits: Tensor, boxes: Tensor, points: Tensor) -> tuple[Tensor, Tensor]:
    """Bilinear samples of box-frame mask logits at image points, and whether each point is inside its box.

    Args:
        logits: ``[n, M, M]``, the grid of row ``k`` spanning ``boxes[k]`` (cell ``(i, j)`` covers
            ``[x0 + j w / M, x0 + (j + 1) w / M)`` horizontally, likewise vertically).
        boxes: ``[n, 4]`` xyxy, continuous coordinates of the frame ``points`` are in.
        points: ``[n, P, 2]`` (x, y) continuous coordinates (pixel centres are ``index + 0.5``).

    Returns:
        ``samples [n, P]`` (points nearer the box border than half a cell take the border cells' value) and
        ``inside [n, P]`` bool: the point lies in its box (edges included).
    """
    x0, y0, x1, y1 = boxes[:, None, :].to(points.dtype).unbind(-1)
    u = (points[..., 0] - x0) / (x1 - x0).clamp(min=1e-6)
    v = (points[..., 1] - y0) / (y1 - y0).clamp(min=1e-6)
    inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    grid = torch.stack([u * 2 - 1, v * 2 - 1], dim=-1).to(logits.dtype)
    samples = F.grid_sample(logits[:, None], grid[:, None], mode="bilinear", padding_mode="border",
                            align_corners=False)
    return samples[:, 0, 0, :], inside


def loss_mask_points(logits: Tensor, boxes: Tensor, points: Tensor, labels: Tensor, positive_weight: float = 1.0,
                     negative_weight: float = 1.0, normalisation: str = "point") -> dict[str, Tensor]:
    """PointSup's point loss of Mask R-CNN: BCE of each proposal's mask logits at its GT's labelled points.

    Args:
        logits: ``[n, M, M]`` mask logits of ``n`` positive proposals (their GT's class), in each proposal's frame.
        boxes: ``[n, 4]`` the proposals, xyxy in the frame of ``points``.
        points: ``[n, P, 2]`` (x, y) the labelled points of the GT each proposal is matched to.
        labels: ``[n, P]`` in {1, 0, -1}; -1 (padding, unsure) and points outside the proposal are ignored.
        positive_weight: weight of the points labelled 1.
        negative_weight: weight of the points labelled 0.
        normalisation: ``"point"``: the weighted mean over the counted points; ``"instance"``: that mean times the
            counted points per proposal (of the proposals with any), as :func:`apis.modeling.mask_losses.loss_points`.

    Returns:
        ``{"loss_mask_points": scalar}``; 0 (keeping the graph) when no point is counted.
    """
    samples, inside = box_frame_samples(logits, boxes, points)
    valid = (labels >= 0) & inside
    if not bool(valid.any()):
        return {"loss_mask_points": logits.sum() * 0.0}
    return {"loss_mask_points": weighted_point_bce(samples, labels, valid, positive_weight, negative_weight,
                                                   normalisation)}


def gt_box_cells(gt_boxes: Tensor, rois: Tensor, size: int = MASK_SIZE) -> Tensor:
    """The cells of each RoI's ``size x size`` grid whose centre lies inside the GT box it is matched to.

    Args:
        gt_boxes: ``[n, 4]`` xyxy, the matched GT boxes (continuous coordinates).
        rois: ``[n, 4]`` xyxy, the RoIs in the same frame.
        size: cells per side of the grid.

    Returns:
        ``[n, size, size]`` bool; along an axis where no cell centre falls inside the GT box (only when it is
        far smaller than its RoI), the cell holding the box centre is marked, as
        :func:`apis.modeling.mask_losses.box_masks_at_stride` does in the image frame.
    """
    rois, gt_boxes = rois.float(), gt_boxes.float()
    origin = rois[:, :2].repeat(1, 2)
    cell_size = ((rois[:, 2:] - rois[:, :2]) / size).clamp(min=1e-6).repeat(1, 2)
    # In grid units (cell i covers [i, i + 1)) the grid is a stride-1 grid: the image-frame rule applies.
    return box_masks_at_stride((gt_boxes - origin) / cell_size, size, size, stride=1)


def roi_colour_similarity(images: Tensor, rois: list[Tensor], dilation: int, size: int = MASK_SIZE) -> Tensor:
    """BoxInst's colour affinity between neighbouring cells of each RoI's ``size x size`` grid.

    Args:
        images: ``[B, 3, Hp, Wp]`` RGB in 0..255.
        rois: per image ``[Ri, 4]`` xyxy, continuous coordinates of ``images``.
        dilation: distance of the neighbours in cells.
        size: cells per side of the grid.

    Returns:
        ``[R, 8, size, size]`` (R = sum of Ri), in the order of :func:`apis.modeling.mask_losses.neighbours`;
        each cell's colour is the mean L*a*b* over it (RoIAlign, 2 x 2 samples a cell, pixel centres at +0.5).
    """
    lab = rgb_to_lab(images.float())
    pooled = roi_align(lab, [r.float() for r in rois], output_size=size, spatial_scale=1.0, sampling_ratio=2,
                       aligned=True)
    return lab_affinity(pooled, dilation)


def box_grid_logits(logits: Tensor, boxes: Tensor, grid_box: tuple[float, float, float, float],
                    scale: tuple[float, float], original_size: tuple[int, int]) -> tuple[tuple[int, int], Tensor]:
    """Box-frame mask logits of ``K`` RoIs at the pixel centres of one box's candidate grid (original frame).

    The grid is :func:`apis.data.coords.box_pixel_range` of ``grid_box``; pixel ``(x, y)`` has centre
    ``((x + .5) sx, (y + .5) sy)`` in the resized frame of ``boxes``. A pixel outside a RoI's box gets ``-inf``
    (probability 0: a pasted mask is empty outside its box).

    Args:
        logits: ``[K, M, M]`` mask logits, row ``k`` in the frame of ``boxes[k]``.
        boxes: ``[K, 4]`` the RoIs in the resized frame.
        grid_box: xyxy in the original frame.
        scale: ``(sx, sy) = resized / original``.
        original_size: ``(H, W)``.

    Returns:
        ``origin (xs, ys)`` and logits ``[K, h, w]``, entry ``[k, i, j]`` at pixel ``(xs + j, ys + i)``.
    """
    height, width = original_size
    xs, ys, xe, ye = box_pixel_range(*grid_box, width, height)
    if logits.shape[0] == 0:
        return (xs, ys), logits.new_zeros(0, ye - ys, xe - xs)
    sx, sy = scale
    grid_x = (torch.arange(xs, xe, device=logits.device, dtype=torch.float32) + PIXEL_CENTRE) * sx
    grid_y = (torch.arange(ys, ye, device=logits.device, dtype=torch.float32) + PIXEL_CENTRE) * sy
    centres_y, centres_x = torch.meshgrid(grid_y, grid_x, indexing="ij")
    points = torch.stack([centres_x.reshape(-1), centres_y.reshape(-1)], dim=1)
    samples, inside = box_frame_samples(logits.float(), boxes.float(), points[None].expand(logits.shape[0], -1, -1))
    samples = torch.where(inside, samples, -math.inf)
    return (xs, ys), samples.reshape(logits.shape[0], ye - ys, xe - xs)


@dataclass
class ProposalMembers:
    """The positive proposals of the GT boxes of one image (:meth:`MaskRCNNPoints.gt_proposals`)."""

    boxes: Tensor  # [R, 4] xyxy in the resized frame; the GT boxes themselves come first, one per GT
    gt_index: Tensor  # [R] int64: the GT (within the image) each proposal is matched to
    logits: Tensor  # [R, M, M] mask logits of the GT's class, in each proposal's frame
    scores: Tensor  # [R] the box head's probability of the GT's class


@dataclass(frozen=True)
class MaskRCNNLoss:
    """Weights of the Mask R-CNN mask head's losses (the RPN and box head keep torchvision's); a term with weight 0
    is off. The fields are those of :class:`apis.config.LossConfig` that this model has, by the same names.

    Args:
        points: weight of the point loss.
        point_positive_weight: weight of the points labelled 1 in the point loss.
        point_negative_weight: weight of the points labelled 0.
        point_normalisation: "point" or "instance" (see :func:`loss_mask_points`).
        box: weight of BoxInst's box terms (projection + pairwise) in each RoI's frame (0: none; with
            ``points`` also 0 the mask head is not trained).
        pairwise_weight: weight of the pairwise term relative to the projection term.
        pairwise_dilation: neighbour distance of the pairwise term, in cells of the RoI's grid.
        pairwise_colour_threshold: colour affinity above which neighbours are pulled together.
        pairwise_warmup_iters: iterations over which the pairwise term ramps up from 0.
    """

    points: float = 1.0
    point_positive_weight: float = 1.0
    point_negative_weight: float = 1.0
    point_normalisation: str = "point"
    box: float = 0.0
    pairwise_weight: float = 1.0
    pairwise_dilation: int = 2
    pairwise_colour_threshold: float = 0.3
    pairwise_warmup_iters: int = 10000

    @classmethod
    def from_config(cls, loss: LossConfig) -> MaskRCNNLoss:
        """The weights of ``loss`` (``cfg.loss``) that Mask R-CNN has, field by field."""
        return cls(**{field.name: getattr(loss, field.name) for field in dataclasses.fields(cls)})


class MaskRCNNPoints(nn.Module):
    """Mask R-CNN on a ResNet + FPN (P3-P7) whose mask head learns from labelled points.

    Args:
        num_classes: number of object classes (labels ``0..num_classes-1``; the heads add a background class).
        depth: ResNet depth: 18, 34, 50 or 101.
        backbone_weights: "none", "imagenet" (torchvision's, cached locally) or a checkpoint file.
        norm: backbone normalisation, "frozen_bn" or "bn".
        fpn_channels: channels of the FPN levels, the RPN head and the mask head's convolutions.
        score_threshold: inference: minimum class probability of a detection.
        nms_threshold: inference: IoU threshold of the per-class NMS.
        detections_per_image: inference: detections kept per image.
        mask_threshold: inference: a mask pixel is on when its probability exceeds this.
        roi_samples_per_image: RoIs sampled per image to train the box head, a quarter of them positive (the
            positives train the mask head).
        refinement: inference: sharpens each predicted mask along the image's colour edges (None: off).
        loss: the mask head's losses and their weights (default: :class:`MaskRCNNLoss` with its defaults).

    The RPN, box head and sampling keep torchvision's ``maskrcnn_resnet50_fpn`` settings (anchors 32-512 with
    ratios 0.5/1/2, 2000 proposals per image in training and 1000 at test, RoIs a quarter positive, IoU 0.5 for
    a positive RoI).
    """

    def __init__(self, num_classes: int = 80, *, depth: int = 50, backbone_weights: str = "none",
                 norm: str = "frozen_bn", fpn_channels: int = 256, score_threshold: float = 0.05,
                 nms_threshold: float = 0.5, detections_per_image: int = 100, mask_threshold: float = 0.5,
                 roi_samples_per_image: int = 512, refinement: ColourCRF | None = None,
                 loss: MaskRCNNLoss | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.mask_threshold = mask_threshold
        self.refinement = refinement
        self.criterion = loss or MaskRCNNLoss()
        self.backbone = build_backbone(depth, norm, backbone_weights, fpn_channels)
        anchors = AnchorGenerator(tuple((size,) for size in ANCHOR_SIZES), (ASPECT_RATIOS,) * len(ANCHOR_SIZES))
        self.rpn = RegionProposalNetwork(
            anchors, RPNHead(fpn_channels, anchors.num_anchors_per_location()[0]), fg_iou_thresh=0.7,
            bg_iou_thresh=0.3, batch_size_per_image=256, positive_fraction=0.5,
            pre_nms_top_n={"training": 2000, "testing": 1000}, post_nms_top_n={"training": 2000, "testing": 1000},
            nms_thresh=0.7)
        self.roi_heads = RoIHeads(
            MultiScaleRoIAlign(ROI_LEVELS, 7, 2), TwoMLPHead(fpn_channels * 7 * 7, BOX_HEAD_WIDTH),
            FastRCNNPredictor(BOX_HEAD_WIDTH, num_classes + 1), fg_iou_thresh=0.5, bg_iou_thresh=0.5,
            batch_size_per_image=roi_samples_per_image, positive_fraction=0.25, bbox_reg_weights=None,
            score_thresh=score_threshold,
            nms_thresh=nms_threshold, detections_per_img=detections_per_image)
        # The mask branch lives outside RoIHeads: torchvision's would demand GT masks for training.
        self.mask_roi_pool = MultiScaleRoIAlign(ROI_LEVELS, 14, 2)
        self.mask_head = MaskRCNNHeads(fpn_channels, (fpn_channels,) * 4, 1)
        self.mask_predictor = MaskRCNNPredictor(fpn_channels, fpn_channels, num_classes + 1)
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, model: ModelConfig, loss: LossConfig | None = None) -> MaskRCNNPoints:
        """Mask R-CNN as ``model`` (``cfg.model``) describes, with the point loss and box terms of ``loss``
        (``cfg.loss``).

        Raises:
            ValueError: ``loss`` asks for full-mask training, which this model does not have.
        """
        if loss is not None and loss.full > 0:
            raise ValueError(f"model.arch=mask_rcnn learns its masks from points and boxes (loss.points, "
                             f"loss.box); got loss.full={loss.full}: set it to 0")
        return cls(model.num_classes, depth=model.depth, backbone_weights=model.backbone_weights, norm=model.norm,
                   fpn_channels=model.fpn_channels, score_threshold=model.score_threshold,
                   nms_threshold=model.nms_threshold, detections_per_image=model.detections_per_image,
                   mask_threshold=model.mask_threshold, roi_samples_per_image=model.roi_samples_per_image,
                   refinement=build_refinement(model.refinement),
                   loss=None if loss is None else MaskRCNNLoss.from_config(loss))

    # ------------------------------------------------------------------ the network and its pieces

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        """The feature pyramid ``{"p3": ..., "p7": ...}`` of ``images [B, 3, Hp, Wp]`` (RGB 0..255, padded)."""
        pyramid = self.backbone((images - self.pixel_mean) / self.pixel_std)
        return OrderedDict(zip(LEVELS, pyramid))

    def mask_logits(self, features: OrderedDict[str, Tensor], boxes: list[Tensor], classes: list[Tensor],
                    image_sizes: list[tuple[int, int]]) -> Tensor:
        """Mask logits ``[R, M, M]`` of the RoIs ``boxes`` (per image ``[Ri, 4]``, resized frame), each of its
        class in ``classes`` (per image ``[Ri]``, ``0..num_classes-1``), in the RoI's frame; R = sum of Ri."""
        sizes = [tuple(size) for size in image_sizes]
        logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, sizes)))
        channel = torch.cat(classes).long() + 1  # channel 0 is the background class
        return logits[torch.arange(len(channel), device=logits.device), channel]

    def _class_probabilities(self, features: OrderedDict[str, Tensor], boxes: list[Tensor],
                             image_sizes: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
        pooled = self.roi_heads.box_roi_pool(features, boxes, [tuple(size) for size in image_sizes])
        return self.roi_heads.box_predictor(self.roi_heads.box_head(pooled))

    def _proposals(self, images: Tensor, image_sizes: list[tuple[int, int]], features: OrderedDict[str, Tensor],
                   targets: list[dict] | None = None) -> tuple[list[Tensor], dict[str, Tensor]]:
        image_list = ImageList(images, [tuple(size) for size in image_sizes])
        return self.rpn(image_list, features, targets)

    # ------------------------------------------------------------------ training

    def losses(self, images: Tensor, image_sizes: list[tuple[int, int]], targets: list[dict],
               iteration: int = 0) -> dict[str, Tensor]:
        """The weighted training losses (see :meth:`losses_and_stats`)."""
        return self.losses_and_stats(images, image_sizes, targets, iteration)[0]

    def losses_and_stats(self, images: Tensor, image_sizes: list[tuple[int, int]], targets: list[dict],
                         iteration: int = 0) -> tuple[dict[str, Tensor], dict[str, float]]:
        """Training losses and statistics of one batch (targets as CondInst's; ``iteration`` ramps the pairwise
        term up).

        Returns:
            ``losses``: ``loss_rpn_obj``, ``loss_rpn_box``, ``loss_rcnn_cls``, ``loss_rcnn_box`` and, as enabled,
            ``loss_mask_points`` and ``loss_mask_box_proj`` + ``loss_mask_box_pairwise`` (weighted); ``stats``:
            ``num_pos`` (positive RoIs), ``num_proposals`` (RoIs the mask head trains on, the same) and
            ``point_acc`` (share of the counted points the mask head classifies right; NaN when none was counted).
        """
        check_batch(images, image_sizes, targets=targets)
        check_targets(targets, images, self.num_classes, needs_masks=False)
        features = self(images)
        rcnn_targets = [{"boxes": t["boxes"].float(), "labels": t["labels"].long() + 1} for t in targets]
        proposals, rpn_losses = self._proposals(images, image_sizes, features, rcnn_targets)
        proposals, matched, labels, regression_targets = self.roi_heads.select_training_samples(proposals,
                                                                                                rcnn_targets)
        class_logits, box_regression = self._class_probabilities(features, proposals, image_sizes)
        loss_cls, loss_box = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
        losses = {"loss_rpn_obj": rpn_losses["loss_objectness"], "loss_rpn_box": rpn_losses["loss_rpn_box_reg"],
                  "loss_rcnn_cls": loss_cls, "loss_rcnn_box": loss_box}
        positive = [torch.nonzero(image_labels > 0).squeeze(1) for image_labels in labels]
        count = sum(len(p) for p in positive)
        stats = {"num_pos": float(count), "num_proposals": float(count), "point_acc": math.nan}
        weights = self.criterion
        if weights.points <= 0 and weights.box <= 0:
            return losses, stats
        rois = [p[keep] for p, keep in zip(proposals, positive)]
        classes = [image_labels[keep] - 1 for image_labels, keep in zip(labels, positive)]
        logits = self.mask_logits(features, rois, classes, image_sizes)
        offsets = [0]
        for target in targets:
            offsets.append(offsets[-1] + len(target["boxes"]))
        gt = torch.cat([m[keep] + offset for m, keep, offset in zip(matched, positive, offsets)])
        boxes = torch.cat(rois)
        if weights.points > 0:
            losses["loss_mask_points"], accuracy = self._point_loss(logits, boxes, targets, gt)
            stats["point_acc"] = accuracy
        if weights.box > 0:
            if count == 0:
                losses["loss_mask_box_proj"] = losses["loss_mask_box_pairwise"] = logits.sum() * 0.0
                return losses, stats
            gt_boxes = torch.cat([t["boxes"] for t in targets]).to(boxes)[gt]
            cells = gt_box_cells(gt_boxes, boxes)
            similarity = roi_colour_similarity(images, rois, weights.pairwise_dilation)
            pairwise = loss_box_pairwise(logits, cells, similarity, torch.arange(count, device=logits.device),
                                         weights.pairwise_dilation, weights.pairwise_colour_threshold)
            warmup = pairwise_warmup(iteration, weights.pairwise_warmup_iters)
            losses["loss_mask_box_proj"] = weights.box * loss_box_projection(logits, cells)["loss_mask_box_proj"]
            losses["loss_mask_box_pairwise"] = (weights.box * weights.pairwise_weight * warmup
                                                * pairwise["loss_mask_box_pairwise"])
        return losses, stats

    def _point_loss(self, logits: Tensor, boxes: Tensor, targets: list[dict], gt: Tensor) -> tuple[Tensor, float]:
        """The weighted point loss of the positive RoIs ``boxes [n, 4]`` matched to the batch's GTs ``gt [n]``,
        and the share of the counted points their logits classify right (NaN when none is counted)."""
        points, point_labels = gather_training_points(targets, -1, logits.device)
        if points is None or len(gt) == 0:
            return logits.sum() * 0.0, math.nan
        weights = self.criterion
        loss = weights.points * loss_mask_points(
            logits, boxes, points[gt], point_labels[gt], weights.point_positive_weight, weights.point_negative_weight,
            weights.point_normalisation)["loss_mask_points"]
        with torch.no_grad():
            samples, inside = box_frame_samples(logits, boxes, points[gt])
            counted = (point_labels[gt] >= 0) & inside
            if not bool(counted.any()):
                return loss, math.nan
            return loss, float(((samples[counted] > 0) == (point_labels[gt][counted] > 0)).float().mean())

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def predict(self, images: Tensor, image_sizes: list[tuple[int, int]],
                original_sizes: list[tuple[int, int]]) -> list[Detections]:
        """Detections per image in ORIGINAL coordinates (call ``model.eval()`` first), as CondInst's.

        Masks: each detection's box-frame mask logits sampled at the original pixel centres inside its box,
        refined (``refinement``) and thresholded at ``mask_threshold``; boxes scaled by ``original / resized``
        and clipped.
        """
        check_batch(images, image_sizes, original_sizes=original_sizes)
        features = self(images)
        proposals, _ = self._proposals(images, image_sizes, features)
        class_logits, box_regression = self._class_probabilities(features, proposals, image_sizes)
        boxes, scores, labels = self.roi_heads.postprocess_detections(
            class_logits, box_regression, proposals, [tuple(size) for size in image_sizes])
        logits = self.mask_logits(features, boxes, [image_labels - 1 for image_labels in labels], image_sizes)
        results, start = [], 0
        for i, original_size in enumerate(original_sizes):
            count = len(boxes[i])
            scale = resize_scale(image_sizes[i], original_size)
            original_boxes = to_original_boxes(boxes[i], scale, original_size)
            masks = torch.zeros(count, *original_size, dtype=torch.bool, device=images.device)
            for k in range(count):
                box = original_boxes[k].tolist()
                (xs, ys), box_logits = box_grid_logits(logits[start + k:start + k + 1], boxes[i][k:k + 1], box, scale,
                                                       original_size)
                if self.refinement is not None:
                    box_logits = self.refinement(box_logits, box_colours(images[i], box, scale, original_size))
                masks[k, ys:ys + box_logits.shape[1], xs:xs + box_logits.shape[2]] = (
                    box_logits[0].sigmoid() > self.mask_threshold)
            results.append(Detections(original_boxes, scores[i], labels[i] - 1, masks))
            start += count
        return results

    @torch.no_grad()
    def gt_proposals(self, images: Tensor, image_sizes: list[tuple[int, int]], gt_boxes: list[Tensor],
                     gt_labels: list[Tensor]) -> list[ProposalMembers]:
        """Per image, the positive proposals of each GT box: the box itself (as in training) and every RPN
        proposal whose best-overlapping GT it is with IoU >= the RoI heads' positive threshold (0.5), with
        their masks of the GT's class and their class probability (call ``model.eval()`` first).

        Args:
            images, image_sizes: as for :meth:`predict`.
            gt_boxes: per image ``[N, 4]`` xyxy in the resized frame.
            gt_labels: per image ``[N]`` in ``0..num_classes-1``.
        """
        check_batch(images, image_sizes, gt_boxes=gt_boxes, gt_labels=gt_labels)
        features = self(images)
        proposals, _ = self._proposals(images, image_sizes, features)
        threshold = self.roi_heads.proposal_matcher.high_threshold
        member_boxes, member_gt = [], []
        for boxes, found in zip(gt_boxes, proposals):
            boxes = boxes.float()
            own = torch.arange(len(boxes), device=boxes.device)
            if len(boxes) == 0 or len(found) == 0:
                member_boxes.append(boxes)
                member_gt.append(own)
                continue
            overlap, best = box_iou(boxes, found).max(dim=0)
            keep = overlap >= threshold
            member_boxes.append(torch.cat([boxes, found[keep]]))
            member_gt.append(torch.cat([own, best[keep]]))
        classes = [labels.long()[gt] for labels, gt in zip(gt_labels, member_gt)]
        logits = self.mask_logits(features, member_boxes, classes, image_sizes)
        class_logits, _ = self._class_probabilities(features, member_boxes, image_sizes)
        probabilities = class_logits.float().softmax(dim=1)
        results, start = [], 0
        for boxes, gt, image_classes in zip(member_boxes, member_gt, classes):
            rows = slice(start, start + len(boxes))
            scores = probabilities[rows].gather(1, (image_classes + 1)[:, None])[:, 0]
            results.append(ProposalMembers(boxes, gt, logits[rows], scores))
            start += len(boxes)
        return results

    @torch.no_grad()
    def prediction_sets(self, images: Tensor, image_sizes: list[tuple[int, int]], targets: list[dict],
                        original_sizes: list[tuple[int, int]], scale_factors: list[tuple[float, float]]
                        ) -> list[dict[int, PredictionSet]]:
        """Per image, ``ann_id -> PredictionSet`` of each GT in ``targets``: its positive proposals
        (:meth:`gt_proposals`), the analogue of CondInst's anchors set (arguments as
        :meth:`apis.modeling.condinst.CondInst.prediction_sets`). Each member's mask, predicted in its own box
        frame for the GT's class, is pasted onto the GT's candidate grid (zero outside the member's box), so the
        metrics read it exactly as CondInst's; member boxes are the proposals (original frame), scores the box
        head's probability of the GT's class."""
        if self.training:
            raise RuntimeError("prediction sets are pure inference: call model.eval() first")
        check_batch(images, image_sizes, targets=targets, original_sizes=original_sizes, scale_factors=scale_factors)
        members = self.gt_proposals(images, image_sizes, [t["boxes"] for t in targets],
                                    [t["labels"] for t in targets])
        sets = []
        for target, found, original_size, scale in zip(targets, members, original_sizes, scale_factors):
            original_gt = to_original_boxes(target["boxes"].float(), scale, original_size).tolist()
            image_sets = {}
            for g, ann_id in enumerate(int(a) for a in target["ann_ids"]):
                rows = found.gt_index == g
                origin, logits = box_grid_logits(found.logits[rows], found.boxes[rows], original_gt[g], scale,
                                                 original_size)
                image_sets[ann_id] = PredictionSet(
                    ann_id=ann_id, origin=origin, probs=logits.sigmoid().cpu(),
                    boxes=to_original_boxes(found.boxes[rows].float(), scale, original_size).cpu(),
                    scores=found.scores[rows].float().cpu())
            sets.append(image_sets)
        return sets
