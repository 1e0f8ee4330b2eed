"""Checks of what CondInst is given, so that a wrong batch fails with a message naming the image and
the entry before any computation (shapes as in :mod:`apis.modeling.condinst`)."""

from __future__ import annotations

from torch import Tensor

SIZE_DIVISIBILITY = 32


def check_batch(images: Tensor, image_sizes: list[tuple[int, int]], **per_image: list) -> None:
    """Shape checks of a batch; each list in ``per_image`` (targets, original_sizes, ...) needs one entry per image.

    Raises:
        ValueError: ``images`` is not ``[B, 3, H, W]`` padded to a multiple of :data:`SIZE_DIVISIBILITY`, a list
            has the wrong length, or an image size does not fit the padded batch.
    """
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


def check_targets(targets: list[dict], images: Tensor, num_classes: int, needs_masks: bool) -> None:
    """Training targets: ``boxes [N, 4]`` and ``labels [N]`` in ``0..num_classes-1``; ``points [N, P, 2]`` with
    ``point_labels [N, P]`` when given; ``masks [N, Hp, Wp]`` when ``needs_masks``.

    Raises:
        ValueError: naming the image's place in the batch, the entry and (where known) its annotation ids.
    """
    for index, target in enumerate(targets):
        where = f"training target of image {index} in the batch"
        for key in ("boxes", "labels"):
            if key not in target:
                raise ValueError(f"{where}: missing '{key}'")
        count = len(target["boxes"])
        if target["boxes"].shape != (count, 4) or target["labels"].shape != (count,):
            raise ValueError(f"{where}: boxes must be [N, 4] and labels [N], got "
                             f"{tuple(target['boxes'].shape)} and {tuple(target['labels'].shape)}")
        if count and (int(target["labels"].min()) < 0 or int(target["labels"].max()) >= num_classes):
            raise ValueError(f"{where}: labels must lie in 0..{num_classes - 1}, "
                             f"got {target['labels'].tolist()} (ann_ids {target.get('ann_ids')})")
        if "points" in target:
            points, point_labels = target["points"], target.get("point_labels")
            if (points.ndim != 3 or points.shape[0] != count or points.shape[2] != 2 or point_labels is None
                    or point_labels.shape != points.shape[:2]):
                raise ValueError(f"{where}: points must be [N={count}, P, 2] with point_labels [N, P], got "
                                 f"{tuple(points.shape)} and "
                                 f"{None if point_labels is None else tuple(point_labels.shape)}")
        if needs_masks and count:
            masks = target.get("masks")
            if masks is None:
                raise ValueError(f"{where}: the full-mask loss needs 'masks' (ann_ids {target.get('ann_ids')})")
            if tuple(masks.shape) != (count, *images.shape[-2:]):
                raise ValueError(f"{where}: masks must be [N, Hp, Wp] = {(count, *images.shape[-2:])}, "
                                 f"got {tuple(masks.shape)}")
