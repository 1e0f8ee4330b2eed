"""Point annotations in detectron2 PointSup's COCO format, and their tensors for the trainer.

A PointSup file is a COCO instance json whose annotations carry ``point_coords: [[x, y], ...]``
(integer pixel indices, ``x`` = column, ``y`` = row) and ``point_labels: [1|0, ...]`` (1 = on the
object, 0 = background); the other annotation fields are COCO's, without ``segmentation``.

Checked against detectron2's ``projects/PointSup``: ``point_sup/register_point_annotations.py`` loads
the file with ``load_coco_json`` and the two point keys as extra annotation keys,
``tools/prepare_coco_point_annotations_without_masks.py`` writes floored integer indices and drops
``segmentation``, and ``point_sup/dataset_mapper.py`` adds 0.5 to the ``point_coords`` of every
annotation of an image (crowd ones included, before dropping them) and, through
``point_sup/detection_utils.py``, stacks the points of an image's instances; hence crowd annotations
here get empty point lists, and instances of one image with different numbers of points need
detectron2's ``INPUT.SAMPLE_POINTS > 0``.

In memory an instance's points are :class:`InstancePoints` with labels in {1, 0, -1}, where -1 is an
"unsure" answer: it marks the pixel as asked but carries no supervision, so it is never written to
a PointSup file (which has no such label).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from apis.data.coco import DatasetError, is_finite_number
from apis.data.coords import index_to_continuous, point_in_box, xywh_to_xyxy
from apis.utils.io import atomic_write_json, read_json

if TYPE_CHECKING:  # imported where tensors are made: the ledger and `apis status` need no torch (seconds to import)
    import torch

UNSURE = -1  # an answer that marks the pixel as asked but carries no supervision
POINT_LABELS = (1, 0, UNSURE)
PADDING_LABEL = -1


@dataclass(frozen=True, eq=False)
class InstancePoints:
    """The labelled points of one instance.

    ``coords``: int64 ``[P, 2]`` pixel indices ``(x, y)``; ``labels``: int64 ``[P]`` in {1, 0, -1}.
    Both arrays are read-only copies. ``P`` may be 0. Compared by identity (arrays have no truth value).
    """

    coords: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        coords, labels = np.asarray(self.coords), np.asarray(self.labels)
        if coords.shape == (0,):  # an empty list has no second axis
            coords = coords.reshape(0, 2)
        if coords.ndim != 2 or coords.shape[1] != 2:
            raise ValueError(f"point coords must have shape [P, 2], got {coords.shape}")
        if labels.ndim != 1 or labels.shape[0] != coords.shape[0]:
            raise ValueError(f"point labels must have shape [{coords.shape[0]}], got {labels.shape}")
        for name, array in (("coords", coords), ("labels", labels)):
            if array.size and not np.issubdtype(array.dtype, np.integer):
                raise ValueError(f"point {name} must be integers, got dtype {array.dtype}")
        if (coords < 0).any():
            raise ValueError(f"point coords must be non-negative pixel indices, got {coords.tolist()}")
        if not np.isin(labels, POINT_LABELS).all():
            raise ValueError(f"point labels must be in {POINT_LABELS}, got {labels.tolist()}")
        # astype copies, so freezing these arrays leaves the caller's writable.
        coords, labels = coords.astype(np.int64), labels.astype(np.int64)
        coords.setflags(write=False)
        labels.setflags(write=False)
        object.__setattr__(self, "coords", coords)
        object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def group_points(ann_ids: np.ndarray, coords: np.ndarray, labels: np.ndarray) -> dict[int, InstancePoints]:
    """``{ann_id: InstancePoints}`` of points given one per row: ``ann_ids`` ``[N]``, ``coords`` ``[N, 2]``,
    ``labels`` ``[N]`` (integers). Each instance keeps its points in row order; instances come in the order of
    their first row. The rows are checked once, all together, not instance by instance (a COCO step trains
    on 860k instances); ValueError as :class:`InstancePoints` raises it."""
    checked = InstancePoints(coords, labels)  # read-only int64 copies, every row checked
    ann_ids = np.asarray(ann_ids, dtype=np.int64)
    order = np.argsort(ann_ids, kind="stable")
    ids, starts = np.unique(ann_ids[order], return_index=True)
    ends = np.append(starts[1:], order.size)
    coords, labels = checked.coords[order], checked.labels[order]
    coords.setflags(write=False)
    labels.setflags(write=False)
    grouped = {}
    for index in np.argsort(order[starts]):  # by first row
        points = object.__new__(InstancePoints)  # views of checked, read-only arrays: nothing to check again
        object.__setattr__(points, "coords", coords[starts[index]:ends[index]])
        object.__setattr__(points, "labels", labels[starts[index]:ends[index]])
        grouped[int(ids[index])] = points
    return grouped


def _is_json_int(value: Any) -> bool:
    # JSON true/false load as bool, a subclass of int; they are not pixel indices or labels.
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_points(ann: dict, image: dict | None) -> InstancePoints:
    """The points of one annotation; raises ValueError saying what is wrong (without the file name)."""
    coords, labels = ann["point_coords"], ann["point_labels"]
    if not isinstance(coords, list) or not all(isinstance(c, list) and len(c) == 2 for c in coords):
        raise ValueError(f"point_coords must be a list of [x, y] pairs, got {coords!r}")
    if not isinstance(labels, list):
        raise ValueError(f"point_labels must be a list, got {labels!r}")
    if len(coords) != len(labels):
        raise ValueError(f"{len(coords)} point_coords but {len(labels)} point_labels")
    if not all(_is_json_int(v) for c in coords for v in c):
        raise ValueError(f"point_coords must be integer pixel indices, got {coords!r}")
    if not all(_is_json_int(v) and v in (0, 1) for v in labels):
        raise ValueError(f"point_labels must be 0 or 1, got {labels!r}")
    if image is not None:
        width, height = image.get("width"), image.get("height")
        if not (_is_json_int(width) and _is_json_int(height) and width > 0 and height > 0):
            raise ValueError(f"its image {image['id']} has no valid 'width' and 'height'")
        outside = [c for c in coords if not (0 <= c[0] < width and 0 <= c[1] < height)]
        if outside:
            raise ValueError(f"points {outside} lie outside the {width}x{height} image {image['id']}")
        box = ann.get("bbox")
        if isinstance(box, list) and len(box) == 4 and all(is_finite_number(v) for v in box):
            x0, y0, x1, y1 = xywh_to_xyxy(box)
            outside = [c for c in coords if not point_in_box(c[0], c[1], x0, y0, x1, y1, width, height)]
            if outside:  # a point is about its instance: only its box's candidate pixels (docs/design.md)
                raise ValueError(f"points {outside} lie outside the annotation's box {box} (x, y, w, h)")
    return InstancePoints(np.array(coords, dtype=np.int64).reshape(-1, 2), np.array(labels, dtype=np.int64))


def read_pointsup(path: str | Path) -> dict[int, InstancePoints]:
    """Points of every annotation of a PointSup json, keyed by annotation id.

    Annotations without ``point_coords``/``point_labels``, or with empty lists (crowd annotations),
    are absent. Malformed fields raise ValueError naming the file and the annotation id.
    """
    path = Path(path)
    coco = read_json(path, DatasetError)
    if not (isinstance(coco, dict) and isinstance(coco.get("images", []), list)
            and isinstance(coco.get("annotations", []), list)
            and all(isinstance(item, dict) for item in (*coco.get("images", []), *coco.get("annotations", [])))):
        raise DatasetError(f"{path}: not a COCO instance file (needs lists of objects 'images' and 'annotations')")
    images = {image["id"]: image for image in coco.get("images", []) if _is_json_int(image.get("id"))}
    points: dict[int, InstancePoints] = {}
    for ann in coco.get("annotations", []):
        has_coords, has_labels = "point_coords" in ann, "point_labels" in ann
        if not (has_coords or has_labels):
            continue
        ann_id = ann.get("id")
        try:
            if has_coords != has_labels:
                raise ValueError("has only one of point_coords and point_labels")
            if not _is_json_int(ann_id):
                raise ValueError("has points but no integer 'id'")
            if ann_id in points:
                raise ValueError("annotation id occurs twice")
            image_id = ann.get("image_id")
            instance_points = _parse_points(ann, images.get(image_id) if _is_json_int(image_id) else None)
        except ValueError as error:
            raise DatasetError(f"{path}: annotation {ann_id}: {error}") from None
        if len(instance_points):
            points[ann_id] = instance_points
    return points


def write_pointsup(coco_json: str | Path | dict, points: Mapping[int, InstancePoints], out_path: str | Path,
                   drop_masks: bool = True) -> int:
    """Write a copy of ``coco_json`` with PointSup point fields; returns how many annotations got points.

    Every non-crowd annotation with at least one point answered 1 or 0 gets ``point_coords`` and
    ``point_labels``; unsure (-1) answers are left out; other non-crowd annotations get no point fields.
    Crowd annotations get empty lists (detectron2's PointSup mapper reads the keys on every
    annotation). Existing point fields are replaced; ``segmentation`` is removed when ``drop_masks``.
    The input (file or dict) is not modified; the output is written atomically.
    """
    source = str(coco_json) if isinstance(coco_json, (str, Path)) else "<coco dict>"
    if isinstance(coco_json, (str, Path)):
        with Path(coco_json).open() as handle:
            coco_json = json.load(handle)
    images = {image["id"]: image for image in coco_json.get("images", [])}
    annotations = coco_json.get("annotations", [])
    unknown = sorted(set(points) - {ann["id"] for ann in annotations})
    if unknown:
        raise ValueError(f"{source}: points given for annotation ids not in the file: {unknown[:10]}")

    written = 0
    new_annotations = []
    for ann in annotations:
        # A shallow copy is enough: only top-level keys of the annotation change.
        new_ann = {key: value for key, value in ann.items() if key not in ("point_coords", "point_labels")}
        if drop_masks:
            new_ann.pop("segmentation", None)
        instance_points = points.get(ann["id"])
        if ann.get("iscrowd", 0):
            if instance_points is not None and len(instance_points):
                raise ValueError(f"{source}: annotation {ann['id']} is a crowd annotation but has points")
            new_ann["point_coords"], new_ann["point_labels"] = [], []
        elif instance_points is not None:
            known = instance_points.labels != -1
            if known.any():
                coords = instance_points.coords[known]
                image = images.get(ann["image_id"])
                if image is not None and ((coords[:, 0] >= image["width"]).any()
                                          or (coords[:, 1] >= image["height"]).any()):
                    raise ValueError(f"{source}: annotation {ann['id']}: points {coords.tolist()} lie "
                                     f"outside the {image['width']}x{image['height']} image {image['id']}")
                new_ann["point_coords"] = coords.tolist()
                new_ann["point_labels"] = instance_points.labels[known].tolist()
                written += 1
        new_annotations.append(new_ann)

    atomic_write_json(out_path, {**coco_json, "annotations": new_annotations})
    return written


def to_tensors(points: Sequence[InstancePoints]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack the points of N instances for the point loss.

    Returns:
        ``coords`` float32 ``[N, P, 2]`` in continuous coordinates (pixel index + 0.5) and ``labels``
        float32 ``[N, P]``, ``P`` the largest point count; shorter instances are padded with label -1
        (ignored by the loss) at coordinate (0.5, 0.5).
    """
    import torch

    num_points = max((len(p) for p in points), default=0)
    coords = np.zeros((len(points), num_points, 2), dtype=np.int64)
    labels = np.full((len(points), num_points), PADDING_LABEL, dtype=np.float32)
    for row, instance_points in enumerate(points):
        coords[row, : len(instance_points)] = instance_points.coords
        labels[row, : len(instance_points)] = instance_points.labels
    return torch.from_numpy(index_to_continuous(coords)), torch.from_numpy(labels)
