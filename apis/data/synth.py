"""The built-in synthetic instance-segmentation dataset (the demo's default data and the tests' fixture).

Every image is an RGB square with a textured, cluttered background and 2-5 textured objects. The
default ``target`` family has four shape categories chosen so that a filled box is a poor mask: ``blob``
(star-like radial-noise outline, sometimes with a hole), ``ring`` (irregular annulus), ``crescent`` (disc
minus an offset disc) and ``cross`` (two crossing bars). The ``source`` family (``ellipse``, ``polygon``,
``star``, ``corner``, in other hue bands) shares none of them: it is the pretraining data of
``apis pretrain``, the stand-in for an ImageNet backbone (docs/design.md).

Objects are painted in order, so later objects occlude earlier ones; the stored masks are the *visible*
pixels. A candidate object that would leave an earlier object with too little of itself visible is not
painted, so every painted object pixel belongs to an annotation.

Most objects sit partly on a *camouflage patch*: unannotated background painted with the object's own
texture, overlapping one side of its outline. There the outline is no colour edge, so BoxInst's
colour-affinity prior (neighbouring cells of similar colour share a label) spills the mask into the patch,
while the shape and a labelled point tell them apart: boxes alone stay well below full masks, which
leaves the labelled points something to teach (generator version 3; docs/data.md).

The layout mirrors the real benchmark data::

    out_dir/images/synth_00001.png ...
    out_dir/annotations/train.json   (COCO, RLE masks, split by image)
    out_dir/annotations/val.json

Boxes are COCO ``xywh`` in the continuous pixel frame of :mod:`apis.data.coords` and tight around the
visible mask; ``area`` is the mask's pixel count. The generation arguments are stored in each json's
``info["arguments"]`` so that asking again for the same dataset only re-reads it.
"""

from __future__ import annotations

import colorsys
import io
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from apis.config import ConfigError
from apis.data.coords import box_pixel_range, xywh_to_xyxy
from apis.utils.io import atomic_write_bytes, atomic_write_json

CATEGORIES = ("blob", "ring", "crescent", "cross")
SOURCE_CATEGORIES = ("ellipse", "polygon", "star", "corner")
FAMILIES = {"target": CATEGORIES, "source": SOURCE_CATEGORIES}
# Where each family's hue bands are centred, in units of the spacing between categories: the source
# family's bands lie between the target's.
FAMILY_HUE_OFFSET = {"target": 0.0, "source": 0.5}
GENERATOR = "apis.data.synth"
# Bump when the drawing code changes, so that an existing dataset of an older version is regenerated.
GENERATOR_VERSION = 3

MIN_OBJECTS, MAX_OBJECTS = 2, 5
PLACEMENT_ATTEMPTS_PER_OBJECT = 10
# Object diameters are log-uniform between these shares of the image side (32-96 px at 128 px): version 1
# went down to 8 px at 128 px, below the stride of CondInst's finest level, where a small model trained
# for minutes finds next to nothing. MIN_OBJECT_DIAMETER is the floor for small images.
MIN_DIAMETER_SHARE, MAX_DIAMETER_SHARE = 1 / 4, 3 / 4
MIN_OBJECT_DIAMETER = 6.0
# Half-width of a category's hue band, in units of the spacing between categories (see _object_texture).
HUE_BAND = 0.3
# Share of objects that get a camouflage patch, and the patch radius relative to the object's radius.
CAMOUFLAGE_PROB = 0.75
CAMOUFLAGE_RADIUS = (0.45, 0.8)
# An occluded object must keep at least this many pixels and this share of its unoccluded pixels.
MIN_VISIBLE_AREA = 12
MIN_VISIBLE_FRACTION = 0.4
MIN_IMAGE_SIZE = 4 * int(MIN_OBJECT_DIAMETER)

SPLITS = ("train", "val")
IMAGE_NAME = re.compile(r"synth_\d+\.png")


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`make_synthetic_dataset` wrote (or found already written)."""

    out_dir: Path
    num_train_images: int
    num_val_images: int
    num_instances: int
    instances_per_category: dict[str, int]
    mean_mask_box_iou: float

    def format(self) -> str:
        per_category = ", ".join(f"{name} {count}" for name, count in self.instances_per_category.items())
        return "\n".join([
            f"Synthetic dataset in {self.out_dir}",
            f"  images:    {self.num_train_images} train + {self.num_val_images} val",
            f"  instances: {self.num_instances} ({per_category})",
            f"  mean IoU of each mask with its filled box: {self.mean_mask_box_iou:.3f} "
            "(1.0 would make boxes perfect masks)",
            f"  annotations: {self.out_dir / 'annotations' / 'train.json'}, "
            f"{self.out_dir / 'annotations' / 'val.json'}",
        ])


def mask_box_iou(mask: np.ndarray, bbox_xywh) -> float:
    """IoU between a boolean mask ``[H, W]`` and its box filled over the pixels whose centres lie in it.

    ``bbox_xywh`` is a COCO box in the continuous pixel frame (see :mod:`apis.data.coords`).
    """
    mask = np.asarray(mask, dtype=bool)
    height, width = mask.shape
    xs, ys, xe, ye = box_pixel_range(*xywh_to_xyxy(bbox_xywh), width, height)
    filled_box = np.zeros_like(mask)
    filled_box[ys:ye, xs:xe] = True
    union = np.count_nonzero(mask | filled_box)
    return float(np.count_nonzero(mask & filled_box) / union)


def make_synthetic_dataset(out_dir: str | Path, num_images: int = 200, size: int = 128, seed: int = 0,
                           val_fraction: float = 0.25, overwrite: bool = False, family: str = "target"
                           ) -> SynthSummary:
    """Write the synthetic COCO dataset to ``out_dir`` and summarise it.

    ``family`` chooses the shape categories: ``"target"`` (the demo's) or ``"source"`` (disjoint shapes
    and hues, for pretraining a backbone that has never seen the target categories).

    The output is a pure function of the arguments (same bytes for the same arguments). If ``out_dir``
    already holds the dataset for these arguments it is only re-read. A non-empty ``out_dir`` that does
    not look like a synthetic dataset is refused unless ``overwrite`` is true.
    """
    if num_images < 1:
        raise ConfigError(f"num_images (apis data synth --images) must be at least 1, got {num_images}")
    if size < MIN_IMAGE_SIZE:
        raise ConfigError(f"size (apis data synth --size) must be at least {MIN_IMAGE_SIZE} px to hold "
                          f"{MIN_OBJECT_DIAMETER:g} px objects, got {size}")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction (apis data synth --val-fraction) must lie in [0, 1), got {val_fraction}")
    if family not in FAMILIES:
        raise ConfigError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir} exists and is not a directory")
    arguments = {"num_images": int(num_images), "size": int(size), "seed": int(seed),
                 "val_fraction": float(val_fraction), "family": family}
    if _holds_dataset(out_dir, arguments):
        return _summarise(out_dir)
    was_synth = _looks_like_synth(out_dir)
    if not (was_synth or overwrite or _is_empty(out_dir)):
        raise FileExistsError(f"{out_dir} is not empty and does not look like an APIS synthetic dataset; "
                              "pass overwrite=True (CLI: --overwrite) to write into it anyway")
    annotation_dir, image_dir = out_dir / "annotations", out_dir / "images"
    # Drop the old json first: an interrupted run must never leave json that describes other images.
    for split in SPLITS:
        (annotation_dir / f"{split}.json").unlink(missing_ok=True)
    annotation_dir.mkdir(parents=True, exist_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    # The split is drawn first so that it does not shift the images drawn after it.
    order = rng.permutation(num_images)
    val_ids = {int(i) + 1 for i in order[:_num_val_images(num_images, val_fraction)]}
    datasets = {split: _empty_coco(split, arguments) for split in SPLITS}
    next_annotation_id = 1
    for image_id in range(1, num_images + 1):
        pixels, instances = _render_image(rng, size, family)
        file_name = f"synth_{image_id:05d}.png"
        atomic_write_bytes(image_dir / file_name, _png_bytes(pixels))
        dataset = datasets["val" if image_id in val_ids else "train"]
        dataset["images"].append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for category_index, mask in instances:
            dataset["annotations"].append(_annotation(next_annotation_id, image_id, category_index + 1, mask))
            next_annotation_id += 1
    for split in SPLITS:
        atomic_write_json(annotation_dir / f"{split}.json", datasets[split])
    if was_synth:
        # Images of an earlier, larger dataset and temporaries of an interrupted run.
        written = {image["file_name"] for dataset in datasets.values() for image in dataset["images"]}
        for path in [*image_dir.iterdir(), *annotation_dir.iterdir()]:
            if _is_temporary(path.name) or (IMAGE_NAME.fullmatch(path.name) and path.name not in written):
                path.unlink()
    return _summarise(out_dir)


# ---------------------------------------------------------------------------------------------------
# Dataset files


def _num_val_images(num_images: int, val_fraction: float) -> int:
    """Rounded share of validation images, keeping at least one image on each side when possible."""
    if val_fraction == 0.0 or num_images < 2:
        return 0
    return min(max(round(num_images * val_fraction), 1), num_images - 1)


def _empty_coco(split: str, arguments: dict) -> dict:
    categories = FAMILIES[arguments["family"]]
    return {
        "info": {"description": "APIS synthetic shapes (instance segmentation)", "generator": GENERATOR,
                 "generator_version": GENERATOR_VERSION, "arguments": arguments, "split": split},
        "licenses": [],
        "images": [],
        "annotations": [],
        "categories": [{"id": i + 1, "name": name, "supercategory": "shape"}
                       for i, name in enumerate(categories)],
    }


def _annotation(annotation_id: int, image_id: int, category_id: int, mask: np.ndarray) -> dict:
    """COCO annotation of a visible mask ``[H, W]`` bool: RLE, pixel-count area, tight ``xywh`` box."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    bbox = [float(cols[0]), float(rows[0]), float(cols[-1] + 1 - cols[0]), float(rows[-1] + 1 - rows[0])]
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"id": annotation_id, "image_id": image_id, "category_id": category_id,
            "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
            "area": float(np.count_nonzero(mask)), "bbox": bbox, "iscrowd": 0}


def _png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _is_empty(out_dir: Path) -> bool:
    return not out_dir.exists() or not any(out_dir.iterdir())


def _is_temporary(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def _looks_like_synth(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds only what this module writes (a finished or an interrupted run)."""
    if _is_empty(out_dir):
        return False
    if not {p.name for p in out_dir.iterdir()} <= {"images", "annotations"}:
        return False
    image_dir, annotation_dir = out_dir / "images", out_dir / "annotations"
    if image_dir.exists() and not all(IMAGE_NAME.fullmatch(p.name) or _is_temporary(p.name)
                                      for p in image_dir.iterdir()):
        return False
    return not annotation_dir.exists() or all(p.name in {f"{s}.json" for s in SPLITS} or _is_temporary(p.name)
                                              for p in annotation_dir.iterdir())


def _holds_dataset(out_dir: Path, arguments: dict) -> bool:
    """Whether ``out_dir`` already holds the complete dataset generated with ``arguments``."""
    for split in SPLITS:
        path = out_dir / "annotations" / f"{split}.json"
        if not path.is_file():
            return False
        try:
            dataset = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        info = dataset.get("info", {}) if isinstance(dataset, dict) else {}
        if (info.get("generator"), info.get("generator_version"), info.get("arguments")) != (
                GENERATOR, GENERATOR_VERSION, arguments):
            return False
        if not all((out_dir / "images" / image["file_name"]).is_file() for image in dataset["images"]):
            return False
    return True


def _summarise(out_dir: Path) -> SynthSummary:
    """Summary computed from the written json, so a fresh and a re-read dataset report the same."""
    counts: dict[str, int] = {}
    num_images, ious = {}, []
    for split in SPLITS:
        path = out_dir / "annotations" / f"{split}.json"
        dataset = json.loads(path.read_text())
        names = {category["id"]: category["name"] for category in dataset["categories"]}
        counts = counts or dict.fromkeys(names.values(), 0)
        num_images[split] = len(dataset["images"])
        for annotation in dataset["annotations"]:
            counts[names[annotation["category_id"]]] += 1
            mask = mask_utils.decode(annotation["segmentation"]).astype(bool)
            ious.append(mask_box_iou(mask, annotation["bbox"]))
    return SynthSummary(out_dir=out_dir, num_train_images=num_images["train"],
                        num_val_images=num_images["val"], num_instances=len(ious),
                        instances_per_category=counts,
                        mean_mask_box_iou=float(np.mean(ious)) if ious else float("nan"))


# ---------------------------------------------------------------------------------------------------
# Drawing. All coordinates are continuous pixel coordinates: pixel (x, y) has centre (x + 0.5, y + 0.5).


@dataclass(frozen=True)
class _Outline:
    """A closed star-shaped outline: radius as a function of angle, scaled so that its peak is 1."""

    amplitudes: np.ndarray
    phases: np.ndarray
    peak: float

    @classmethod
    def random(cls, rng: np.random.Generator, roughness: float, harmonics: int) -> _Outline:
        amplitudes = rng.uniform(0.0, roughness, harmonics)
        phases = rng.uniform(0.0, 2 * math.pi, harmonics)
        unscaled = cls(amplitudes, phases, 1.0)
        return cls(amplitudes, phases, float(unscaled(np.linspace(0, 2 * math.pi, 720)).max()))

    def __call__(self, theta: np.ndarray) -> np.ndarray:
        frequencies = np.arange(2, 2 + len(self.amplitudes))
        waves = np.cos(np.multiply.outer(theta, frequencies) + self.phases) @ self.amplitudes
        # The floor keeps deep notches from cutting the shape into pieces.
        return np.maximum((1.0 + waves) / self.peak, 0.3)


def _polar(u: np.ndarray, v: np.ndarray, cu: float = 0.0, cv: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    du, dv = u - cu, v - cv
    return np.hypot(du, dv), np.arctan2(dv, du)


def _blob(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    rho, theta = _polar(u, v)
    mask = rho <= radius * _Outline.random(rng, roughness=0.3, harmonics=5)(theta)
    if rng.random() < 0.35:
        hole_radius = radius * rng.uniform(0.15, 0.3)
        hole_rho, hole_theta = _polar(u, v, *rng.uniform(-0.1, 0.1, 2) * radius)
        mask &= hole_rho > hole_radius * _Outline.random(rng, roughness=0.15, harmonics=3)(hole_theta)
    return mask


def _ring(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    rho, theta = _polar(u, v)
    outer = radius * _Outline.random(rng, roughness=0.12, harmonics=4)(theta)
    inner_rho, inner_theta = _polar(u, v, *rng.uniform(-0.1, 0.1, 2) * radius)
    inner = radius * rng.uniform(0.4, 0.65) * _Outline.random(rng, roughness=0.12, harmonics=4)(inner_theta)
    return (rho <= outer) & (inner_rho > inner)


def _crescent(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    rho, theta = _polar(u, v)
    bite_rho, _ = _polar(u, v, radius * rng.uniform(0.45, 0.7), 0.0)
    disc = rho <= radius * _Outline.random(rng, roughness=0.06, harmonics=3)(theta)
    return disc & (bite_rho > radius * rng.uniform(0.6, 0.85))


def _cross(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    # Bars at least one pixel half-wide so that small crosses do not fall apart into pixel noise.
    bar_width, post_width = np.maximum(radius * rng.uniform(0.18, 0.32, 2), 1.0)
    post_u, post_v = rng.uniform(-0.5, 0.5) * radius, rng.uniform(-0.3, 0.3) * radius
    post_half_length = radius * rng.uniform(0.6, 1.0)
    bar = (np.abs(u) <= radius) & (np.abs(v) <= bar_width)
    post = (np.abs(u - post_u) <= post_width) & (np.abs(v - post_v) <= post_half_length) & (np.abs(v) <= radius)
    return bar | post


def _ellipse(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    minor = radius * rng.uniform(0.35, 0.75)
    return (u / radius) ** 2 + (v / minor) ** 2 <= 1.0


def _polygon(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """A regular polygon of 3-6 sides: inside where the distance along the nearest edge normal is small."""
    sides = int(rng.integers(3, 7))
    rho, theta = _polar(u, v)
    sector = 2 * math.pi / sides
    apothem = radius * math.cos(math.pi / sides)
    return rho * np.cos(np.mod(theta, sector) - sector / 2) <= apothem


def _star(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    spikes = int(rng.integers(4, 8))
    rho, theta = _polar(u, v)
    inner = rng.uniform(0.35, 0.55)
    return rho <= radius * (inner + (1 - inner) * np.abs(np.cos(spikes * theta / 2)) ** 3)


def _corner(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """An L: two bars meeting at a right angle in one corner of the square of side 2 * radius."""
    width = max(radius * rng.uniform(0.35, 0.6), 1.0)
    inside = (np.abs(u) <= radius) & (np.abs(v) <= radius)
    return inside & ((u <= -radius + width) | (v <= -radius + width))


SHAPES: dict[str, Callable[..., np.ndarray]] = {
    "blob": _blob, "ring": _ring, "crescent": _crescent, "cross": _cross,
    "ellipse": _ellipse, "polygon": _polygon, "star": _star, "corner": _corner,
}


def _window(x0: float, y0: float, x1: float, y1: float, size: int) -> tuple[slice, slice]:
    """Rows and columns of the pixels that overlap the continuous box ``[x0, x1] x [y0, y1]``, clipped."""
    return (slice(max(math.floor(y0), 0), min(math.ceil(y1), size)),
            slice(max(math.floor(x0), 0), min(math.ceil(x1), size)))


def _pixel_centres(window: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
    """Continuous ``(x, y)`` of the pixel centres of a window, each ``[rows, cols]``."""
    y, x = np.mgrid[window] + 0.5
    return x, y


def _shape_mask(rng: np.random.Generator, shape: Callable[..., np.ndarray], size: int
                ) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Boolean ``[size, size]`` mask of one random ``shape``, possibly cut by the border, and its
    ``(cx, cy, radius)``."""
    smallest = max(MIN_OBJECT_DIAMETER, MIN_DIAMETER_SHARE * size)
    diameter = math.exp(rng.uniform(math.log(smallest), math.log(MAX_DIAMETER_SHARE * size)))
    radius = diameter / 2
    # Centres keep at least half the object inside the image.
    cx, cy = rng.uniform(radius / 2, size - radius / 2, 2)
    angle = rng.uniform(0.0, 2 * math.pi)
    # Shapes never reach beyond ``radius`` from the centre, so only that window is evaluated.
    window = _window(cx - radius, cy - radius, cx + radius, cy + radius, size)
    x, y = _pixel_centres(window)
    dx, dy = x - cx, y - cy
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    mask = np.zeros((size, size), dtype=bool)
    mask[window] = shape(rng, u, v, radius)
    return mask, (cx, cy, radius)


def _camouflage_patch(rng: np.random.Generator, centre_x: float, centre_y: float, radius: float, size: int
                      ) -> np.ndarray:
    """Boolean ``[size, size]`` disc centred near the outline of an object at ``(centre_x, centre_y)``."""
    direction = rng.uniform(0.0, 2 * math.pi)
    distance = radius * rng.uniform(0.7, 1.0)
    cx, cy = centre_x + distance * math.cos(direction), centre_y + distance * math.sin(direction)
    patch_radius = radius * rng.uniform(*CAMOUFLAGE_RADIUS)
    window = _window(cx - patch_radius, cy - patch_radius, cx + patch_radius, cy + patch_radius, size)
    x, y = _pixel_centres(window)
    patch = np.zeros((size, size), dtype=bool)
    patch[window] = np.hypot(x - cx, y - cy) <= patch_radius
    return patch


def _smooth_noise(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, size: int, cells: int
                  ) -> np.ndarray:
    """Values in [0, 1] at continuous points ``(x, y)`` (any equal shapes) of a ``size`` px square image.

    A random ``(cells + 1) x (cells + 1)`` lattice spanning the image, bilinearly interpolated.
    """
    return _lattice_noise(rng.uniform(0.0, 1.0, (cells + 1, cells + 1)), x, y, size)


def _lattice_noise(lattice: np.ndarray, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    """``lattice`` ``[cells + 1, cells + 1]`` spanning a ``size`` px image, bilinearly read at ``(x, y)``."""
    cells = lattice.shape[0] - 1
    gx, gy = x * (cells / size), y * (cells / size)
    ix, iy = np.floor(gx).astype(np.int64), np.floor(gy).astype(np.int64)
    fx, fy = gx - ix, gy - iy
    top = lattice[iy, ix] * (1 - fx) + lattice[iy, ix + 1] * fx
    bottom = lattice[iy + 1, ix] * (1 - fx) + lattice[iy + 1, ix + 1] * fx
    return top * (1 - fy) + bottom * fy


def _hsv(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """``[size, size, 3]`` float RGB: muted two-tone blotches, a light gradient and sensor noise."""
    hue = rng.uniform()
    first = _hsv(hue, rng.uniform(0.0, 0.3), rng.uniform(0.3, 0.7))
    second = _hsv(hue + rng.uniform(-0.1, 0.1), rng.uniform(0.0, 0.3), rng.uniform(0.3, 0.7))
    x, y = _pixel_centres(_window(0, 0, size, size, size))
    mix = _smooth_noise(rng, x, y, size, cells=int(rng.integers(3, 9)))[..., None]
    gradient = (y[..., None] / size - 0.5) * rng.uniform(-0.2, 0.2)
    image = first * (1 - mix) + second * mix + gradient
    return image + rng.normal(0.0, 0.03, image.shape)


def _paint_clutter(rng: np.random.Generator, image: np.ndarray) -> None:
    """Paint unannotated thin line segments and small dots on ``image`` ``[H, W, 3]`` (in place)."""
    size = image.shape[0]
    for _ in range(int(rng.integers(2, 9))):
        (sx, sy), length, direction = rng.uniform(0, size, 2), rng.uniform(6, size / 3), rng.uniform(0, 2 * math.pi)
        ex, ey = sx + length * math.cos(direction), sy + length * math.sin(direction)
        half_width = rng.uniform(0.5, 1.2)
        window = _window(min(sx, ex) - half_width, min(sy, ey) - half_width,
                         max(sx, ex) + half_width, max(sy, ey) + half_width, size)
        x, y = _pixel_centres(window)
        # Distance of every pixel centre to the segment s + t (e - s), t in [0, 1].
        t = np.clip(((x - sx) * (ex - sx) + (y - sy) * (ey - sy)) / length**2, 0.0, 1.0)
        line = np.hypot(x - sx - t * (ex - sx), y - sy - t * (ey - sy)) <= half_width
        image[window][line] = _hsv(rng.uniform(), rng.uniform(), rng.uniform(0.2, 1.0))
    for _ in range(int(rng.integers(2, 9))):
        (cx, cy), radius = rng.uniform(0, size, 2), rng.uniform(1.0, 3.0)
        window = _window(cx - radius, cy - radius, cx + radius, cy + radius, size)
        x, y = _pixel_centres(window)
        image[window][np.hypot(x - cx, y - cy) <= radius] = _hsv(rng.uniform(), rng.uniform(),
                                                                  rng.uniform(0.2, 1.0))


@dataclass(frozen=True)
class _Texture:
    """One object's appearance: a saturated colour and a darker shade, mixed by stripes, blotches or dots
    (or flat), plus noise. Call it on pixel centres to paint the object or its camouflage patch alike.

    Each category draws its hue from its own band (with some overlap between neighbours), as real classes
    differ in appearance as well as shape: with shape alone as the cue, a small model trained from scratch
    for minutes could not tell the categories apart (generator version 1), and the outline, which is what
    the points are about, remains the hard part.
    """

    colour: np.ndarray
    shade: np.ndarray
    pattern: int
    period: float
    direction: float
    phase: float
    blotches: np.ndarray  # the lattice of the blotch pattern

    @classmethod
    def random(cls, rng: np.random.Generator, category_index: int, family: str) -> _Texture:
        count = len(FAMILIES[family])
        hue = (category_index + FAMILY_HUE_OFFSET[family] + rng.uniform(-HUE_BAND, HUE_BAND)) / count
        colour = _hsv(hue, rng.uniform(0.55, 1.0), rng.uniform(0.6, 1.0))
        shade = _hsv(hue + rng.uniform(-0.08, 0.08), rng.uniform(0.55, 1.0), rng.uniform(0.25, 0.6))
        pattern = int(rng.integers(4))
        period, direction, phase = rng.uniform(3.0, 8.0), rng.uniform(0, math.pi), rng.uniform(0, 2 * math.pi)
        cells = int(rng.integers(4, 12))
        return cls(colour, shade, pattern, period, direction, phase, rng.uniform(0.0, 1.0, (cells + 1, cells + 1)))

    def __call__(self, rng: np.random.Generator, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
        """``[N, 3]`` float RGB at the ``N`` pixel centres ``(x, y)`` of a ``size`` px image."""
        if self.pattern == 0:  # stripes
            along = x * math.cos(self.direction) + y * math.sin(self.direction)
            mix = 0.5 + 0.5 * np.sin(2 * math.pi * along / self.period + self.phase)
        elif self.pattern == 1:  # blotches
            mix = _lattice_noise(self.blotches, x, y, size)
        elif self.pattern == 2:  # dots
            mix = (np.sin(2 * math.pi * x / self.period + self.phase) * np.sin(2 * math.pi * y / self.period)
                   > 0.3) * 1.0
        else:  # flat
            mix = np.zeros_like(x)
        colours = self.colour * (1 - mix[:, None]) + self.shade * mix[:, None]
        return colours + rng.normal(0.0, 0.03, colours.shape)


def _render_image(rng: np.random.Generator, size: int, family: str
                  ) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One image ``[size, size, 3]`` uint8 and its instances as (category index, visible mask) pairs."""
    shapes = [SHAPES[name] for name in FAMILIES[family]]
    image = _background(rng, size)
    _paint_clutter(rng, image)
    # owner[y, x]: index of the object whose pixel is visible there, -1 for background.
    owner = np.full((size, size), -1, dtype=np.int64)
    categories, full_areas, visible_areas = [], [], []
    target = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    for _ in range(target * PLACEMENT_ATTEMPTS_PER_OBJECT):
        if len(categories) == target:
            break
        category_index = int(rng.integers(len(shapes)))
        mask, (cx, cy, radius) = _shape_mask(rng, shapes[category_index], size)
        area = int(np.count_nonzero(mask))
        covered = owner[mask]
        lost = np.bincount(covered[covered >= 0], minlength=len(categories))
        remaining = np.asarray(visible_areas, dtype=np.int64) - lost
        if area < MIN_VISIBLE_AREA or np.any(remaining < np.maximum(
                MIN_VISIBLE_AREA, MIN_VISIBLE_FRACTION * np.asarray(full_areas, dtype=np.float64))):
            continue
        visible_areas = [*remaining.tolist(), area]
        full_areas.append(area)
        categories.append(category_index)
        texture = _Texture.random(rng, category_index, family)
        if rng.random() < CAMOUFLAGE_PROB:
            # Background only: never over a visible object pixel, and the object is painted over it.
            rows, cols = np.nonzero(_camouflage_patch(rng, cx, cy, radius, size) & (owner < 0) & ~mask)
            image[rows, cols] = texture(rng, cols + 0.5, rows + 0.5, size)
        owner[mask] = len(categories) - 1
        rows, cols = np.nonzero(mask)
        image[rows, cols] = texture(rng, cols + 0.5, rows + 0.5, size)
    pixels = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
    return pixels, [(category, owner == index) for index, category in enumerate(categories)]
