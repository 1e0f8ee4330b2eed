"""COCO instance json + image folder, validated up front.

Every check runs when the dataset is loaded, before any training or annotation work, and a
failure names the file and the image or annotation id. Boxes are kept as ``xyxy`` in continuous
pixel coordinates (see :mod:`apis.data.coords`). Crowd annotations are kept apart
(:attr:`ImageRecord.crowd`): they are ignore regions for evaluation and are never trained on or
queried.

GT masks are not part of the records. They are decoded lazily through :meth:`CocoDataset.masks`,
which must be asked with a purpose, so that a point-supervised run cannot read a mask by accident.
"""

from __future__ import annotations

import gc
import json
import logging
import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence, Set
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from apis.config import ConfigError, ExperimentConfig
from apis.data.image_files import ImageFacts, check_image_files
from apis.data.rle import compressed_totals, encode_segmentations, labels_at
from apis.utils.errors import ApisError

logger = logging.getLogger(__name__)

MASK_PURPOSES = ("oracle", "evaluation", "full-supervision", "display")
# Image modes whose pixels are 16-bit integers: scaled to 8 bits on load, not clipped at 255 by PIL's convert.
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_UNSUPPORTED_MODES = ("F",)


class DatasetError(ApisError, ValueError):
    """The dataset is malformed; the message names the file and the offending id."""


@dataclass(frozen=True)
class InstanceRecord:
    """One annotation. ``bbox_xyxy`` is continuous pixel coordinates, clipped to the image."""

    ann_id: int
    image_id: int
    category_id: int
    label: int  # contiguous class index 0..C-1
    bbox_xyxy: tuple[float, float, float, float]
    iscrowd: bool
    area: float


@dataclass(frozen=True)
class ImageRecord:
    image_id: int
    file_name: str
    path: Path
    width: int
    height: int
    instances: tuple[InstanceRecord, ...]  # non-crowd: trained on and queried
    crowd: tuple[InstanceRecord, ...]  # ignore regions for evaluation only


class GroundTruthMasks:
    """Lazy decoder of GT masks (RLE or polygons) with a small LRU cache, and point lookups that decode nothing.

    :meth:`label_at` and :meth:`labels_at` answer "is pixel (x, y) on the mask?" from the mask's run-length
    code (:mod:`apis.data.rle`), which is what the simulated oracle asks of every instance at every step
    (decoding each mask to read one pixel cost 0.63-0.86 ms per instance, docs/scaling.md). The compressed code
    of a polygon or uncompressed RLE is made once and kept (a few hundred bytes per instance).
    """

    def __init__(self, dataset: CocoDataset, purpose: str, cache_size: int = 256):
        self._dataset = dataset
        self.purpose = purpose
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._encoded: dict[int, bytes] = {}

    def label_at(self, ann_id: int, x: int, y: int) -> bool:
        """Whether pixel ``(x, y)`` (x = column, y = row) lies on annotation ``ann_id``'s mask; ValueError naming
        the annotation when the point is outside its image."""
        return bool(self.labels_at([ann_id], [x], [y])[0])

    def labels_at(self, ann_ids: Sequence[int], xs: Sequence[int], ys: Sequence[int]) -> np.ndarray:
        """``bool [N]``: :meth:`label_at` of every ``(ann_ids[n], xs[n], ys[n])``, in one pass over the run-length
        codes. A point outside its image raises ValueError naming the first such (and nothing is answered)."""
        unique, which = np.unique(np.asarray(ann_ids, dtype=np.int64), return_inverse=True)
        ids = unique.tolist()
        images = [self._dataset.image(self._dataset.instance(ann_id).image_id) for ann_id in ids]
        heights = np.fromiter((im.height for im in images), dtype=np.int64, count=len(images))
        widths = np.fromiter((im.width for im in images), dtype=np.int64, count=len(images))
        xs, ys = np.asarray(xs, dtype=np.int64), np.asarray(ys, dtype=np.int64)
        outside = np.flatnonzero((xs < 0) | (ys < 0) | (xs >= widths[which]) | (ys >= heights[which]))
        if outside.size:
            first = outside[0]
            raise ValueError(f"annotation {ids[which[first]]}: point (x={xs[first]}, y={ys[first]}) outside its "
                             f"image (width {widths[which[first]]}, height {heights[which[first]]})")
        self._encode([ann_id for ann_id in ids if ann_id not in self._encoded])
        return labels_at([self._encoded[ann_id] for ann_id in ids], heights, widths, which, xs, ys)

    def _encode(self, ann_ids: list[int]) -> None:
        """Make and keep the compressed RLE strings of ``ann_ids``."""
        if not ann_ids:
            return
        dataset = self._dataset
        segmentations = [dataset.segmentation(ann_id) for ann_id in ann_ids]
        images = [dataset.image(dataset.instance(ann_id).image_id) for ann_id in ann_ids]
        encoded = encode_segmentations(segmentations, [im.height for im in images], [im.width for im in images])
        self._encoded.update(zip(ann_ids, encoded))

    def mask(self, ann_id: int) -> np.ndarray:
        """``bool[H, W]`` full-image mask of annotation ``ann_id``."""
        cached = self._cache.get(ann_id)
        if cached is not None:
            self._cache.move_to_end(ann_id)
            return cached
        mask = self._dataset._decode_mask(ann_id)
        self._cache[ann_id] = mask
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return mask


class CocoDataset:
    """A validated COCO instance dataset. Build it with :func:`load_coco`."""

    def __init__(self, json_path: Path, image_root: Path, images: list[ImageRecord],
                 categories: list[dict], segmentations: dict[int, object]):
        self.json_path = json_path
        self.image_root = image_root
        self.images = images
        self.categories = categories
        self.category_ids = [c["id"] for c in categories]  # label -> COCO category id
        self._segmentations = segmentations
        self._images_by_id = {im.image_id: im for im in images}
        self._instances_by_id = {
            inst.ann_id: inst for im in images for inst in (*im.instances, *im.crowd)
        }

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    @property
    def has_masks(self) -> bool:
        return bool(self._segmentations)

    def image(self, image_id: int) -> ImageRecord:
        try:
            return self._images_by_id[image_id]
        except KeyError:
            raise DatasetError(f"{self.json_path}: no image with id {image_id}") from None

    def instance(self, ann_id: int) -> InstanceRecord:
        try:
            return self._instances_by_id[ann_id]
        except KeyError:
            raise DatasetError(f"{self.json_path}: no annotation with id {ann_id}") from None

    def instances(self):
        """All non-crowd instances, image by image."""
        for im in self.images:
            yield from im.instances

    def load_image(self, image_id: int) -> np.ndarray:
        """``uint8[H, W, 3]`` RGB pixels of one image (16-bit grey images scaled to 8 bits)."""
        record = self.image(image_id)
        try:
            with Image.open(record.path) as img:
                return image_to_rgb(img)
        except (UnidentifiedImageError, OSError) as exc:  # changed since it was validated
            raise DatasetError(f"{self.json_path}: image {image_id}: file {record.path} is unreadable: {exc}") from exc

    def masks(self, purpose: str) -> GroundTruthMasks:
        """GT masks, for one of :data:`MASK_PURPOSES` only; refuses a dataset without masks."""
        if purpose not in MASK_PURPOSES:
            raise ValueError(f"masks may be read only for {', '.join(MASK_PURPOSES)}; got {purpose!r}")
        if not self.has_masks:
            raise DatasetError(
                f"{self.json_path}: annotations have no 'segmentation', but the {purpose} needs GT masks"
            )
        return GroundTruthMasks(self, purpose)

    def subset(self, max_images: int) -> CocoDataset:
        """The first ``max_images`` images (all when ``max_images <= 0``)."""
        if max_images <= 0 or max_images >= len(self.images):
            return self
        return self._with_images(self.images[:max_images])

    def only_images(self, image_ids: Set[int]) -> CocoDataset:
        """The images whose id is in ``image_ids``, in this dataset's order (a rank's shard)."""
        return self._with_images([im for im in self.images if im.image_id in image_ids])

    def _with_images(self, images: list[ImageRecord]) -> CocoDataset:
        keep = {inst.ann_id for im in images for inst in (*im.instances, *im.crowd)}
        segs = {k: v for k, v in self._segmentations.items() if k in keep}
        return CocoDataset(self.json_path, self.image_root, images, self.categories, segs)

    def segmentation(self, ann_id: int) -> object:
        """Annotation ``ann_id``'s COCO segmentation as stored (polygons or RLE); DatasetError when it has none."""
        seg = self._segmentations.get(ann_id)
        if seg is None:
            self.instance(ann_id)  # names an unknown annotation as such
            raise DatasetError(f"{self.json_path}: annotation {ann_id} has no segmentation")
        return seg

    def _decode_mask(self, ann_id: int) -> np.ndarray:
        from pycocotools import mask as mask_utils

        inst = self.instance(ann_id)
        image = self.image(inst.image_id)
        seg = self.segmentation(ann_id)
        h, w = image.height, image.width
        if isinstance(seg, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
            rle = mask_utils.frPyObjects(seg, h, w)
        elif isinstance(seg, dict):
            rle = dict(seg)
            if isinstance(rle["counts"], str):
                rle["counts"] = rle["counts"].encode("ascii")
        else:
            raise DatasetError(f"{self.json_path}: annotation {ann_id} has an unreadable segmentation")
        mask = mask_utils.decode(rle)
        if mask.shape != (h, w):
            raise DatasetError(
                f"{self.json_path}: annotation {ann_id} mask is {mask.shape[1]}x{mask.shape[0]}, "
                f"image {image.image_id} is {w}x{h}"
            )
        return mask.astype(bool)


def image_to_rgb(img: Image.Image) -> np.ndarray:
    """``uint8[H, W, 3]`` pixels of a PIL image; 16-bit grey values ``v`` become ``round(v / 257)``."""
    if img.mode in _SIXTEEN_BIT_MODES:
        grey = np.clip(np.rint(np.asarray(img, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(img.convert("RGB"))


def _read_json(json_path: Path) -> dict:
    if not json_path.is_file():
        raise DatasetError(f"{json_path}: file not found")
    try:
        data = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{json_path}: invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{json_path}: top level must be an object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{json_path}: missing list '{key}'")
    return data


def _unique_ids(items: list, kind: str, json_path: Path) -> dict[int, dict]:
    by_id: dict[int, dict] = {}
    for item in items:
        item_id = item.get("id") if isinstance(item, dict) else None
        if not _is_int(item_id):
            raise DatasetError(f"{json_path}: an entry of the {kind} list has no integer 'id': {str(item)[:120]}")
        if item_id in by_id:
            raise DatasetError(f"{json_path}: duplicate {kind} id {item_id}")
        by_id[item_id] = item
    return by_id


def _check_image_file(json_path: Path, image: dict, path: Path, checked: ImageFacts | Exception) -> None:
    """DatasetError naming the file unless :func:`~apis.data.image_files.check_image_files` found it whole, of the
    json's size and of a pixel mode APIS reads."""
    if isinstance(checked, FileNotFoundError):
        raise DatasetError(f"{json_path}: image {image['id']}: file {path} is missing")
    if isinstance(checked, Exception):
        raise DatasetError(f"{json_path}: image {image['id']}: file {path} is unreadable: {checked}") from checked
    if checked.mode in _UNSUPPORTED_MODES:
        raise DatasetError(f"{json_path}: image {image['id']}: file {path} has pixel mode {checked.mode!r} "
                           "(floating point), which APIS cannot read; store it as 8- or 16-bit PNG or JPEG")
    if (checked.width, checked.height) != (image["width"], image["height"]):
        raise DatasetError(
            f"{json_path}: image {image['id']}: json says {image['width']}x{image['height']} "
            f"but {path} is {checked.width}x{checked.height}"
        )


def _clip_box(json_path: Path, ann: dict, width: int, height: int) -> tuple[float, float, float, float]:
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and _finite_numbers(bbox)):
        raise DatasetError(f"{json_path}: annotation {ann['id']}: bbox must be [x, y, w, h] of finite numbers, "
                           f"got {bbox!r}")
    x, y, w, h = map(float, bbox)
    if w <= 0 or h <= 0:
        raise DatasetError(f"{json_path}: annotation {ann['id']}: bbox has width or height <= 0: {bbox}")
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
    if (x0, y0, x1, y1) != (x, y, x + w, y + h):
        if x1 <= x0 or y1 <= y0:
            raise DatasetError(
                f"{json_path}: annotation {ann['id']}: bbox {bbox} lies outside image {ann['image_id']} "
                f"({width}x{height})"
            )
        logger.warning("%s: annotation %d: bbox %s extends outside image %d (%dx%d); clipped",
                       json_path, ann["id"], bbox, ann["image_id"], width, height)
    return x0, y0, x1, y1


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _area(json_path: Path, ann: dict, box: tuple[float, float, float, float]) -> float:
    """The annotation's ``area``, or its box's when it has none."""
    area = ann.get("area", (box[2] - box[0]) * (box[3] - box[1]))
    if not is_finite_number(area) or area < 0:
        raise DatasetError(f"{json_path}: annotation {ann['id']}: area must be a number >= 0, got {area!r}")
    return float(area)


def is_finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# Plain JSON numbers; any other type (a numpy float in a dict built in code) takes the exact check.
_PLAIN_NUMBERS = frozenset((int, float))


def _finite_numbers(values: list) -> bool:
    """Whether every item of ``values`` is a finite number (:func:`is_finite_number`). COCO's polygons hold ~40
    million numbers: a list of plain ints and floats whose sum is finite is passed in one step."""
    if {type(v) for v in values} <= _PLAIN_NUMBERS:
        try:
            if math.isfinite(sum(values)):  # any inf or nan makes the sum inf or nan
                return True
        except OverflowError:  # an int too large for a float: the exact check below says so
            pass
    return all(is_finite_number(v) for v in values)


def _is_rle_string(seg: object, width: int, height: int) -> bool:
    """Whether ``seg`` is a compressed RLE of a ``width`` x ``height`` image, its string not checked yet."""
    return isinstance(seg, dict) and isinstance(seg.get("counts"), str) and seg.get("size") == [height, width]


def segmentation_problem(seg: object, width: int, height: int) -> str | None:
    """What is wrong with a COCO segmentation (polygons or RLE) of a ``width`` x ``height`` image, or None."""
    if isinstance(seg, list):
        for polygon in seg:
            if not (isinstance(polygon, list) and _finite_numbers(polygon)):
                return f"a polygon must be a list of finite numbers, got {str(polygon)[:80]}"
            if len(polygon) < 6 or len(polygon) % 2:
                return f"a polygon needs at least 3 (x, y) points, got {len(polygon)} numbers"
        return None
    if not isinstance(seg, dict):
        return f"segmentation must be polygons or an RLE object, got {type(seg).__name__}"
    size, counts = seg.get("size"), seg.get("counts")
    if size != [height, width]:
        return f"RLE size {size!r} is not the image's [height, width] [{height}, {width}]"
    if isinstance(counts, str):
        return rle_strings_problems([counts], [width], [height])[0]
    if not (isinstance(counts, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in counts)):
        return "RLE counts must be a string or a list of integers"
    return _runs_problem(any(run < 0 for run in counts), sum(counts), width, height)


def rle_strings_problems(strings: Sequence[str], widths: Sequence[int], heights: Sequence[int]) -> list[str | None]:
    """:func:`segmentation_problem` of compressed RLE strings (whose ``size`` is right) of images ``widths[i]`` x
    ``heights[i]``, decoded all at once."""
    well_formed, negative, covered = compressed_totals(strings)
    return [_runs_problem(negative[i], int(covered[i]), widths[i], heights[i]) if well_formed[i]
            else "RLE counts is not a valid compressed RLE string" for i in range(len(strings))]


def _runs_problem(negative: bool, covered: int, width: int, height: int) -> str | None:
    if negative:
        return "RLE counts has a negative run length"
    if covered != width * height:
        return f"RLE counts cover {covered} pixels, the {width}x{height} image has {width * height}"
    return None


def load_coco(json_path: str | Path, image_root: str | Path | None = None,
              check_images: bool = True, used_images: int = 0) -> CocoDataset:
    """Load and validate a COCO instance json.

    ``image_root`` defaults to ``<json dir>/../images`` (the layout of the built-in datasets) when
    that folder exists, else the json's folder. ``check_images`` checks that every image exists, matches the
    json's size and is whole: decoded completely, in threads, the first time it is seen
    (:mod:`apis.data.image_files`; a cache remembers the files found whole by size and mtime). With
    ``used_images`` > 0 (a run's ``data.max_*_images``: :meth:`CocoDataset.subset` keeps those) only the first
    ``used_images`` images are decoded; the others have their header checked.
    """
    json_path = Path(json_path)
    with _collector_paused():
        data = _read_json(json_path)
        if image_root is None or str(image_root) == "":
            sibling = json_path.parent.parent / "images"
            image_root = sibling if sibling.is_dir() else json_path.parent
        return coco_from_dict(data, json_path, Path(image_root), check_images, used_images)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block. Parsing and validating a COCO file makes tens of
    millions of objects (no cycles among them), and the collector, run every few hundred new objects, walks
    ever more of them: with it, loading COCO's 860k instances takes twice as long."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def coco_from_dict(data: dict, json_path: Path, image_root: Path, check_images: bool = True,
                   used_images: int = 0) -> CocoDataset:
    """Validate an already-read COCO instance dict (the checks of :func:`load_coco`); ``json_path`` names it in
    errors. The one validator of every COCO file APIS reads: training, the loop, ``apis eval --gt``."""
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{json_path}: missing list '{key}'")
    images_by_id = _unique_ids(data["images"], "image", json_path)
    categories_by_id = _unique_ids(data["categories"], "category", json_path)
    anns_by_id = _unique_ids(data["annotations"], "annotation", json_path)
    categories = sorted(categories_by_id.values(), key=lambda c: c["id"])
    label_of = {c["id"]: i for i, c in enumerate(categories)}

    for image in images_by_id.values():
        for key, kind in (("file_name", str), ("width", int), ("height", int)):
            if not isinstance(image.get(key), kind) or isinstance(image.get(key), bool):
                raise DatasetError(f"{json_path}: image {image['id']}: missing or invalid '{key}'")
        if image["width"] <= 0 or image["height"] <= 0:
            raise DatasetError(f"{json_path}: image {image['id']}: size {image['width']}x{image['height']} is "
                               "not positive")
    if check_images:  # every file used decoded whole (once: remembered by size and mtime), the first problem named
        used = set(sorted(images_by_id)[:used_images] if used_images > 0 else images_by_id)
        paths = [image_root / image["file_name"] for image in images_by_id.values()]
        checked = check_image_files(paths, [image_id in used for image_id in images_by_id])
        for image, path, facts in zip(images_by_id.values(), paths, checked, strict=True):
            _check_image_file(json_path, image, path, facts)

    per_image: dict[int, list[InstanceRecord]] = {i: [] for i in images_by_id}
    segmentations: dict[int, object] = {}
    strings: list[tuple[int, str, int, int]] = []  # compressed RLE: decoded together after the other checks
    for ann in anns_by_id.values():
        # Ids are compared only once they are integers: a list or an object as an id is unhashable.
        image = images_by_id.get(ann.get("image_id")) if _is_int(ann.get("image_id")) else None
        if image is None:
            raise DatasetError(f"{json_path}: annotation {ann['id']}: unknown image_id {ann.get('image_id')!r}")
        if not _is_int(ann.get("category_id")) or ann["category_id"] not in label_of:
            raise DatasetError(
                f"{json_path}: annotation {ann['id']}: unknown category_id {ann.get('category_id')!r}"
            )
        if ann.get("iscrowd", 0) not in (0, 1):  # True and False included: they equal 1 and 0
            raise DatasetError(f"{json_path}: annotation {ann['id']}: iscrowd must be 0 or 1, got {ann['iscrowd']!r}")
        box = _clip_box(json_path, ann, image["width"], image["height"])
        per_image[image["id"]].append(InstanceRecord(
            ann_id=ann["id"], image_id=image["id"], category_id=ann["category_id"],
            label=label_of[ann["category_id"]], bbox_xyxy=box, iscrowd=bool(ann.get("iscrowd", 0)),
            area=_area(json_path, ann, box),
        ))
        seg = ann.get("segmentation")
        if _is_rle_string(seg, image["width"], image["height"]):
            strings.append((ann["id"], seg["counts"], image["width"], image["height"]))
        elif "segmentation" in ann:
            problem = segmentation_problem(seg, image["width"], image["height"])
            if problem:
                raise DatasetError(f"{json_path}: annotation {ann['id']}: {problem}")
        if seg:
            segmentations[ann["id"]] = seg
    if strings:
        ann_ids, counts, widths, heights = zip(*strings)
        for ann_id, problem in zip(ann_ids, rle_strings_problems(counts, widths, heights)):
            if problem:
                raise DatasetError(f"{json_path}: annotation {ann_id}: {problem}")

    records = []
    for image_id in sorted(images_by_id):
        image = images_by_id[image_id]
        instances = sorted(per_image[image_id], key=lambda r: r.ann_id)
        records.append(ImageRecord(
            image_id=image_id, file_name=image["file_name"], path=image_root / image["file_name"],
            width=image["width"], height=image["height"],
            instances=tuple(r for r in instances if not r.iscrowd),
            crowd=tuple(r for r in instances if r.iscrowd),
        ))
    return CocoDataset(json_path, image_root, records, categories, segmentations)


def load_datasets(cfg: ExperimentConfig) -> tuple[CocoDataset, CocoDataset]:
    """Training and validation datasets, validated, cut to ``data.max_*_images``."""
    for key in ("train_json", "val_json"):
        if not getattr(cfg.data, key):
            raise ConfigError(f"config key 'data.{key}' is empty; the loop needs a COCO json there")
    train_set = load_coco(cfg.data.train_json, cfg.data.image_root or None,
                          used_images=cfg.data.max_train_images).subset(cfg.data.max_train_images)
    val_root = cfg.data.val_image_root or cfg.data.image_root or None
    val = load_coco(cfg.data.val_json, val_root, used_images=cfg.data.max_val_images).subset(cfg.data.max_val_images)
    return train_set, val
