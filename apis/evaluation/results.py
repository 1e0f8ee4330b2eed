"""COCO results files: one entry per detection, as pycocotools' ``loadRes`` and detectron2 expect.

An entry is ``{"image_id": int, "category_id": int, "score": float, "bbox": [x, y, w, h],
"segmentation": {"size": [H, W], "counts": str}}``. ``bbox`` is in the continuous pixel frame of
:mod:`apis.data.coords` (pixel ``(x, y)`` covers ``[x, x+1) x [y, y+1)``), so the tight box of a
mask whose pixels span columns ``c0..c1`` is ``x = c0, w = c1 - c0 + 1``. ``segmentation`` is a
compressed COCO RLE; an entry needs at least one of ``bbox`` / ``segmentation``. Other keys are
allowed and ignored.
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from apis.data.coco import segmentation_problem
from apis.utils.errors import ApisError
from apis.utils.io import atomic_write_text, read_json


class ResultsError(ApisError, ValueError):
    """A results file or list is malformed or does not fit its ground truth; the message names it and the entry."""


REQUIRED_KEYS = ("image_id", "category_id", "score")


def encode_mask(mask: np.ndarray) -> dict:
    """Binary mask ``[H, W]`` (bool) -> compressed COCO RLE ``{"size": [H, W], "counts": str}``."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != bool:
        raise ValueError(f"encode_mask needs a 2-D bool mask [H, W], got shape {mask.shape} dtype {mask.dtype}")
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def detections_to_results(
    image_id: int,
    masks: np.ndarray | None,
    boxes_xyxy: np.ndarray,
    scores: np.ndarray,
    category_ids: np.ndarray,
) -> list[dict]:
    """One image's detections -> COCO results entries, in input order.

    Args:
        image_id: the COCO id of the image.
        masks: ``[N, H, W]`` bool at image resolution, or ``None`` for box-only results.
        boxes_xyxy: ``[N, 4]`` continuous ``x0, y0, x1, y1`` (written to the file as ``xywh``).
        scores: ``[N]`` confidences.
        category_ids: ``[N]`` COCO category ids (not contiguous label indices).
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"image {image_id}: boxes_xyxy must be [N, 4], got shape {boxes.shape}")
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    category_ids = np.asarray(category_ids).reshape(-1)
    count = len(boxes)
    if len(scores) != count or len(category_ids) != count:
        raise ValueError(
            f"image {image_id}: {count} boxes, {len(scores)} scores and {len(category_ids)} category ids"
        )
    if masks is not None:
        masks = np.asarray(masks)
        if masks.ndim != 3 or len(masks) != count or masks.dtype != bool:
            raise ValueError(
                f"image {image_id}: masks must be bool [N={count}, H, W], got shape {masks.shape} "
                f"dtype {masks.dtype}"
            )
    invalid = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 2:] < boxes[:, :2]).any(axis=1)
    if invalid.any():
        bad = int(np.flatnonzero(invalid)[0])
        raise ValueError(f"image {image_id}: detection {bad} has an invalid xyxy box {boxes[bad].tolist()}")

    results = []
    for index in range(count):
        x0, y0, x1, y1 = (float(v) for v in boxes[index])
        entry = {
            "image_id": int(image_id),
            "category_id": int(category_ids[index]),
            "score": float(scores[index]),
            "bbox": [x0, y0, x1 - x0, y1 - y0],
        }
        if masks is not None:
            entry["segmentation"] = encode_mask(masks[index])
        results.append(entry)
    return results


def validate_results(results: Any, source: str = "results") -> None:
    """Check the structure of a results list; raise ``ValueError`` naming ``source`` and the entry."""
    if not isinstance(results, list):
        raise ResultsError(f"{source}: expected a list of result entries, got {type(results).__name__}")
    for index, entry in enumerate(results):
        _validate_entry(entry, f"{source}: entry {index}")


def write_results(path: str | Path, results: list[dict]) -> None:
    """Validate and write a results file atomically (a reader never sees a half-written file)."""
    validate_results(results, str(path))
    atomic_write_text(path, json.dumps(results, default=_numpy_scalar_to_python))


def load_results(path: str | Path) -> list[dict]:
    """Read and validate a results file (see the module docstring for the entry format)."""
    results = read_json(path, ResultsError)
    validate_results(results, str(path))
    return results


def _validate_entry(entry: Any, where: str) -> None:
    if not isinstance(entry, dict):
        raise ResultsError(f"{where}: expected an object, got {type(entry).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in entry]
    if missing:
        raise ResultsError(f"{where}: missing key(s) {missing}")
    if "bbox" not in entry and "segmentation" not in entry:
        raise ResultsError(f"{where}: needs 'bbox' or 'segmentation' (or both)")
    for key in ("image_id", "category_id"):
        if not _is_int(entry[key]):
            raise ResultsError(f"{where}: {key} must be an integer, got {entry[key]!r}")
    if not _is_finite_real(entry["score"]):
        raise ResultsError(f"{where}: score must be a finite number, got {entry['score']!r}")
    if "bbox" in entry:
        box = entry["bbox"]
        if (
            not isinstance(box, (list, tuple))
            or len(box) != 4
            or not all(_is_finite_real(v) for v in box)
            or box[2] < 0
            or box[3] < 0
        ):
            raise ResultsError(f"{where}: bbox must be [x, y, w, h] with finite numbers and w, h >= 0, got {box!r}")
    if "segmentation" in entry:
        rle = entry["segmentation"]
        if (
            not isinstance(rle, dict)
            or not isinstance(rle.get("counts"), str)
            or not isinstance(rle.get("size"), (list, tuple))
            or len(rle["size"]) != 2
            or not all(_is_int(v) and v >= 0 for v in rle["size"])
        ):
            shown = rle if len(repr(rle)) < 80 else f"{repr(rle)[:80]}..."
            raise ResultsError(
                f"{where}: segmentation must be a compressed RLE {{'size': [H, W], 'counts': str}} "
                f"(polygons and uncompressed RLE are not accepted), got {shown}"
            )
        height, width = rle["size"]
        problem = segmentation_problem({"size": list(rle["size"]), "counts": rle["counts"]}, width, height)
        if problem:
            raise ResultsError(f"{where}: {problem}")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_finite_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)


def _numpy_scalar_to_python(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to a results file")
