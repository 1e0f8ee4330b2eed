import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from apis.data.synth import CATEGORIES, SOURCE_CATEGORIES, make_synthetic_dataset, mask_box_iou

TINY = {"num_images": 6, "size": 64, "seed": 0}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("synth") / "tiny"
    return out_dir, make_synthetic_dataset(out_dir, **TINY)


def load_split(out_dir: Path, split: str) -> dict:
    return json.loads((out_dir / "annotations" / f"{split}.json").read_text())


def all_annotations(out_dir: Path) -> list[dict]:
    return load_split(out_dir, "train")["annotations"] + load_split(out_dir, "val")["annotations"]


def file_bytes(out_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out_dir)): p.read_bytes() for p in sorted(out_dir.rglob("*")) if p.is_file()}


def has_hole(mask: np.ndarray) -> bool:
    """Whether some non-mask pixel cannot reach the border through non-mask pixels (8-connected)."""
    outside = np.pad(~mask, 1, constant_values=True)
    reached = np.zeros_like(outside)
    reached[0, :] = reached[-1, :] = reached[:, 0] = reached[:, -1] = True
    while True:
        grown = reached.copy()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                grown |= np.roll(np.roll(reached, dy, axis=0), dx, axis=1)
        grown &= outside
        if np.array_equal(grown, reached):
            return bool((outside & ~reached).any())
        reached = grown


def test_has_hole_helper_on_hand_made_masks():
    ring = np.zeros((5, 5), dtype=bool)
    ring[1:4, 1:4] = True
    assert not has_hole(ring)
    ring[2, 2] = False
    assert has_hole(ring)
    ring[1, 2] = False  # the hole now opens to the outside
    assert not has_hole(ring)


def test_mask_box_iou_by_hand():
    mask = np.zeros((4, 5), dtype=bool)
    mask[1, 1:4] = True
    mask[2, 1] = True
    # Box [0.6, 0.6] - [3.6, 2.6]: pixel centres x in {1.5, 2.5, 3.5}, y in {1.5, 2.5} -> a 3x2 block.
    assert mask_box_iou(mask, [0.6, 0.6, 3.0, 2.0]) == pytest.approx(4 / 6)
    # A box over the top-left 2x2 pixels: intersection 1 pixel, union 4 + 4 - 1.
    assert mask_box_iou(mask, [0.0, 0.0, 2.0, 2.0]) == pytest.approx(1 / 7)


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tiny, tmp_path):
    out_dir, _ = tiny
    make_synthetic_dataset(tmp_path / "again", **TINY)
    reference = file_bytes(out_dir)
    assert file_bytes(tmp_path / "again") == reference
    assert len(reference) == TINY["num_images"] + 2

    make_synthetic_dataset(tmp_path / "other", **{**TINY, "seed": 1})
    other = file_bytes(tmp_path / "other")
    assert other.keys() == reference.keys()
    assert all(other[name] != reference[name] for name in reference)


def test_val_fraction_only_moves_images_between_splits(tiny, tmp_path):
    out_dir, _ = tiny
    summary = make_synthetic_dataset(tmp_path / "half", **TINY, val_fraction=0.5)
    assert (summary.num_train_images, summary.num_val_images) == (3, 3)
    images = {p.name: p.read_bytes() for p in (out_dir / "images").iterdir()}
    assert {p.name: p.read_bytes() for p in (tmp_path / "half" / "images").iterdir()} == images
    by_id = {a["id"]: a for a in all_annotations(out_dir)}
    assert {a["id"]: a for a in all_annotations(tmp_path / "half")} == by_id


def test_split_is_by_image_and_ids_are_unique(tiny):
    out_dir, summary = tiny
    train, val = load_split(out_dir, "train"), load_split(out_dir, "val")
    train_ids = {image["id"] for image in train["images"]}
    val_ids = {image["id"] for image in val["images"]}
    assert not train_ids & val_ids
    assert train_ids | val_ids == set(range(1, TINY["num_images"] + 1))
    # round(6 * 0.25) = 2 validation images.
    assert (len(train_ids), len(val_ids)) == (4, 2) == (summary.num_train_images, summary.num_val_images)
    for dataset, ids in ((train, train_ids), (val, val_ids)):
        assert all(a["image_id"] in ids for a in dataset["annotations"])
    annotation_ids = [a["id"] for a in train["annotations"] + val["annotations"]]
    assert len(set(annotation_ids)) == len(annotation_ids) == summary.num_instances


def test_annotations_decode_to_their_area_and_tight_box(tiny):
    out_dir, _ = tiny
    for split in ("train", "val"):
        coco = COCO(str(out_dir / "annotations" / f"{split}.json"))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CATEGORIES)
        for image in coco.loadImgs(coco.getImgIds()):
            with Image.open(out_dir / "images" / image["file_name"]) as png:
                assert (png.format, png.mode, png.size) == ("PNG", "RGB", (TINY["size"], TINY["size"]))
            annotations = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
            assert 1 <= len(annotations) <= 8
            for annotation in annotations:
                mask = coco.annToMask(annotation).astype(bool)
                assert mask.shape == (image["height"], image["width"])
                assert annotation["iscrowd"] == 0
                assert annotation["area"] == mask.sum() > 0
                rows, cols = np.nonzero(mask)
                tight = [cols.min(), rows.min(), cols.max() + 1 - cols.min(), rows.max() + 1 - rows.min()]
                assert annotation["bbox"] == tight


def test_masks_of_one_image_do_not_overlap(tiny):
    out_dir, _ = tiny
    coverage = {}
    for annotation in all_annotations(out_dir):
        mask = mask_utils.decode(annotation["segmentation"]).astype(np.int64)
        coverage[annotation["image_id"]] = coverage.get(annotation["image_id"], 0) + mask
    assert len(coverage) == TINY["num_images"]
    assert max(int(c.max()) for c in coverage.values()) == 1


def test_every_category_is_used_and_some_mask_has_a_hole(tiny):
    out_dir, summary = tiny
    annotations = all_annotations(out_dir)
    used = {CATEGORIES[a["category_id"] - 1] for a in annotations}
    assert used == set(CATEGORIES)
    assert summary.instances_per_category == {
        name: sum(CATEGORIES[a["category_id"] - 1] == name for a in annotations) for name in CATEGORIES}
    assert any(has_hole(mask_utils.decode(a["segmentation"]).astype(bool)) for a in annotations)


def test_mean_mask_box_iou_matches_an_independent_computation(tiny):
    out_dir, summary = tiny
    ious = []
    for annotation in all_annotations(out_dir):
        rle = annotation["segmentation"]
        _, _, width, height = mask_utils.toBbox(rle)
        # The mask lies inside its tight box, so IoU = mask area / box area.
        ious.append(mask_utils.area(rle) / (width * height))
    assert summary.mean_mask_box_iou == pytest.approx(np.mean(ious), abs=1e-12)
    assert summary.mean_mask_box_iou < 0.9


def test_same_arguments_reuse_the_dataset_and_new_ones_replace_it(tmp_path):
    out_dir = tmp_path / "data"
    first = make_synthetic_dataset(out_dir, **TINY)
    train_json = out_dir / "annotations" / "train.json"
    written_at = train_json.stat().st_mtime_ns
    assert make_synthetic_dataset(out_dir, **TINY) == first
    assert train_json.stat().st_mtime_ns == written_at

    smaller = make_synthetic_dataset(out_dir, **{**TINY, "num_images": 4})
    assert smaller.num_train_images + smaller.num_val_images == 4
    assert sorted(p.name for p in (out_dir / "images").iterdir()) == [f"synth_{i:05d}.png" for i in range(1, 5)]
    assert load_split(out_dir, "train")["info"]["arguments"]["num_images"] == 4


def test_refuses_a_foreign_directory_unless_overwrite(tmp_path):
    (tmp_path / "notes.txt").write_text("not a dataset")
    with pytest.raises(FileExistsError, match="overwrite"):
        make_synthetic_dataset(tmp_path, **TINY)
    assert not (tmp_path / "images").exists()
    summary = make_synthetic_dataset(tmp_path, **TINY, overwrite=True)
    assert summary.num_train_images + summary.num_val_images == TINY["num_images"]
    assert (tmp_path / "notes.txt").read_text() == "not a dataset"


@pytest.mark.parametrize("bad", [{"num_images": 0}, {"size": 16}, {"val_fraction": 1.0}])
def test_rejects_bad_arguments(tmp_path, bad):
    with pytest.raises(ValueError):
        make_synthetic_dataset(tmp_path, **{**TINY, **bad})


def test_summary_format_names_the_numbers(tiny):
    _, summary = tiny
    text = summary.format()
    assert str(summary.out_dir) in text
    assert f"{summary.num_train_images} train + {summary.num_val_images} val" in text
    assert f"{summary.mean_mask_box_iou:.3f}" in text
    assert all(f"{name} {count}" in text for name, count in summary.instances_per_category.items())


def outline_colour_steps(out_dir: Path) -> np.ndarray:
    """RGB distance across every outline of every object: (mask pixel, 4-neighbour on the background)."""
    steps = []
    for split in ("train", "val"):
        dataset = load_split(out_dir, split)
        for image in dataset["images"]:
            pixels = np.asarray(Image.open(out_dir / "images" / image["file_name"])).astype(float)
            covered = np.zeros(pixels.shape[:2], dtype=bool)
            masks = [mask_utils.decode(a["segmentation"]).astype(bool)
                     for a in dataset["annotations"] if a["image_id"] == image["id"]]
            for mask in masks:
                covered |= mask
            for mask in masks:
                for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                    rows, cols = np.nonzero(mask)
                    ny, nx = rows + dy, cols + dx
                    inside = (ny >= 0) & (ny < mask.shape[0]) & (nx >= 0) & (nx < mask.shape[1])
                    rows, cols, ny, nx = rows[inside], cols[inside], ny[inside], nx[inside]
                    background = ~covered[ny, nx]
                    steps.append(np.linalg.norm(pixels[rows, cols] - pixels[ny, nx], axis=1)[background])
    return np.concatenate(steps)


def test_camouflage_patches_hide_part_of_the_outlines(tmp_path):
    """Objects sit partly on background painted with their own texture: a good share of the outline is no
    colour edge (generator version 2, without patches, had 0.03 % of steps below 30)."""
    out_dir = tmp_path / "camouflage"
    make_synthetic_dataset(out_dir, num_images=12, size=96, seed=0)
    steps = outline_colour_steps(out_dir)
    assert np.mean(steps < 30) > 0.05


def test_source_family_shares_no_category_with_the_target(tmp_path):
    summary = make_synthetic_dataset(tmp_path / "source", num_images=12, size=64, seed=1, family="source")
    names = [c["name"] for c in load_split(tmp_path / "source", "train")["categories"]]
    assert names == list(SOURCE_CATEGORIES) and not set(names) & set(CATEGORIES)
    assert load_split(tmp_path / "source", "train")["info"]["arguments"]["family"] == "source"
    assert all(count > 0 for count in summary.instances_per_category.values())
    with pytest.raises(ValueError, match="family"):
        make_synthetic_dataset(tmp_path / "other", num_images=4, size=64, family="imagenet")
