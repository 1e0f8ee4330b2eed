"""Fuzzing the readers of the files people give APIS (issue 13; docs/reliability.md).

Each example mutates a valid file once (a value replaced by an arbitrary JSON value, a key or list element
deleted, an element duplicated, or the text truncated or a byte changed) and reads it. Every outcome must be
success or one of APIS's own errors naming the file; any other exception is a bug. The budget is small
(``FUZZ_EXAMPLES`` per reader, derandomized so that CI is reproducible); raise it locally with
``APIS_FUZZ_EXAMPLES=2000``.
"""

import copy
import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

from apis.data.coco import load_coco
from apis.data.points import read_pointsup
from apis.evaluation.coco_eval import evaluate
from apis.evaluation.results import load_results
from apis.utils.errors import ApisError

FUZZ_EXAMPLES = int(os.environ.get("APIS_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**64), max_value=2**64),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6))
JSON_VALUES = st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=5)


def _paths(tree, prefix=()):
    """Every path (tuple of keys and indices) to a value inside ``tree``."""
    yield prefix
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for key, value in items:
        yield from _paths(value, (*prefix, key))


def _mutated_text(data, valid) -> bytes:
    """The bytes of ``valid`` (a JSON tree) after one mutation drawn from ``data``."""
    tree = copy.deepcopy(valid)
    kind = data.draw(st.sampled_from(["replace", "delete", "duplicate", "truncate", "byte"]))
    if kind in ("truncate", "byte"):
        text = json.dumps(tree).encode()
        position = data.draw(st.integers(0, len(text) - 1))
        if kind == "truncate":
            return text[:position]
        return text[:position] + bytes([data.draw(st.integers(0, 255))]) + text[position + 1:]
    path = data.draw(st.sampled_from(list(_paths(tree))[1:]))
    parent = tree
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if kind == "replace":
        parent[key] = data.draw(JSON_VALUES)
    elif kind == "delete":
        del parent[key]
    elif isinstance(parent, list):
        parent.insert(key, copy.deepcopy(parent[key]))
    else:
        parent[key] = [parent[key], copy.deepcopy(parent[key])]
    return json.dumps(tree).encode()


def _read_or_named_error(read, path):
    """Call ``read()``; an exception passes only when it is APIS's own and names ``path``."""
    try:
        read()
    except ApisError as error:
        assert str(path) in str(error), f"{type(error).__name__} without the file name: {error}"


def _rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory):
    """A small valid dataset (images, a polygon, an RLE, a crowd region, points) and a results file for it."""
    root = tmp_path_factory.mktemp("valid")
    (root / "images").mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((20, 24, 3), 90, np.uint8)).save(root / "images" / name)
    mask = np.zeros((20, 24), bool)
    mask[4:12, 6:14] = True
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 24, "height": 20},
                   {"id": 2, "file_name": "b.png", "width": 24, "height": 20}],
        "categories": [{"id": 1, "name": "cell"}, {"id": 2, "name": "dot"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [6, 4, 8, 8], "area": 64, "iscrowd": 0,
             "segmentation": _rle(mask), "point_coords": [[7, 5], [12, 10]], "point_labels": [1, 0]},
            {"id": 11, "image_id": 2, "category_id": 2, "bbox": [2, 2, 6, 5], "area": 30, "iscrowd": 0,
             "segmentation": [[2, 2, 8, 2, 8, 7, 2, 7]], "point_coords": [[3, 3]], "point_labels": [1]},
            {"id": 12, "image_id": 2, "category_id": 1, "bbox": [14, 10, 6, 6], "area": 36, "iscrowd": 1,
             "segmentation": _rle(np.roll(mask, 8, axis=1))},
        ],
    }
    results = [{"image_id": 1, "category_id": 1, "score": 0.9, "bbox": [6, 4, 8, 8], "segmentation": _rle(mask)},
               {"image_id": 2, "category_id": 2, "score": 0.4, "bbox": [2, 2, 6, 5],
                "segmentation": _rle(np.roll(mask, -4, axis=1))}]
    (root / "gt.json").write_text(json.dumps(coco))
    (root / "results.json").write_text(json.dumps(results))
    load_coco(root / "gt.json", root / "images")  # valid as written
    assert read_pointsup(root / "gt.json").keys() == {10, 11}
    assert evaluate(root / "gt.json", root / "results.json")["segm/AP"] >= 0
    return root, coco, results


@FUZZ
@given(data=st.data())
def test_coco_reader_fails_only_with_a_named_dataset_error(valid_files, tmp_path, data):
    root, coco, _ = valid_files
    path = tmp_path / "train.json"
    path.write_bytes(_mutated_text(data, coco))
    _read_or_named_error(lambda: load_coco(path, root / "images").masks("oracle").mask(10), path)


@FUZZ
@given(data=st.data())
def test_points_reader_fails_only_with_a_named_dataset_error(valid_files, tmp_path, data):
    _, coco, _ = valid_files
    path = tmp_path / "points.json"
    path.write_bytes(_mutated_text(data, coco))
    _read_or_named_error(lambda: read_pointsup(path), path)


@FUZZ
@given(data=st.data())
def test_results_reader_and_evaluation_fail_only_with_a_named_error(valid_files, tmp_path, data):
    root, _, results = valid_files
    path = tmp_path / "results.json"
    path.write_bytes(_mutated_text(data, results))
    _read_or_named_error(lambda: load_results(path), path)
    _read_or_named_error(lambda: evaluate(root / "gt.json", path), path)


@FUZZ
@given(data=st.data())
def test_ground_truth_of_eval_fails_only_with_a_named_error(valid_files, tmp_path, data):
    root, coco, _ = valid_files
    path = tmp_path / "gt.json"
    path.write_bytes(_mutated_text(data, coco))
    _read_or_named_error(lambda: evaluate(path, root / "results.json", iou_types=["segm"]), path)
