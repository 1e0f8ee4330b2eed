import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from apis.data.coco import DatasetError
from apis.data.points import InstancePoints, group_points, read_pointsup, to_tensors, write_pointsup

DSB_VAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "dsb2018_nuclei" / "annotations" / "val.json"


def small_coco() -> dict:
    """Two images: annotation 1 with a polygon, 2 with an RLE mask, 3 a crowd, 4 never asked."""
    polygon = [[2.0, 2.0, 9.0, 2.0, 9.0, 7.0, 2.0, 7.0]]
    return {
        "info": {"description": "test"},
        "images": [{"id": 10, "file_name": "a.png", "width": 16, "height": 12},
                   {"id": 11, "file_name": "b.png", "width": 20, "height": 20}],
        "categories": [{"id": 1, "name": "nucleus"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 1, "bbox": [2.0, 2.0, 7.0, 5.0], "area": 35.0,
             "iscrowd": 0, "segmentation": polygon, "source_mask": "m1.png"},
            {"id": 2, "image_id": 11, "category_id": 1, "bbox": [0.0, 0.0, 4.0, 4.0], "area": 16.0,
             "iscrowd": 0, "segmentation": {"size": [20, 20], "counts": "04<0000000000000000000000"}},
            {"id": 3, "image_id": 11, "category_id": 1, "bbox": [5.0, 5.0, 10.0, 10.0], "area": 100.0,
             "iscrowd": 1, "segmentation": {"size": [20, 20], "counts": "0"}},
            {"id": 4, "image_id": 11, "category_id": 1, "bbox": [10.0, 0.0, 5.0, 5.0], "area": 25.0,
             "iscrowd": 0, "segmentation": polygon},
        ],
    }


def points_of(coords, labels) -> InstancePoints:
    return InstancePoints(np.array(coords, dtype=np.int64), np.array(labels, dtype=np.int64))


def test_round_trip_keeps_known_points_drops_unsure_and_masks(tmp_path):
    coco = small_coco()
    original = copy.deepcopy(coco)
    points = {1: points_of([[3, 4], [8, 2], [5, 5]], [1, -1, 0]), 2: points_of([[0, 3]], [1])}
    out = tmp_path / "points.json"

    assert write_pointsup(coco, points, out) == 2
    assert coco == original  # the caller's dict is untouched

    read = read_pointsup(out)
    assert sorted(read) == [1, 2]
    np.testing.assert_array_equal(read[1].coords, [[3, 4], [5, 5]])
    np.testing.assert_array_equal(read[1].labels, [1, 0])
    np.testing.assert_array_equal(read[2].coords, [[0, 3]])
    np.testing.assert_array_equal(read[2].labels, [1])

    written = json.loads(out.read_text())
    by_id = {ann["id"]: ann for ann in written["annotations"]}
    assert by_id[1]["point_coords"] == [[3, 4], [5, 5]] and by_id[1]["point_labels"] == [1, 0]
    assert by_id[3]["point_coords"] == [] and by_id[3]["point_labels"] == []  # crowd: keys, no points
    assert "point_coords" not in by_id[4] and "point_labels" not in by_id[4]
    point_keys = {"segmentation", "point_coords", "point_labels"}
    for ann, before in zip(written["annotations"], original["annotations"]):
        assert "segmentation" not in ann
        assert {k: v for k, v in ann.items() if k not in point_keys} == \
               {k: v for k, v in before.items() if k != "segmentation"}
    assert {k: v for k, v in written.items() if k != "annotations"} == \
           {k: v for k, v in original.items() if k != "annotations"}


def test_written_file_loads_in_pycocotools_with_points(tmp_path):
    # detectron2's load_coco_json reads the file with pycocotools' COCO and copies the point keys as-is.
    out = tmp_path / "points.json"
    write_pointsup(small_coco(), {1: points_of([[3, 4]], [0])}, out)
    coco = COCO(str(out))
    assert sorted(coco.getAnnIds()) == [1, 2, 3, 4]
    assert coco.loadAnns([1])[0]["point_coords"] == [[3, 4]]
    assert coco.loadAnns([1])[0]["point_labels"] == [0]


def test_only_unsure_answers_give_no_point_fields_and_masks_kept_on_request(tmp_path):
    out = tmp_path / "points.json"
    assert write_pointsup(small_coco(), {1: points_of([[3, 4]], [-1])}, out, drop_masks=False) == 0
    by_id = {ann["id"]: ann for ann in json.loads(out.read_text())["annotations"]}
    assert "point_coords" not in by_id[1]
    assert by_id[1]["segmentation"] == small_coco()["annotations"][0]["segmentation"]
    assert read_pointsup(out) == {}


def test_existing_point_fields_are_replaced(tmp_path):
    first, second = tmp_path / "p1.json", tmp_path / "p2.json"
    write_pointsup(small_coco(), {1: points_of([[3, 4]], [1]), 2: points_of([[1, 1]], [0])}, first)
    write_pointsup(first, {1: points_of([[5, 6]], [0])}, second)
    read = read_pointsup(second)
    assert sorted(read) == [1]
    np.testing.assert_array_equal(read[1].coords, [[5, 6]])


def test_write_rejects_unknown_and_crowd_annotations_without_touching_the_output(tmp_path):
    out = tmp_path / "points.json"
    out.write_text("old")
    with pytest.raises(ValueError, match=r"<coco dict>.*\[99\]"):
        write_pointsup(small_coco(), {99: points_of([[1, 1]], [1])}, out)
    with pytest.raises(ValueError, match="annotation 3 is a crowd"):
        write_pointsup(small_coco(), {3: points_of([[6, 6]], [1])}, out)
    with pytest.raises(ValueError, match=r"annotation 1: points \[\[16, 4\]\] lie outside the 16x12 image 10"):
        write_pointsup(small_coco(), {1: points_of([[16, 4]], [1])}, out)
    assert out.read_text() == "old"


@pytest.mark.parametrize(("fields", "problem"), [
    ({"point_coords": [[1, 2], [3, 4]], "point_labels": [1]}, "2 point_coords but 1 point_labels"),
    ({"point_coords": [[1.5, 2]], "point_labels": [1]}, "integer pixel indices"),
    ({"point_coords": [[1.0, 2.0]], "point_labels": [1]}, "integer pixel indices"),
    ({"point_coords": [[1, 2]], "point_labels": [2]}, "must be 0 or 1"),
    ({"point_coords": [[1, 2]], "point_labels": [-1]}, "must be 0 or 1"),
    ({"point_coords": [[1, 2]], "point_labels": [True]}, "must be 0 or 1"),
    ({"point_coords": [[1, 2, 3]], "point_labels": [1]}, r"list of \[x, y\] pairs"),
    ({"point_coords": [1, 2], "point_labels": [1]}, r"list of \[x, y\] pairs"),
    ({"point_coords": [[1, 2]], "point_labels": 1}, "must be a list"),
    ({"point_coords": [[1, 2]]}, "only one of"),
    ({"point_coords": [[16, 2]], "point_labels": [1]}, "outside the 16x12 image 10"),
    ({"point_coords": [[-1, 2]], "point_labels": [1]}, "outside the 16x12 image 10"),
])
def test_malformed_point_fields_name_file_and_annotation(tmp_path, fields, problem):
    coco = small_coco()
    coco["annotations"][0]["id"] = 7
    coco["annotations"][0].update(fields)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=rf"bad\.json: annotation 7: .*{problem}"):
        read_pointsup(path)


def test_annotations_without_points_are_absent(tmp_path):
    path = tmp_path / "plain.json"
    path.write_text(json.dumps(small_coco()))
    assert read_pointsup(path) == {}


def test_instance_points_validates_and_freezes():
    with pytest.raises(ValueError, match="labels must be in"):
        points_of([[1, 2]], [2])
    with pytest.raises(ValueError, match=r"shape \[1\]"):
        points_of([[1, 2]], [1, 0])
    with pytest.raises(ValueError, match="must be integers"):
        InstancePoints(np.array([[1.5, 2.0]]), np.array([1]))
    caller_coords = np.array([[1, 2]])
    points = InstancePoints(caller_coords, np.array([1]))
    assert len(points) == 1 and points.coords.dtype == np.int64
    with pytest.raises(ValueError, match="read-only"):
        points.coords[0, 0] = 5
    caller_coords[0, 0] = 9  # the caller's array stays writable and is not shared
    assert points.coords[0, 0] == 1
    assert len(InstancePoints([], [])) == 0


def test_to_tensors_pads_with_ignore_label_and_moves_to_pixel_centres():
    coords, labels = to_tensors([points_of([[3, 4], [0, 7]], [1, 0]), points_of([[5, 1]], [-1]),
                                 InstancePoints([], [])])
    assert coords.dtype == torch.float32 and labels.dtype == torch.float32
    expected_coords = torch.tensor([[[3.5, 4.5], [0.5, 7.5]],
                                    [[5.5, 1.5], [0.5, 0.5]],
                                    [[0.5, 0.5], [0.5, 0.5]]])
    torch.testing.assert_close(coords, expected_coords, rtol=0, atol=0)
    torch.testing.assert_close(labels, torch.tensor([[1.0, 0.0], [-1.0, -1.0], [-1.0, -1.0]]), rtol=0, atol=0)
    empty_coords, empty_labels = to_tensors([])
    assert empty_coords.shape == (0, 0, 2) and empty_labels.shape == (0, 0)


@pytest.mark.skipif(not DSB_VAL.exists(), reason="shared DSB2018 data not present")
def test_round_trip_on_real_annotations(tmp_path):
    coco = json.loads(DSB_VAL.read_text())
    images = {image["id"]: image for image in coco["images"]}
    rng = np.random.default_rng(0)
    points = {}
    for ann in coco["annotations"][:200]:
        x, y, w, h = ann["bbox"]
        # integer pixels whose centres fall in the box, as detectron2's PointSup tool samples them
        coords = np.floor(np.column_stack([x + rng.random(3) * w, y + rng.random(3) * h])).astype(np.int64)
        coords = np.minimum(coords, [images[ann["image_id"]]["width"] - 1, images[ann["image_id"]]["height"] - 1])
        points[ann["id"]] = InstancePoints(coords, rng.integers(-1, 2, size=3))
    out = tmp_path / "dsb_points.json"
    write_pointsup(coco, points, out)
    read = read_pointsup(out)
    kept = {ann_id: p for ann_id, p in points.items() if (p.labels != -1).any()}
    assert sorted(read) == sorted(kept)
    for ann_id, p in kept.items():
        np.testing.assert_array_equal(read[ann_id].coords, p.coords[p.labels != -1])
        np.testing.assert_array_equal(read[ann_id].labels, p.labels[p.labels != -1])
    assert all("segmentation" not in ann for ann in COCO(str(out)).dataset["annotations"])


def test_a_point_inside_the_image_but_outside_its_box_is_refused(tmp_path):
    """Issue 13, case 9: such a point was accepted and trained on as if it were about the instance."""
    coco = small_coco()  # annotation 1: box x 2..9, y 2..7 in a 16x12 image
    coco["annotations"][0].update(point_coords=[[3, 3], [12, 3]], point_labels=[1, 0])
    path = tmp_path / "points.json"
    path.write_text(json.dumps(coco))
    with pytest.raises(DatasetError, match=r"points\.json: annotation 1: points \[\[12, 3\]\] lie outside the "
                                           r"annotation's box \[2\.0, 2\.0, 7\.0, 5\.0\]"):
        read_pointsup(path)
    coco["annotations"][0].update(point_coords=[[3, 3], [8, 6]])  # both candidates of the box
    path.write_text(json.dumps(coco))
    assert read_pointsup(path)[1].coords.tolist() == [[3, 3], [8, 6]]


@pytest.mark.parametrize("content", [b"{ not json", b"\xff\xfe", b"[1, 2]", b'{"annotations": [3]}'])
def test_a_malformed_points_file_is_named(tmp_path, content):
    """Issue 13, case 9: malformed JSON gave a JSONDecodeError without the file name."""
    path = tmp_path / "points.json"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=rf"{path}: not (valid JSON|a COCO instance file)"):
        read_pointsup(path)


@pytest.mark.parametrize(("image_fields", "problem"), [({"width": None}, "its image 10 has no valid 'width'"),
                                                       ({"id": [10]}, "")])
def test_points_of_an_image_without_a_valid_size_or_id_are_named(tmp_path, image_fields, problem):
    """Found by tests/test_fuzz_readers.py: a KeyError or TypeError without the file name."""
    coco = small_coco()
    coco["images"][0].update(image_fields)
    coco["annotations"][0].update(point_coords=[[3, 3]], point_labels=[1])
    path = tmp_path / "points.json"
    path.write_text(json.dumps(coco))
    if problem:
        with pytest.raises(DatasetError, match=rf"points\.json: annotation 1: {problem}"):
            read_pointsup(path)
    else:  # an image without an integer id is no image of the annotation: its points are not range-checked
        assert read_pointsup(path)[1].coords.tolist() == [[3, 3]]


def test_group_points_keeps_each_instances_rows_in_order_and_instances_by_first_row():
    rng = np.random.default_rng(0)
    ann_ids = rng.choice([7, 3, 11, 5], size=200)
    coords = rng.integers(0, 50, size=(200, 2))
    labels = rng.choice([1, 0, -1], size=200)
    grouped = group_points(ann_ids, coords, labels)
    first_rows = {}
    for row, ann_id in enumerate(ann_ids.tolist()):
        first_rows.setdefault(ann_id, row)
    assert list(grouped) == sorted(first_rows, key=first_rows.get)
    for ann_id, points in grouped.items():
        rows = ann_ids == ann_id
        np.testing.assert_array_equal(points.coords, coords[rows])
        np.testing.assert_array_equal(points.labels, labels[rows])
        assert points.coords.dtype == points.labels.dtype == np.int64 and len(points) == rows.sum()
        assert not points.coords.flags.writeable and not points.labels.flags.writeable
    assert group_points(np.zeros(0, int), np.zeros((0, 2), int), np.zeros(0, int)) == {}
    with pytest.raises(ValueError, match="point labels must be in"):
        group_points(np.array([1, 2]), np.array([[0, 0], [1, 1]]), np.array([1, 2]))
