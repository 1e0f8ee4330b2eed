"""CondInst (Tian et al., ECCV 2020): FCOS + controller + mask branch + dynamic mask head.

Inputs everywhere: ``images [B, 3, Hp, Wp]`` float RGB in 0..255, padded bottom/right to a multiple of 32,
and ``image_sizes`` = ``(h, w)`` of each image's valid (resized, unpadded) area. Training targets are
per-image dicts in the resized frame (continuous coordinates, pixel ``(x, y)`` has centre ``(x+.5, y+.5)``):

* ``boxes [N, 4]`` float xyxy, ``labels [N]`` int64 in ``0..C-1``, ``ann_ids [N]`` int64;
* ``points [N, P, 2]`` float (x, y), ``point_labels [N, P]`` float in {1, 0, -1} (-1 = padding);
* ``masks [N, Hp, Wp]`` uint8/bool, padded like the image (only needed by the ``full`` loss).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from apis.config import LossConfig, ModelConfig
from apis.modeling.backbone import build_backbone
from apis.modeling.dynamic_mask_head import DynamicMaskHead, fan_in_parameters, sizes_of_interest
from apis.modeling.fcos import FCOSHead, HeadOutputs, assign_locations, fcos_losses, level_locations, ltrb_to_boxes
from apis.modeling.mask_branch import MaskBranch
from apis.modeling.mask_losses import (
    box_masks_at_stride,
    colour_similarity,
    loss_box_pairwise,
    loss_box_projection,
    loss_full,
    loss_points,
    masks_at_stride,
    pairwise_warmup,
    point_accuracy,
)
from apis.modeling.postprocess import Detections, paste_masks, sample_box_grid, select_detections, to_original_boxes
from apis.structures import PredictionSet

PIXEL_MEAN = (123.675, 116.28, 103.53)  # ImageNet statistics of RGB in 0..255 (torchvision's)
PIXEL_STD = (58.395, 57.12, 57.375)
SIZE_DIVISIBILITY = 32
MASK_BRANCH_CONVS = 4
MEMBERS_PER_CHUNK = 128  # prediction_sets: mask maps held at once (bounds memory on crowded images)
MASKS_PER_CHUNK = 16  # full loss: GT masks converted to float at once


@dataclass
class _Forward:
    """Everything one network pass yields, shared by training, inference and selection."""

    head: HeadOutputs  # [B, L, ...]
    mask_features: Tensor  # [B, C, Hp/8, Wp/8]
    locations: Tensor  # [L, 2]
    levels: Tensor  # [L]


class CondInst(nn.Module):
    """CondInst with FCOS on P3-P7. Build with :func:`build_condinst`."""

    def __init__(self, model_cfg: ModelConfig, loss_cfg: LossConfig):
        super().__init__()
        self.model_cfg = model_cfg
        self.loss_cfg = loss_cfg
        self.backbone = build_backbone(model_cfg.depth, model_cfg.norm, model_cfg.backbone_weights,
                                       model_cfg.fpn_channels)
        self.strides = self.backbone.strides
        if len(model_cfg.size_ranges) != len(self.strides) + 1:
            raise ValueError(f"model.size_ranges needs {len(self.strides) + 1} edges for the {len(self.strides)} "
                             f"levels P3-P7, got {model_cfg.size_ranges}")
        self.mask_branch = MaskBranch(model_cfg.fpn_channels, model_cfg.mask_branch_channels,
                                      model_cfg.mask_channels, num_convs=MASK_BRANCH_CONVS)
        self.dynamic_head = DynamicMaskHead(model_cfg.mask_channels, model_cfg.dynamic_channels,
                                            model_cfg.dynamic_layers, sizes_of_interest(model_cfg.size_ranges),
                                            MaskBranch.stride, model_cfg.mask_out_stride,
                                            model_cfg.dynamic_activation)
        self.head = FCOSHead(model_cfg.fpn_channels, model_cfg.num_classes, model_cfg.head_convs,
                             len(self.strides), self.dynamic_head.num_params)
        if model_cfg.dynamic_init == "fan_in":
            with torch.no_grad():
                self.head.controller.bias.copy_(fan_in_parameters(self.dynamic_head.shapes))
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    # ------------------------------------------------------------------ shared pieces

    def _check_inputs(self, images: Tensor, image_sizes: list[tuple[int, int]], **per_image: list) -> None:
        """Shape checks of a batch; ``per_image`` lists (targets, original_sizes, ...) need one entry per image."""
        for name, values in per_image.items():
            if len(values) != images.shape[0]:
                raise ValueError(f"got {len(values)} {name} for {images.shape[0]} images")
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        if images.shape[-2] % SIZE_DIVISIBILITY or images.shape[-1] % SIZE_DIVISIBILITY:
            raise ValueError(f"images must be padded to a multiple of {SIZE_DIVISIBILITY}, got {tuple(images.shape)}")
        if len(image_sizes) != images.shape[0]:
            raise ValueError(f"got {len(image_sizes)} image_sizes for {images.shape[0]} images")
        for index, (height, width) in enumerate(image_sizes):
            if not (0 < height <= images.shape[-2] and 0 < width <= images.shape[-1]):
                raise ValueError(f"image {index}: size {(height, width)} does not fit the padded batch "
                                 f"{tuple(images.shape[-2:])}")

    def _forward(self, images: Tensor) -> _Forward:
        pyramid = self.backbone((images - self.pixel_mean) / self.pixel_std)
        head = self.head(pyramid)
        mask_features = self.mask_branch(pyramid[:3])
        locations, levels = level_locations([tuple(p.shape[-2:]) for p in pyramid], self.strides, images.device)
        return _Forward(head, mask_features, locations, levels)

    def _assign(self, forward: _Forward, targets: list[dict]) -> tuple[Tensor, Tensor]:
        """FCOS assignment of every image: ``gt_index [B, L]`` (-1 = negative), ``ltrb [B, L, 4]`` pixels."""
        assigned = [assign_locations(forward.locations, forward.levels, target["boxes"].to(forward.locations),
                                     self.strides, self.model_cfg.size_ranges,
                                     self.model_cfg.centre_sampling_radius)
                    for target in targets]
        return torch.stack([gt for gt, _ in assigned]), torch.stack([ltrb for _, ltrb in assigned])

    def _location_strides(self, forward: _Forward) -> Tensor:
        """``[L]`` stride of the level of every location."""
        return forward.locations.new_tensor(self.strides)[forward.levels]

    # ------------------------------------------------------------------ training

    def losses(self, images: Tensor, image_sizes: list[tuple[int, int]], targets: list[dict],
               iteration: int = 0) -> dict[str, Tensor]:
        """The weighted training losses (see :meth:`losses_and_stats`)."""
        return self.losses_and_stats(images, image_sizes, targets, iteration)[0]

    def losses_and_stats(self, images: Tensor, image_sizes: list[tuple[int, int]], targets: list[dict],
                         iteration: int = 0) -> tuple[dict[str, Tensor], dict[str, float]]:
        """Training losses and statistics of one batch.

        Returns ``losses``: ``loss_fcos_cls``, ``loss_fcos_box``, ``loss_fcos_ctr`` and, per enabled mask
        loss (weight > 0 in :class:`LossConfig`), ``loss_mask_points`` / ``loss_mask_full`` /
        ``loss_mask_box_proj`` + ``loss_mask_box_pairwise``, already weighted; and ``stats``:
        ``num_pos`` (FCOS positives), ``num_proposals`` (mask-head instances) and ``point_acc`` (share of the
        labelled points the mask head classifies right, sampled from the logits of the point loss; NaN when
        no labelled point was seen).
        """
        self._check_inputs(images, image_sizes, targets=targets)
        self._check_targets(targets, images)
        forward = self._forward(images)
        gt_index, ltrb = self._assign(forward, targets)
        batch, num_locations = gt_index.shape

        class_targets = torch.full_like(gt_index, -1)
        for image, target in enumerate(targets):
            positive = gt_index[image] >= 0
            class_targets[image, positive] = target["labels"].to(gt_index.device)[gt_index[image, positive]]
        strides = self._location_strides(forward)
        head = forward.head
        losses = fcos_losses(head.class_logits.reshape(batch * num_locations, -1).float(),
                             head.box_regression.reshape(-1, 4).float(),
                             head.centreness_logits.reshape(-1).float(),
                             class_targets.reshape(-1),
                             (ltrb / strides[None, :, None]).reshape(-1, 4),
                             self.loss_cfg.focal_alpha, self.loss_cfg.focal_gamma)

        image_index, location_index = torch.nonzero(gt_index >= 0, as_tuple=True)
        stats = {"num_pos": float(image_index.numel()), "point_acc": math.nan}
        max_proposals = self.model_cfg.max_proposals
        if 0 <= max_proposals < image_index.numel():
            subset = torch.randperm(image_index.numel(), device=image_index.device)[:max_proposals]
            image_index, location_index = image_index[subset], location_index[subset]
        stats["num_proposals"] = float(image_index.numel())
        mask_losses, mask_stats = self._mask_losses(forward, targets, images, image_sizes, image_index,
                                                    location_index, gt_index[image_index, location_index],
                                                    iteration)
        losses.update(mask_losses)
        stats.update(mask_stats)
        return losses, stats

    def _mask_losses(self, forward: _Forward, targets: list[dict], images: Tensor,
                     image_sizes: list[tuple[int, int]], image_index: Tensor, location_index: Tensor,
                     local_gt: Tensor, iteration: int) -> tuple[dict[str, Tensor], dict[str, float]]:
        """Enabled mask losses on the proposals ``(image_index, location_index)`` assigned to ``local_gt``."""
        cfg = self.loss_cfg
        if cfg.points <= 0 and cfg.full <= 0 and cfg.box <= 0:
            return {}, {}
        params = forward.head.controller[image_index, location_index]
        logits = self.dynamic_head(forward.mask_features, params, forward.locations[location_index],
                                   forward.levels[location_index], image_index).float()
        stride = self.dynamic_head.out_stride
        offsets = torch.tensor([0] + [len(t["boxes"]) for t in targets], device=local_gt.device).cumsum(0)
        gt = offsets[image_index] + local_gt  # index into the batch's concatenated GTs
        if gt.numel() == 0:
            # No proposals in this batch: zeros that keep the mask branch and controller in the graph.
            zero = forward.mask_features.sum() * 0.0 + params.sum() * 0.0
            names = (["loss_mask_points"] if cfg.points > 0 else []) + (["loss_mask_full"] if cfg.full > 0 else [])
            names += ["loss_mask_box_proj", "loss_mask_box_pairwise"] if cfg.box > 0 else []
            return {name: zero for name in names}, {}

        losses: dict[str, Tensor] = {}
        stats: dict[str, float] = {}
        points, point_labels = gather_training_points(targets, cfg.points_per_iter, forward.locations.device)
        if points is not None:
            correct, counted = point_accuracy(logits, points[gt], point_labels[gt], stride)
            if counted:
                stats["point_acc"] = correct / counted
        if cfg.points > 0:
            if points is None:
                losses["loss_mask_points"] = logits.sum() * 0.0
            else:
                losses["loss_mask_points"] = cfg.points * loss_points(
                    logits, points[gt], point_labels[gt], stride, cfg.point_positive_weight, cfg.point_negative_weight
                )["loss_mask_points"]
        if cfg.full > 0:
            masks = self._stride_masks(targets, gt, offsets, stride)
            losses["loss_mask_full"] = cfg.full * loss_full(logits, masks)["loss_mask_full"]
        if cfg.box > 0:
            height, width = logits.shape[-2:]
            boxes = torch.cat([t["boxes"] for t in targets]).to(logits)
            box_masks = box_masks_at_stride(boxes[gt], height, width, stride)
            similarity = colour_similarity(images, image_sizes, stride, cfg.pairwise_dilation)[image_index]
            pairwise = loss_box_pairwise(logits, box_masks, similarity, cfg.pairwise_dilation,
                                         cfg.pairwise_colour_threshold)["loss_mask_box_pairwise"]
            warmup = pairwise_warmup(iteration, cfg.pairwise_warmup_iters)
            losses["loss_mask_box_proj"] = cfg.box * loss_box_projection(logits, box_masks)["loss_mask_box_proj"]
            losses["loss_mask_box_pairwise"] = cfg.box * cfg.pairwise_weight * warmup * pairwise
        return losses, stats

    def _stride_masks(self, targets: list[dict], gt: Tensor, offsets: Tensor, stride: int) -> Tensor:
        """Coverage of each stride cell by the GT mask of every proposal: ``[n, Hp/stride, Wp/stride]``."""
        used, inverse = torch.unique(gt, return_inverse=True)
        per_gt = []
        for image, target in enumerate(targets):
            local = (used[(used >= offsets[image]) & (used < offsets[image + 1])] - offsets[image]).tolist()
            for start in range(0, len(local), MASKS_PER_CHUNK):
                chunk = target["masks"][local[start:start + MASKS_PER_CHUNK]].to(self.pixel_mean.device)
                per_gt.append(masks_at_stride(chunk, stride))
        return torch.cat(per_gt)[inverse]

    def _check_targets(self, targets: list[dict], images: Tensor) -> None:
        for index, target in enumerate(targets):
            where = f"training target of image {index} in the batch"
            for key in ("boxes", "labels"):
                if key not in target:
                    raise ValueError(f"{where}: missing '{key}'")
            count = len(target["boxes"])
            if target["boxes"].shape != (count, 4) or target["labels"].shape != (count,):
                raise ValueError(f"{where}: boxes must be [N, 4] and labels [N], got "
                                 f"{tuple(target['boxes'].shape)} and {tuple(target['labels'].shape)}")
            if count and (int(target["labels"].min()) < 0 or int(target["labels"].max()) >= self.model_cfg.num_classes):
                raise ValueError(f"{where}: labels must lie in 0..{self.model_cfg.num_classes - 1}, "
                                 f"got {target['labels'].tolist()} (ann_ids {target.get('ann_ids')})")
            if "points" in target:
                points, point_labels = target["points"], target.get("point_labels")
                if (points.ndim != 3 or points.shape[0] != count or points.shape[2] != 2 or point_labels is None
                        or point_labels.shape != points.shape[:2]):
                    raise ValueError(f"{where}: points must be [N={count}, P, 2] with point_labels [N, P], got "
                                     f"{tuple(points.shape)} and "
                                     f"{None if point_labels is None else tuple(point_labels.shape)}")
            if self.loss_cfg.full > 0 and count:
                masks = target.get("masks")
                if masks is None:
                    raise ValueError(f"{where}: loss.full > 0 needs 'masks' (ann_ids {target.get('ann_ids')})")
                if tuple(masks.shape) != (count, *images.shape[-2:]):
                    raise ValueError(f"{where}: masks must be [N, Hp, Wp] = {(count, *images.shape[-2:])}, "
                                     f"got {tuple(masks.shape)}")

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def predict(self, images: Tensor, image_sizes: list[tuple[int, int]],
                original_sizes: list[tuple[int, int]]) -> list[Detections]:
        """Detections per image in ORIGINAL coordinates (call ``model.eval()`` first).

        Masks: the stride-4 logits sampled at each original pixel centre inside the predicted box,
        thresholded at ``model.mask_threshold``; boxes scaled by ``original / resized`` and clipped.
        """
        self._check_inputs(images, image_sizes, original_sizes=original_sizes)
        forward = self._forward(images)
        cfg = self.model_cfg
        head = forward.head
        candidates = [select_detections(head.class_logits[i], head.centreness_logits[i], head.box_regression[i],
                                        forward.locations, forward.levels, self.strides, image_sizes[i],
                                        cfg.score_threshold, cfg.pre_nms_top_k, cfg.nms_threshold,
                                        cfg.detections_per_image)
                      for i in range(images.shape[0])]
        image_index = torch.cat([torch.full_like(c.locations, i) for i, c in enumerate(candidates)])
        location_index = torch.cat([c.locations for c in candidates])
        logits = self.dynamic_head(forward.mask_features, head.controller[image_index, location_index],
                                   forward.locations[location_index], forward.levels[location_index],
                                   image_index).float()
        results = []
        for i, found in enumerate(candidates):
            scale = _scale(image_sizes[i], original_sizes[i])
            boxes = to_original_boxes(found.boxes, scale, original_sizes[i])
            masks = paste_masks(logits[image_index == i], self.dynamic_head.out_stride, boxes, scale,
                                original_sizes[i], cfg.mask_threshold)
            results.append(Detections(boxes, found.scores, found.labels, masks))
        return results

    def prediction_sets(self, images: Tensor, image_sizes: list[tuple[int, int]], targets: list[dict],
                        original_sizes: list[tuple[int, int]], scale_factors: list[tuple[float, float]]
                        ) -> list[dict[int, PredictionSet]]:
        """Anchor prediction sets (SPEC §2): per image, ``ann_id -> PredictionSet``.

        The members of a GT are the locations training-time assignment gives it (all of them, no proposal
        cap). Each member's mask probability is sampled at the pixel centres of the GT's candidate grid
        ``box_pixel_range`` in ORIGINAL coordinates (``boxes / scale_factors``); member boxes (original
        frame) and scores ``sqrt(sigmoid(cls of the GT's class) * sigmoid(ctr))`` come along. Pure inference:
        the model must be in eval mode; no gradient is recorded.

        Args: targets need ``boxes`` (resized frame), ``labels`` and ``ann_ids``; ``scale_factors[i] =
        (sx, sy) = resized / original``.
        """
        if self.training:
            raise RuntimeError("prediction_sets is pure inference: call model.eval() first")
        with torch.no_grad():
            self._check_inputs(images, image_sizes, targets=targets, original_sizes=original_sizes,
                               scale_factors=scale_factors)
            for index, target in enumerate(targets):
                missing = {"boxes", "labels", "ann_ids"} - set(target)
                if missing:
                    raise ValueError(f"prediction_sets: target of image {index} lacks {sorted(missing)}")
            forward = self._forward(images)
            gt_index, _ = self._assign(forward, targets)
            return [self._image_prediction_sets(forward, image, targets[image], gt_index[image],
                                                original_sizes[image], scale_factors[image])
                    for image in range(images.shape[0])]

    def _image_prediction_sets(self, forward: _Forward, image: int, target: dict, gt_index: Tensor,
                               original_size: tuple[int, int], scale: tuple[float, float]
                               ) -> dict[int, PredictionSet]:
        head = forward.head
        members = torch.nonzero(gt_index >= 0).squeeze(1)
        members = members[torch.argsort(gt_index[members], stable=True)]  # grouped by GT
        counts = torch.bincount(gt_index[members], minlength=len(target["boxes"])).tolist()
        starts = [0]
        for count in counts:
            starts.append(starts[-1] + count)
        original_boxes = to_original_boxes(target["boxes"].float(), scale, original_size).tolist()
        labels = target["labels"].tolist()
        ann_ids = [int(a) for a in target["ann_ids"]]

        sets = {}
        first = 0
        while first < len(counts):
            last = first + 1  # GTs [first, last) share one pass of the dynamic head
            while last < len(counts) and starts[last + 1] - starts[first] <= MEMBERS_PER_CHUNK:
                last += 1
            chunk = members[starts[first]:starts[last]]
            logits = self.dynamic_head(forward.mask_features, head.controller[image, chunk],
                                       forward.locations[chunk], forward.levels[chunk],
                                       torch.full_like(chunk, image)).float()
            stride = self._location_strides(forward)[chunk, None]
            boxes = ltrb_to_boxes(forward.locations[chunk], head.box_regression[image, chunk].float() * stride)
            boxes = to_original_boxes(boxes, scale, original_size)
            for g in range(first, last):
                rows = slice(starts[g] - starts[first], starts[g + 1] - starts[first])
                locations = chunk[rows]
                origin, member_logits = sample_box_grid(logits[rows], self.dynamic_head.out_stride,
                                                        original_boxes[g], scale, original_size)
                scores = (head.class_logits[image, locations, labels[g]].float().sigmoid()
                          * head.centreness_logits[image, locations].float().sigmoid()).sqrt()
                sets[ann_ids[g]] = PredictionSet(ann_id=ann_ids[g], origin=origin,
                                                  probs=member_logits.sigmoid().cpu(),
                                                  boxes=boxes[rows].cpu(), scores=scores.cpu())
            first = last
        return sets


def gather_training_points(targets: list[dict], points_per_iter: int, device: torch.device
                           ) -> tuple[Tensor | None, Tensor | None]:
    """The batch's GT points ``[G, P, 2]`` and labels ``[G, P]`` (GTs of all images in order, padded with
    label -1), or ``(None, None)`` when no image has points.

    With ``points_per_iter = k > 0`` each instance keeps a random subset of k of its labelled points
    (point augmentation); the others are set to -1.
    """
    widest = max((t["points"].shape[1] for t in targets if "points" in t), default=0)
    if widest == 0:
        return None, None
    points, labels = [], []
    for target in targets:
        count = len(target["boxes"])
        image_points = target.get("points", torch.zeros(count, 0, 2)).to(device, torch.float32)
        image_labels = target.get("point_labels", torch.zeros(count, 0)).to(device, torch.float32)
        pad = widest - image_points.shape[1]
        points.append(F.pad(image_points, (0, 0, 0, pad)))
        labels.append(F.pad(image_labels, (0, pad), value=-1.0))
    points_all, labels_all = torch.cat(points), torch.cat(labels)
    if points_per_iter > 0:
        valid = labels_all >= 0
        keys = torch.where(valid, torch.rand(labels_all.shape, device=device), 2.0)  # invalid ones sort last
        rank = keys.argsort(dim=1).argsort(dim=1)
        labels_all = torch.where(valid & (rank < points_per_iter), labels_all, -1.0)
    return points_all, labels_all


def _scale(image_size: tuple[int, int], original_size: tuple[int, int]) -> tuple[float, float]:
    """``(sx, sy) = resized / original`` from ``(h, w)`` and ``(H, W)``."""
    return image_size[1] / original_size[1], image_size[0] / original_size[0]


def build_condinst(model_cfg: ModelConfig, loss_cfg: LossConfig) -> CondInst:
    """CondInst as configured (SPEC §3)."""
    return CondInst(model_cfg, loss_cfg)
