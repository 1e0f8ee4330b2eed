"""evaluate() against pycocotools' COCOeval run directly here, plus hand-computed APs."""

import copy
import json
import math

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from apis.data.coco import DatasetError
from apis.evaluation.coco_eval import BACKENDS, METRIC_NAMES, evaluate, format_metrics
from apis.evaluation.results import ResultsError, detections_to_results, write_results


def rect(height, width, rows, cols):
    """Bool mask with the inclusive row range ``rows`` and column range ``cols`` set."""
    mask = np.zeros((height, width), dtype=bool)
    mask[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = True
    return mask


def disc(height, width, centre_row, centre_col, radius):
    rows, cols = np.mgrid[:height, :width]
    return (rows - centre_row) ** 2 + (cols - centre_col) ** 2 <= radius**2


def compressed_rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(mask.shape), "counts": rle["counts"].decode("ascii")}


def uncompressed_rle(mask):
    """COCO's crowd format: run lengths over the column-major pixels, starting with a background run."""
    flat = mask.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    if flat[0]:
        runs = [0, *runs]
    return {"size": list(mask.shape), "counts": runs}


def make_gt(images, annotations):
    """``images``: (id, height, width); ``annotations``: (id, image_id, category_id, mask, iscrowd)."""
    anns = []
    for ann_id, image_id, category_id, mask, iscrowd in annotations:
        rows, cols = np.nonzero(mask)
        anns.append({
            "id": ann_id,
            "image_id": image_id,
            "category_id": category_id,
            "segmentation": uncompressed_rle(mask) if iscrowd else compressed_rle(mask),
            "area": float(mask.sum()),
            "bbox": [float(cols.min()), float(rows.min()), float(cols.max() - cols.min() + 1),
                     float(rows.max() - rows.min() + 1)],
            "iscrowd": iscrowd,
        })
    return {
        "images": [{"id": i, "height": h, "width": w, "file_name": f"{i}.png"} for i, h, w in images],
        "annotations": anns,
        "categories": [{"id": 1, "name": "cell"}, {"id": 2, "name": "blob"}],
    }


def tight_box(mask):
    rows, cols = np.nonzero(mask)
    return [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]


def to_results(image_id, detections):
    """``detections``: (category_id, mask, score) -> COCO results entries via our own writer."""
    masks = np.stack([mask for _, mask, _ in detections])
    boxes = np.array([tight_box(mask) for _, mask, _ in detections], dtype=np.float64)
    scores = np.array([score for _, _, score in detections])
    categories = np.array([category for category, _, _ in detections])
    return detections_to_results(image_id, masks, boxes, scores, categories)


@pytest.fixture(scope="module")
def case():
    """Three small images, two categories, small / medium / large objects, one crowd region,
    true positives of varied IoU, duplicates, false positives and one missed GT."""
    gt = make_gt(
        images=[(10, 40, 48), (20, 32, 32), (30, 120, 150)],
        annotations=[
            (101, 10, 1, rect(40, 48, (2, 11), (3, 14)), 0),
            (102, 10, 1, disc(40, 48, 30, 25, 6), 0),
            (103, 10, 2, rect(40, 48, (20, 35), (2, 12)), 0),
            (104, 10, 1, rect(40, 48, (2, 15), (30, 45)), 1),  # crowd: an ignore region
            (201, 20, 1, rect(32, 32, (4, 13), (4, 13)), 0),
            (202, 20, 2, rect(32, 32, (18, 27), (16, 29)), 0),  # never detected
            (301, 30, 1, rect(120, 150, (5, 104), (5, 104)), 0),  # large
            (302, 30, 2, rect(120, 150, (20, 55), (110, 145)), 0),  # medium
            (303, 30, 1, disc(120, 150, 112, 20, 5), 0),
        ],
    )
    rows, cols = np.mgrid[:120, :150]
    # A thin diagonal false positive: its mask area is small (< 32²) but its box area is medium.
    diagonal = (abs((rows - 60) - (cols - 108)) <= 2) & (rows >= 60) & (rows < 100) & (cols >= 108) & (cols < 148)
    results = (
        to_results(10, [
            (1, rect(40, 48, (2, 11), (4, 15)), 0.9),
            (1, disc(40, 48, 30, 25, 5), 0.6),
            (1, rect(40, 48, (4, 12), (32, 42)), 0.95),  # on the crowd region
            (2, rect(40, 48, (22, 35), (2, 12)), 0.7),
            (1, rect(40, 48, (30, 37), (35, 44)), 0.8),  # false positive
            (2, rect(40, 48, (20, 35), (2, 12)), 0.3),  # exact duplicate of 103 at a lower score
        ])
        + to_results(20, [
            (1, rect(32, 32, (4, 13), (4, 13)), 0.5),
            (2, rect(32, 32, (2, 8), (20, 30)), 0.85),  # false positive
        ])
        + to_results(30, [
            (1, rect(120, 150, (9, 100), (9, 100)), 0.75),
            (2, rect(120, 150, (20, 55), (113, 148)), 0.65),
            (1, diagonal, 0.88),
            (1, disc(120, 150, 113, 20, 5), 0.4),
            (1, rect(120, 150, (110, 112), (60, 62)), 0.1),  # false positive
        ])
    )
    return gt, results


def reference_metrics(gt, results, iou_type):
    """COCOeval straight from pycocotools; as in detectron2, mask AP is run without the results' boxes."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("builtins.print", lambda *args, **kwargs: None)
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        detections = copy.deepcopy(results)
        if iou_type == "segm":
            for detection in detections:
                del detection["bbox"]
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(detections), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {
        f"{iou_type}/{name}": 100.0 * value if value >= 0 else math.nan
        for name, value in zip(METRIC_NAMES, evaluator.stats[:6])
    }


@pytest.fixture(scope="module")
def reference(case):
    gt, results = case
    return {**reference_metrics(gt, results, "segm"), **reference_metrics(gt, results, "bbox")}


def test_case_is_not_trivial(reference):
    """The fixed case exercises every area range and gives different mask and box numbers."""
    assert all(0.0 < value < 100.0 for value in reference.values())
    assert reference["segm/AP"] != reference["bbox/AP"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_evaluate_matches_pycocotools(case, reference, backend):
    gt, results = case
    metrics = evaluate(gt, results, backend=backend)
    assert list(metrics) == [f"{t}/{name}" for t in ("segm", "bbox") for name in METRIC_NAMES]
    for key, expected in reference.items():
        assert metrics[key] == pytest.approx(expected, abs=1e-6), key


@pytest.mark.parametrize("backend", BACKENDS)
def test_evaluate_reads_files_and_leaves_inputs_unchanged(case, reference, backend, tmp_path):
    gt, results = case
    gt_before, results_before = copy.deepcopy(gt), copy.deepcopy(results)
    evaluate(gt, results, backend=backend)
    assert gt == gt_before and results == results_before

    gt_path, results_path = tmp_path / "gt.json", tmp_path / "results.json"
    gt_path.write_text(json.dumps(gt))
    write_results(results_path, results)
    metrics = evaluate(gt_path, results_path, iou_types=["bbox"], backend=backend)
    assert list(metrics) == [f"bbox/{name}" for name in METRIC_NAMES]
    for key, value in metrics.items():
        assert value == pytest.approx(reference[key], abs=1e-6), key


def one_image_case(detection_masks_and_scores):
    """20x20 image: GT X (rows/cols 2..7, 36 px), GT Y (rows 2..4, cols 12..17) and a crowd
    region (rows/cols 10..17); all objects are small, so APm and APl are undefined."""
    gt = make_gt(
        images=[(1, 20, 20)],
        annotations=[
            (1, 1, 1, rect(20, 20, (2, 7), (2, 7)), 0),
            (2, 1, 1, rect(20, 20, (2, 4), (12, 17)), 0),
            (3, 1, 1, rect(20, 20, (10, 17), (10, 17)), 1),
        ],
    )
    return gt, to_results(1, [(1, mask, score) for mask, score in detection_masks_and_scores])


X = rect(20, 20, (2, 7), (2, 7))
Y = rect(20, 20, (2, 4), (12, 17))
IN_CROWD = rect(20, 20, (11, 16), (11, 16))
BACKGROUND = rect(20, 20, (14, 16), (0, 3))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("detections", "expected_ap"),
    [
        # Both found exactly: AP 100.
        ([(X, 0.8), (Y, 0.7)], 100.0),
        # A false positive ranked first: precision 1/2 at recall 1/2 and 2/3 at recall 1, so the
        # interpolated precision is 2/3 at all 101 recall thresholds.
        ([(BACKGROUND, 0.9), (X, 0.8), (Y, 0.7)], 200.0 / 3.0),
        # The same detection inside the crowd region is ignored, not a false positive.
        ([(IN_CROWD, 0.9), (X, 0.8), (Y, 0.7)], 100.0),
        # Y missed: precision 1 up to recall 0.5, i.e. at 51 of the 101 recall thresholds.
        ([(X, 0.8)], 100.0 * 51 / 101),
    ],
)
def test_hand_computed_ap(backend, detections, expected_ap):
    gt, results = one_image_case(detections)
    metrics = evaluate(gt, results, backend=backend)
    for iou_type in ("segm", "bbox"):
        for name in ("AP", "AP50", "AP75", "APs"):
            assert metrics[f"{iou_type}/{name}"] == pytest.approx(expected_ap, abs=1e-9)
        assert math.isnan(metrics[f"{iou_type}/APm"]) and math.isnan(metrics[f"{iou_type}/APl"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_results_score_zero(case, backend):
    gt, _ = case
    metrics = evaluate(gt, [], backend=backend)
    assert metrics == {f"{t}/{name}": 0.0 for t in ("segm", "bbox") for name in METRIC_NAMES}


@pytest.mark.parametrize("backend", BACKENDS)
def test_quiet_unless_verbose(case, backend, capfd):
    gt, results = case
    evaluate(gt, results, backend=backend)
    assert capfd.readouterr().out == ""
    evaluate(gt, results, iou_types=["bbox"], backend=backend, verbose=True)
    assert "Average Precision" in capfd.readouterr().out


def test_results_that_do_not_match_the_gt_are_named(case):
    gt, results = case
    good = results[0]
    with pytest.raises(ValueError, match="results: entry 1: image_id 99 is not an image of ground truth"):
        evaluate(gt, [good, {**good, "image_id": 99}])
    with pytest.raises(ValueError, match="results: entry 1: category_id 3 is not a category"):
        evaluate(gt, [good, {**good, "category_id": 3}])
    with pytest.raises(ValueError, match=r"entry 0: mask size \[40, 40\] differs from image 10's .* \[40, 48\]"):
        evaluate(gt, [{**good, "segmentation": compressed_rle(np.ones((40, 40), dtype=bool))}])
    box_only = {key: value for key, value in good.items() if key != "segmentation"}
    with pytest.raises(ValueError, match="entry 0: has no 'segmentation', needed for segm AP"):
        evaluate(gt, [box_only])
    assert evaluate(gt, [box_only], iou_types=["bbox"])["bbox/AP"] >= 0.0


def test_bad_results_file_and_arguments(case, tmp_path):
    gt, results = case
    path = tmp_path / "results.json"
    path.write_text(json.dumps([results[0], {"image_id": 10, "category_id": 1}]))
    with pytest.raises(ValueError, match=r"results.json: entry 1: missing key\(s\) \['score'\]"):
        evaluate(gt, path)
    with pytest.raises(ValueError, match="backend must be one of"):
        evaluate(gt, results, backend="detectron2")
    with pytest.raises(ValueError, match="iou_types must be distinct values"):
        evaluate(gt, results, iou_types=["keypoints"])
    with pytest.raises(ValueError, match="not a COCO instance file"):
        evaluate({"images": []}, results)


def test_format_metrics_table():
    metrics = {f"segm/{name}": value for name, value in zip(METRIC_NAMES, [31.97, 50, 30.5, 12.25, 40, math.nan])}
    lines = format_metrics(metrics).splitlines()
    assert lines[0].split() == list(METRIC_NAMES)
    assert lines[1].split() == ["segm", "31.97", "50.00", "30.50", "12.25", "40.00", "-"]


def _broken(gt, index, key, value):
    broken = copy.deepcopy(gt)
    broken["annotations"][index][key] = value
    return broken


@pytest.mark.parametrize(("key", "value", "message"), [
    ("image_id", 99, "annotation 101: unknown image_id 99"),
    ("id", 102, "duplicate annotation id 102"),
    ("category_id", 9, "annotation 101: unknown category_id 9"),
    ("bbox", [2, 3, 0, 9], "annotation 101: bbox has width or height <= 0"),
    ("bbox", [60, 50, 4, 4], "annotation 101: bbox .* lies outside image 10"),
    ("segmentation", [[2, 3, 9, 3]], r"annotation 101: a polygon needs at least 3 \(x, y\) points"),
    ("segmentation", {"size": [40, 48], "counts": [0, 100]}, "annotation 101: RLE counts cover 100 pixels"),
    ("segmentation", {"size": [20, 48], "counts": [960]}, r"annotation 101: RLE size \[20, 48\] is not"),
])
def test_ground_truth_is_validated_like_training_data(case, tmp_path, key, value, message):
    """Issue 13, case 3: each of these gave an AP (or a traceback without an id) and exit status 0."""
    gt, results = case
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(_broken(gt, 0, key, value)))
    with pytest.raises(DatasetError, match=f"{path}: {message}"):
        evaluate(path, results)
    with pytest.raises(DatasetError, match=f"ground truth: {message}"):
        evaluate(_broken(gt, 0, key, value), results)


def test_a_result_rle_with_garbage_counts_is_named(case, tmp_path):
    gt, results = case
    broken = copy.deepcopy(results)
    broken[1]["segmentation"]["counts"] = "\x7f" + broken[1]["segmentation"]["counts"]
    with pytest.raises(ResultsError, match="results: entry 1: RLE counts is not a valid compressed RLE string"):
        evaluate(gt, broken)
