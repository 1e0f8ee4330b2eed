import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from apis.evaluation.results import (
    detections_to_results,
    encode_mask,
    load_results,
    validate_results,
    write_results,
)


def test_encode_mask_round_trips_through_pycocotools_decode():
    mask = np.random.default_rng(0).random((7, 11)) > 0.5
    rle = encode_mask(mask)
    assert rle["size"] == [7, 11]
    assert isinstance(rle["counts"], str)
    json.dumps(rle)  # plain JSON types only
    decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
    np.testing.assert_array_equal(decoded.astype(bool), mask)


@pytest.mark.parametrize("bad", [np.ones((4, 4), dtype=np.uint8), np.ones((2, 4, 4), dtype=bool)])
def test_encode_mask_rejects_non_bool_or_non_2d(bad):
    with pytest.raises(ValueError, match="2-D bool mask"):
        encode_mask(bad)


def test_detections_to_results_boxes_masks_and_types():
    masks = np.zeros((2, 6, 8), dtype=bool)
    masks[0, 1:4, 2:6] = True  # rows 1..3, columns 2..5
    masks[1, 5, 7] = True
    boxes = np.array([[2.0, 1.0, 6.0, 4.0], [7.0, 5.0, 8.0, 6.0]], dtype=np.float32)
    results = detections_to_results(3, masks, boxes, np.array([0.9, 0.25]), np.array([5, 7], dtype=np.int64))

    assert [r["bbox"] for r in results] == [[2.0, 1.0, 4.0, 3.0], [7.0, 5.0, 1.0, 1.0]]
    assert [(r["image_id"], r["category_id"], r["score"]) for r in results] == [(3, 5, 0.9), (3, 7, 0.25)]
    assert all(type(r["image_id"]) is int and type(r["category_id"]) is int for r in results)
    for result, mask in zip(results, masks):
        rle = {"size": result["segmentation"]["size"], "counts": result["segmentation"]["counts"].encode()}
        np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), mask)
        # The tight xyxy box of the mask pixels is the box pycocotools derives from the mask.
        np.testing.assert_allclose(mask_utils.toBbox(rle), result["bbox"])
    json.dumps(results)


def test_detections_to_results_without_masks_and_empty():
    results = detections_to_results(1, None, [[0, 0, 2, 3]], [0.5], [1])
    assert results == [{"image_id": 1, "category_id": 1, "score": 0.5, "bbox": [0.0, 0.0, 2.0, 3.0]}]
    assert detections_to_results(1, np.zeros((0, 4, 4), dtype=bool), np.zeros((0, 4)), [], []) == []


def test_detections_to_results_rejects_inconsistent_input():
    with pytest.raises(ValueError, match="2 boxes, 1 scores"):
        detections_to_results(1, None, [[0, 0, 1, 1], [0, 0, 2, 2]], [0.5], [1, 1])
    with pytest.raises(ValueError, match="detection 1 has an invalid xyxy box"):
        detections_to_results(1, None, [[0, 0, 1, 1], [3, 0, 2, 2]], [0.5, 0.4], [1, 1])
    with pytest.raises(ValueError, match="masks must be bool"):
        detections_to_results(1, np.ones((1, 4, 4), dtype=np.float32), [[0, 0, 1, 1]], [0.5], [1])


def test_write_then_load_round_trip_is_atomic(tmp_path):
    masks = np.zeros((1, 5, 5), dtype=bool)
    masks[0, 1:3, 1:4] = True
    results = detections_to_results(4, masks, [[1, 1, 4, 3]], [0.7], [2])
    results.append({"image_id": np.int64(4), "category_id": 2, "score": np.float32(0.5), "bbox": [0, 0, 1, 1]})
    path = tmp_path / "results.json"
    path.write_text("old content")

    write_results(path, results)

    loaded = load_results(path)
    assert loaded[0] == results[0]
    assert loaded[1] == {"image_id": 4, "category_id": 2, "score": 0.5, "bbox": [0, 0, 1, 1]}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left behind


def test_write_results_refuses_bad_entries_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("[]")
    with pytest.raises(ValueError, match="entry 0: missing key"):
        write_results(path, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}])
    assert path.read_text() == "[]"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


GOOD = {"image_id": 1, "category_id": 1, "score": 0.5, "bbox": [0, 0, 2, 2]}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}, r"entry 1: missing key\(s\) \['score'\]"),
        ({**GOOD, "score": "high"}, "entry 1: score must be a finite number"),
        ({**GOOD, "score": float("nan")}, "entry 1: score must be a finite number"),
        ({**GOOD, "image_id": 1.5}, "entry 1: image_id must be an integer"),
        ({**GOOD, "category_id": True}, "entry 1: category_id must be an integer"),
        ({**GOOD, "bbox": [0, 0, 1]}, r"entry 1: bbox must be \[x, y, w, h\]"),
        ({**GOOD, "bbox": [0, 0, -1, 1]}, r"entry 1: bbox must be \[x, y, w, h\]"),
        ({k: v for k, v in GOOD.items() if k != "bbox"}, "entry 1: needs 'bbox' or 'segmentation'"),
        ({**GOOD, "segmentation": [[0, 0, 1, 0, 1, 1]]}, "entry 1: segmentation must be a compressed RLE"),
        ({**GOOD, "segmentation": {"size": [2, 2], "counts": [0, 4]}}, "entry 1: segmentation must be a"),
        ("not an object", "entry 1: expected an object"),
    ],
)
def test_load_results_names_file_entry_and_problem(tmp_path, entry, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([GOOD, entry]))
    with pytest.raises(ValueError, match=message) as error:
        load_results(path)
    assert str(path) in str(error.value)


def test_load_results_rejects_invalid_json_and_non_lists(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('[{"image_id": 1,')
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        load_results(broken)
    not_a_list = tmp_path / "dict.json"
    not_a_list.write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match="dict.json: expected a list of result entries, got dict"):
        load_results(not_a_list)


def test_validate_results_accepts_extra_keys_and_segmentation_only():
    segmentation_only = {"image_id": 1, "category_id": 1, "score": 0.1, "segmentation": encode_mask(np.eye(3) > 0)}
    validate_results([{**GOOD, "id": 7, "area": 4.0}, segmentation_only])
