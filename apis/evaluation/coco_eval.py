"""COCO mask AP and box AP, computed by pycocotools or faster-coco-eval with standard COCO parameters.

Both backends run the standard ``COCOeval`` protocol: IoU thresholds 0.50:0.05:0.95, 101 recall
points, at most 100 detections per image (the highest scoring), area ranges small < 32² <= medium
< 96² <= large, and crowd annotations as ignore regions (a detection matched to one is neither a
true nor a false positive). As in detectron2, mask AP drops the results' ``bbox`` before loading
them, so the area range of a detection is its mask area rather than its box area.

Metrics are in percent (0-100). A metric COCOeval cannot define (it reports -1, e.g. APl when the
ground truth has no large object) is NaN, as detectron2 reports it.

The default backend is faster-coco-eval: it gives the same numbers as pycocotools and is 12-24x
faster on DSB2018 val (see ``docs/benchmarks.md``, "Evaluation speed").
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import faster_coco_eval
import pycocotools.coco
import pycocotools.cocoeval

from apis.data.coco import DatasetError, coco_from_dict
from apis.evaluation.results import ResultsError, load_results, validate_results
from apis.utils.io import read_json

BACKENDS = ("faster", "pycocotools")
IOU_TYPES = ("segm", "bbox")
# The first six entries of COCOeval.stats, in order (all with maxDets=100).
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
_RESULT_FIELD = {"segm": "segmentation", "bbox": "bbox"}
_GT_LISTS = ("images", "annotations", "categories")


def evaluate(
    gt: str | Path | dict,
    results: str | Path | list[dict],
    iou_types: Iterable[str] = IOU_TYPES,
    backend: str = "faster",
    verbose: bool = False,
) -> dict[str, float]:
    """Evaluate COCO results against COCO ground truth.

    Args:
        gt: a COCO instance json (path or already-loaded dict; a dict is not modified).
        results: a results file (path) or its entries (see :mod:`apis.evaluation.results`).
        iou_types: ``"segm"`` (mask AP), ``"bbox"`` (box AP), or a sequence of both.
        backend: ``"faster"`` (faster-coco-eval) or ``"pycocotools"``; they give the same numbers.
        verbose: let the backend print its progress and summary tables.

    Returns:
        ``{"segm/AP": ..., "segm/AP50": ..., ..., "bbox/APl": ...}`` in percent, NaN where undefined.

    Raises:
        ValueError: malformed inputs, or a result whose image, category or mask size is not in ``gt``;
            the message names the file and the entry.
    """
    iou_types = (iou_types,) if isinstance(iou_types, str) else tuple(iou_types)
    if not iou_types or any(t not in IOU_TYPES for t in iou_types) or len(set(iou_types)) != len(iou_types):
        raise ValueError(f"iou_types must be distinct values among {IOU_TYPES}, got {iou_types}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    gt_dataset, gt_source = _load_gt(gt)
    if "segm" in iou_types:
        unmasked = [ann["id"] for ann in gt_dataset["annotations"] if not ann.get("segmentation")]
        if unmasked:
            raise DatasetError(f"{gt_source}: annotation(s) {', '.join(map(str, unmasked[:10]))} have no "
                               "segmentation, which mask AP needs (evaluate with iou_types=['bbox'] only)")
    if isinstance(results, (str, Path)):
        results_source = str(results)
        results = load_results(results)
    else:
        results_source = "results"
        validate_results(results, results_source)
    _check_results_match_gt(results, results_source, gt_dataset, gt_source, iou_types)

    metrics = {}
    with contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO()):
        coco_gt = _make_coco(backend, gt_dataset, verbose)
        for iou_type in iou_types:
            entries = _entries_for(iou_type, results)
            stats = _run_cocoeval(backend, coco_gt, entries, iou_type, verbose)
            for name, value in zip(METRIC_NAMES, stats[: len(METRIC_NAMES)]):
                metrics[f"{iou_type}/{name}"] = float(value) * 100.0 if value >= 0 else math.nan
    return metrics


def format_metrics(metrics: dict[str, float]) -> str:
    """A small table: one row per IoU type, one column per metric; ``-`` where undefined (NaN)."""
    iou_types = list(dict.fromkeys(key.split("/", 1)[0] for key in metrics))
    lines = [f"{'':<6}" + "".join(f"{name:>8}" for name in METRIC_NAMES)]
    for iou_type in iou_types:
        cells = []
        for name in METRIC_NAMES:
            value = metrics.get(f"{iou_type}/{name}", math.nan)
            cells.append(f"{'-':>8}" if math.isnan(value) else f"{value:>8.2f}")
        lines.append(f"{iou_type:<6}" + "".join(cells))
    return "\n".join(lines)


def _load_gt(gt: str | Path | dict) -> tuple[dict, str]:
    """Our own copy of the ground truth and a name for errors.

    The backends add keys to the image and annotation dicts (``ignore``, decoded RLEs) but never
    change a nested value in place, so copying those dicts one level deep keeps a caller's dict
    intact at a fraction of a deep copy's cost.
    """
    if isinstance(gt, dict):
        dataset, source = gt, "ground truth"
    else:
        source = str(gt)
        dataset = read_json(gt, DatasetError)
    if not isinstance(dataset, dict) or any(key not in dataset for key in _GT_LISTS):
        raise DatasetError(f"{source}: not a COCO instance file (needs {list(_GT_LISTS)})")
    for key in _GT_LISTS:
        if not isinstance(dataset[key], list) or not all(isinstance(item, dict) for item in dataset[key]):
            raise DatasetError(f"{source}: '{key}' must be a list of objects")
    for index, image in enumerate(dataset["images"]):
        if not all(key in image for key in ("id", "height", "width")):
            raise DatasetError(f"{source}: images[{index}] needs 'id', 'height' and 'width'")
    # The checks training and the loop apply (ids, categories, boxes, masks); images are not opened.
    coco_from_dict(dataset, Path(source), Path("."), check_images=False)
    return {**dataset, **{key: [dict(item) for item in dataset[key]] for key in _GT_LISTS}}, source


def _check_results_match_gt(
    results: list[dict], results_source: str, gt: dict, gt_source: str, iou_types: tuple[str, ...]
) -> None:
    image_sizes = {image["id"]: [image["height"], image["width"]] for image in gt["images"]}
    category_ids = {category["id"] for category in gt["categories"]}
    for index, entry in enumerate(results):
        where = f"{results_source}: entry {index}"
        if entry["image_id"] not in image_sizes:
            raise ResultsError(f"{where}: image_id {entry['image_id']} is not an image of {gt_source}")
        if entry["category_id"] not in category_ids:
            raise ResultsError(f"{where}: category_id {entry['category_id']} is not a category of {gt_source}")
        for iou_type in iou_types:
            if _RESULT_FIELD[iou_type] not in entry:
                raise ResultsError(f"{where}: has no '{_RESULT_FIELD[iou_type]}', needed for {iou_type} AP")
        if "segmentation" in entry and list(entry["segmentation"]["size"]) != image_sizes[entry["image_id"]]:
            raise ResultsError(
                f"{where}: mask size {list(entry['segmentation']['size'])} differs from image "
                f"{entry['image_id']}'s [height, width] {image_sizes[entry['image_id']]} in {gt_source}"
            )


def _entries_for(iou_type: str, results: list[dict]) -> list[dict]:
    """Fresh entries with only what ``iou_type`` needs (``loadRes`` writes ids and areas into them).

    Without ``bbox``, ``loadRes`` takes a segm result's area from its mask (detectron2 does the same).
    """
    field = _RESULT_FIELD[iou_type]
    return [
        {
            "image_id": int(entry["image_id"]),
            "category_id": int(entry["category_id"]),
            "score": float(entry["score"]),
            field: dict(entry[field]) if field == "segmentation" else [float(v) for v in entry[field]],
        }
        for entry in results
    ]


def _make_coco(backend: str, dataset: dict, verbose: bool) -> Any:
    if backend == "faster":
        return faster_coco_eval.COCO(dataset, print_function=print if verbose else _silent)
    coco = pycocotools.coco.COCO()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def _run_cocoeval(backend: str, coco_gt: Any, entries: list[dict], iou_type: str, verbose: bool) -> list[float]:
    if entries:
        coco_dt = coco_gt.loadRes(entries)
    else:
        # pycocotools' loadRes fails on an empty list; an empty detection set is still evaluable.
        empty = {"images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"], "annotations": []}
        coco_dt = _make_coco(backend, empty, verbose)
    if backend == "faster":
        evaluator = faster_coco_eval.COCOeval_faster(
            coco_gt, coco_dt, iou_type, print_function=print if verbose else _silent
        )
    else:
        evaluator = pycocotools.cocoeval.COCOeval(coco_gt, coco_dt, iou_type)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return list(evaluator.stats)


def _silent(*args: Any, **kwargs: Any) -> None:
    """A print function that prints nothing, for faster-coco-eval's progress messages."""
