"""COCO loading: every bad input fails before any work, with a message naming file and id."""

import json
import logging
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from apis.data import image_files
from apis.data.coco import DatasetError, load_coco, segmentation_problem


def _write_dataset(root, mutate=None, image_size=(40, 30)):
    """A 2-image dataset (one RLE, one polygon, one crowd annotation); ``mutate(data)`` breaks it."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    w, h = image_size
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(root / "images" / name)
    mask = np.zeros((h, w), np.uint8, order="F")
    mask[5:15, 10:20] = 1
    rle = mask_utils.encode(mask)
    rle["counts"] = rle["counts"].decode("ascii")
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": w, "height": h},
                   {"id": 2, "file_name": "b.png", "width": w, "height": h}],
        "categories": [{"id": 3, "name": "cell"}, {"id": 7, "name": "dot"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "bbox": [10, 5, 10, 10], "segmentation": rle,
             "area": 100, "iscrowd": 0},
            {"id": 11, "image_id": 2, "category_id": 7, "bbox": [2, 2, 4, 4],
             "segmentation": [[2, 2, 6, 2, 6, 6, 2, 6]], "area": 16, "iscrowd": 0},
            {"id": 12, "image_id": 2, "category_id": 3, "bbox": [20, 10, 5, 5], "segmentation": rle,
             "area": 25, "iscrowd": 1},
        ],
    }
    if mutate:
        mutate(data)
    path = root / "annotations" / "train.json"
    path.write_text(json.dumps(data))
    return path


def test_loads_records_labels_and_crowd(tmp_path):
    ds = load_coco(_write_dataset(tmp_path))
    assert len(ds) == 2 and ds.num_classes == 2 and ds.category_ids == [3, 7]
    first = ds.image(1).instances[0]
    assert first.bbox_xyxy == (10.0, 5.0, 20.0, 15.0) and first.label == 0
    assert ds.image(2).instances[0].label == 1
    assert [c.ann_id for c in ds.image(2).crowd] == [12]
    assert [i.ann_id for i in ds.instances()] == [10, 11]  # crowd is never a training instance


def test_masks_decode_lazily_rle_and_polygon(tmp_path):
    ds = load_coco(_write_dataset(tmp_path))
    masks = ds.masks("oracle")
    rle_mask = masks.mask(10)
    assert rle_mask.dtype == bool and rle_mask.shape == (30, 40) and rle_mask.sum() == 100
    assert rle_mask[5:15, 10:20].all()
    assert masks.mask(11)[3, 3] and not masks.mask(11)[10, 10]


def test_masks_need_a_purpose_and_segmentations(tmp_path):
    ds = load_coco(_write_dataset(tmp_path))
    with pytest.raises(ValueError, match="masks may be read only for"):
        ds.masks("training")

    def drop(d):
        for a in d["annotations"]:
            a.pop("segmentation")

    no_masks = load_coco(_write_dataset(tmp_path / "nomask", drop))
    with pytest.raises(DatasetError, match="no 'segmentation'.*evaluation needs GT masks"):
        no_masks.masks("evaluation")


def _set(path, value):
    def mutate(d):
        node = d
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return mutate


@pytest.mark.parametrize("mutate, message", [
    (_set(["annotations", 0, "image_id"], 99), "annotation 10: unknown image_id 99"),
    (_set(["annotations", 0, "category_id"], 5), "annotation 10: unknown category_id 5"),
    (_set(["annotations", 1, "id"], 10), "duplicate annotation id 10"),
    (_set(["images", 1, "id"], 1), "duplicate image id 1"),
    (_set(["annotations", 0, "bbox"], [10, 5, 0, 10]), "annotation 10: bbox has width or height <= 0"),
    (_set(["annotations", 0, "bbox"], [10, 5, 10, -3]), "annotation 10: bbox has width or height <= 0"),
    (_set(["annotations", 0, "bbox"], [100, 100, 5, 5]), "annotation 10: bbox .* lies outside image 1"),
    (_set(["images", 0, "file_name"], "missing.png"), "image 1: file .*missing.png is missing"),
    (_set(["images", 0, "width"], 41), "image 1: json says 41x30 but .*a.png is 40x30"),
])
def test_bad_input_is_named(tmp_path, mutate, message):
    path = _write_dataset(tmp_path, mutate)
    with pytest.raises(DatasetError, match=message) as info:
        load_coco(path)
    assert str(path) in str(info.value)


def test_invalid_json_and_unreadable_image(tmp_path):
    path = _write_dataset(tmp_path)
    (tmp_path / "images" / "b.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="image 2: file .*b.png is unreadable"):
        load_coco(path)
    path.write_text("{ not json")
    with pytest.raises(DatasetError, match=f"{path}: invalid JSON"):
        load_coco(path)


def test_box_partly_outside_is_clipped_with_warning(tmp_path, caplog):
    path = _write_dataset(tmp_path, _set(["annotations", 0, "bbox"], [30, 20, 20, 20]))
    with caplog.at_level(logging.WARNING):
        ds = load_coco(path)
    assert ds.instance(10).bbox_xyxy == (30.0, 20.0, 40.0, 30.0)
    assert "annotation 10" in caplog.text and "clipped" in caplog.text


def test_subset_keeps_first_images(tmp_path):
    ds = load_coco(_write_dataset(tmp_path)).subset(1)
    assert [im.image_id for im in ds.images] == [1]
    assert ds.masks("evaluation").mask(10).sum() == 100


def _set_ann(index, key, value):
    return _set(["annotations", index, key], value)


def _uncompressed(counts, size=(30, 40)):
    return {"size": list(size), "counts": counts}


# Issue 13, cases 4 and 6 (and 3: `apis eval --gt` reads GT through the same checks): each of these passed
# silently, gave a traceback without an id, or failed after training had started.
BAD_ANNOTATIONS = [
    (_set_ann(0, "bbox", [10, float("nan"), 5, 5]), r"annotation 10: bbox must be \[x, y, w, h\] of finite numbers"),
    (_set_ann(1, "segmentation", [[2, 2, 6, 2]]), r"annotation 11: a polygon needs at least 3 \(x, y\) points, got 4"),
    (_set_ann(1, "segmentation", [[2, 2]]), "annotation 11: a polygon needs at least 3"),
    (_set_ann(1, "segmentation", [[]]), "annotation 11: a polygon needs at least 3"),
    (_set_ann(1, "segmentation", [[2, 2, 6, "x", 6, 6]]), "annotation 11: a polygon must be a list of finite numbers"),
    (_set_ann(0, "segmentation", _uncompressed([0, 1199])), "annotation 10: RLE counts cover 1199 pixels, the 40x30"),
    (_set_ann(0, "segmentation", _uncompressed([0, 1300])), "annotation 10: RLE counts cover 1300 pixels"),
    (_set_ann(0, "segmentation", _uncompressed([1200], size=(20, 60))),
     r"annotation 10: RLE size \[20, 60\] is not the image's \[height, width\] \[30, 40\]"),
    (_set_ann(0, "segmentation", {"size": [30, 40], "counts": "\x7f\x7f"}),
     "annotation 10: RLE counts is not a valid compressed RLE string"),
    (_set_ann(0, "segmentation", {"size": [30, 40], "counts": "02"}), "annotation 10: RLE counts cover 2 pixels"),
    (_set_ann(0, "segmentation", {"size": [30, 40], "counts": None}), "annotation 10: RLE counts must be a string"),
    (_set_ann(0, "segmentation", "cell"), "annotation 10: segmentation must be polygons or an RLE object, got str"),
    # Found by tests/test_fuzz_readers.py: each was a TypeError or ValueError without the file.
    (_set_ann(0, "image_id", [1]), r"annotation 10: unknown image_id \[1\]"),
    (_set_ann(0, "category_id", {}), "annotation 10: unknown category_id {}"),
    (_set_ann(0, "iscrowd", [0]), r"annotation 10: iscrowd must be 0 or 1, got \[0\]"),
    (_set_ann(0, "area", "big"), "annotation 10: area must be a number >= 0, got 'big'"),
    (_set_ann(0, "id", False), "an entry of the annotation list has no integer 'id'"),
]


@pytest.mark.parametrize(("mutate", "message"), BAD_ANNOTATIONS)
def test_bad_annotations_fail_at_load_naming_file_and_id(tmp_path, mutate, message):
    path = _write_dataset(tmp_path, mutate)
    with pytest.raises(DatasetError, match=f"{path}: {message}"):
        load_coco(path)


def test_a_compressed_rle_string_is_measured_exactly_as_pycocotools_decodes_it():
    rng = np.random.default_rng(0)
    for _ in range(20):
        h, w = (int(v) for v in rng.integers(1, 40, size=2))
        mask = np.asfortranarray(rng.random((h, w)) < rng.random())
        counts = mask_utils.encode(mask)["counts"].decode("ascii")
        assert segmentation_problem({"size": [h, w], "counts": counts}, w, h) is None
        assert "cover" in segmentation_problem({"size": [h, w + 1], "counts": counts}, w + 1, h)


def test_a_16_bit_grey_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    """Issue 13, case 5: mode I;16 loaded as an all-255 image."""
    path = _write_dataset(tmp_path)
    grey = np.array([[0, 257, 65535, 1000] * 10] * 30, dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "images" / "a.png")
    with Image.open(tmp_path / "images" / "a.png") as img:
        assert img.mode.startswith("I")
    pixels = load_coco(path).load_image(1)
    assert pixels.dtype == np.uint8 and pixels.shape == (30, 40, 3)
    assert pixels[0, :4, 0].tolist() == [0, 1, 255, 4] and (pixels[..., 0] == pixels[..., 2]).all()


def _large_images(root, fmt):
    """Overwrite both images with noise, JPEG or PNG files of well over 64 KiB."""
    noisy = np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    for name in ("a", "b"):
        Image.fromarray(noisy).save(root / "images" / f"{name}.{fmt}", quality=95)
        assert (root / "images" / f"{name}.{fmt}").stat().st_size > 64 * 1024


def _rename_images(fmt):
    def mutate(data):
        for image in data["images"]:
            image["file_name"] = image["file_name"].replace(".png", f".{fmt}")
    return mutate


def test_images_are_decoded_whole_once_then_remembered_by_size_and_mtime(tmp_path, monkeypatch):
    path = _write_dataset(tmp_path, _rename_images("jpg"), image_size=(300, 300))
    _large_images(tmp_path, "jpg")
    decoded = []
    real = image_files.decode_whole
    monkeypatch.setattr(image_files, "decode_whole", lambda file: decoded.append(file.name) or real(file))
    assert len(load_coco(path)) == 2 and sorted(decoded) == ["a.jpg", "b.jpg"]
    load_coco(path)
    assert len(decoded) == 2  # unchanged files: not decoded again
    os.utime(tmp_path / "images" / "b.jpg", ns=(1, 1))
    load_coco(path)
    assert sorted(decoded) == ["a.jpg", "b.jpg", "b.jpg"]
    data = (tmp_path / "images" / "a.jpg").read_bytes()
    stat = (tmp_path / "images" / "a.jpg").stat()
    (tmp_path / "images" / "a.jpg").write_bytes(data[: len(data) // 2] + b"\xff\xd9")  # cut; same mtime
    os.utime(tmp_path / "images" / "a.jpg", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(DatasetError, match=r"image 1: file .*a.jpg is unreadable: the JPEG data stops before"):
        load_coco(path)  # another size: decoded again


def test_a_jpeg_cut_short_and_given_its_end_marker_back_fails_at_load(tmp_path):
    """Decoded, it would be a grey lower half (libjpeg fills what it has no data for) and train silently."""
    path = _write_dataset(tmp_path, _rename_images("jpg"), image_size=(300, 300))
    _large_images(tmp_path, "jpg")
    whole = (tmp_path / "images" / "b.jpg").read_bytes()
    for cut in (0.5, 0.99):
        (tmp_path / "images" / "b.jpg").write_bytes(whole[: int(len(whole) * cut)] + b"\xff\xd9")
        with Image.open(tmp_path / "images" / "b.jpg") as image:
            image.load()  # Pillow reads it without complaint
            assert (np.asarray(image)[-8:, -8:] == 128).all()
        with pytest.raises(DatasetError, match=r"image 2: file .*b.jpg is unreadable: the JPEG data stops before"):
            load_coco(path)


def test_a_whole_jpeg_whose_corner_is_grey_128_is_not_taken_for_a_cut_one(tmp_path):
    path = _write_dataset(tmp_path, _rename_images("jpg"), image_size=(300, 300))
    _large_images(tmp_path, "jpg")
    padded = np.asarray(Image.open(tmp_path / "images" / "a.jpg")).copy()
    padded[200:] = 128  # letterboxed with mid-grey
    Image.fromarray(padded).save(tmp_path / "images" / "a.jpg", quality=95)
    with Image.open(tmp_path / "images" / "a.jpg") as image:
        assert (np.asarray(image)[-8:, -8:] == 128).all()
    assert len(load_coco(path)) == 2


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_an_image_damaged_in_the_middle_fails_at_load_naming_the_file(tmp_path, fmt):
    path = _write_dataset(tmp_path, _rename_images(fmt), image_size=(300, 300))
    _large_images(tmp_path, fmt)
    data = bytearray((tmp_path / "images" / f"b.{fmt}").read_bytes())
    middle = len(data) // 2
    data[middle:middle + 200] = bytes(200) if fmt == "png" else b"\xff\xd9" + bytes(198)
    (tmp_path / "images" / f"b.{fmt}").write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=rf"image 2: file .*b.{fmt} is unreadable: "):
        load_coco(path)


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_a_large_truncated_image_fails_at_load_naming_the_file(tmp_path, fmt):
    path = _write_dataset(tmp_path, _rename_images(fmt), image_size=(300, 300))
    _large_images(tmp_path, fmt)
    data = (tmp_path / "images" / f"b.{fmt}").read_bytes()
    (tmp_path / "images" / f"b.{fmt}").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DatasetError, match=rf"image 2: file .*b.{fmt} is unreadable: image file is truncated"):
        load_coco(path)


def test_a_truncated_image_fails_at_load_naming_the_file(tmp_path):
    """Issue 13, case 7: a truncated image passed validation and failed in M0 without a file name."""
    path = _write_dataset(tmp_path)
    noisy = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(tmp_path / "images" / "b.png")
    data = (tmp_path / "images" / "b.png").read_bytes()
    (tmp_path / "images" / "b.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"image 2: file .*b.png is unreadable: .*truncated"):
        load_coco(path)


def test_only_the_images_a_run_uses_are_decoded_the_others_have_their_header_checked(tmp_path):
    """data.max_train_images=N keeps the first N images (by id): a CPU-sized run on COCO decodes those, not 118k."""
    path = _write_dataset(tmp_path, _rename_images("png"), image_size=(300, 300))
    _large_images(tmp_path, "png")
    data = bytearray((tmp_path / "images" / "b.png").read_bytes())
    data[len(data) // 2:len(data) // 2 + 200] = bytes(200)
    (tmp_path / "images" / "b.png").write_bytes(bytes(data))
    assert len(load_coco(path, used_images=1).subset(1)) == 1  # image 2 is left out: its header is whole
    with pytest.raises(DatasetError, match=r"image 2: file .*b.png is unreadable"):
        load_coco(path, used_images=2)
    (tmp_path / "images" / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"image 2: file .*b.png is missing"):
        load_coco(path, used_images=1)
