"""Where mask resolution goes: the best a mask head working at a given stride could draw, from the data alone.

For every val instance the ground-truth mask is taken through the path a trained model's mask takes: resized to
the test size as training resizes masks (nearest at pixel centres), padded to a multiple of 32, averaged onto
the cells of a ``stride`` grid (the coverage the full-mask loss trains towards, ``masks_at_stride``), turned
into logits, and pasted back at the original pixels inside the true box exactly as inference pastes
(``sample_box_grid``: bilinear at the pixel centres), thresholded at 0.5. The mIoU of these *coverage oracle*
masks with the ground truth is what a head that predicted every cell's coverage perfectly would reach; beside
it, the mIoU of a mask that fills the box. No model is involved: the rows say how much of the gap to box fill a
finer stride or a larger input can close at best (a trained head can beat its oracle a little, as its logits
need not be coverages, but a head at a stride whose oracle is below box fill has little room).

    .venv/bin/python bench/bench_mask_resolution.py --json ../shared/data/dsb2018_nuclei/annotations/val.json \\
        --images 60 --sizes 256:512 352:640 512:1024 --strides 8 4 2 --record results/mask_resolution_dsb.json
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from records import add_record_option, provenance, save
from tables import SIZE_BUCKETS, mask_resolution_table

from apis.data.coco import load_coco
from apis.data.transforms import resized_size
from apis.modeling.inputs import SIZE_DIVISIBILITY
from apis.modeling.mask_losses import masks_at_stride
from apis.modeling.postprocess import sample_box_grid

SIZE_EDGES = [0, 16, 32, math.inf]  # object size at the network's input (sqrt of the box area): SIZE_BUCKETS
LOGIT_CLAMP = 1e-4  # coverage 0 and 1 as finite logits


def oracle_mask(gt: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int], stride: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """The coverage-oracle mask of ``gt`` (``bool [H, W]``) on the pixels of ``box`` (original frame) and the GT
    there: a model at ``size`` (resized ``(h, w)``) predicting every ``stride`` cell's coverage exactly."""
    height, width = gt.shape
    resized = F.interpolate(torch.from_numpy(gt)[None, None].float(), size=size, mode="nearest-exact")[0]
    pad_h = math.ceil(size[0] / SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY - size[0]
    pad_w = math.ceil(size[1] / SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY - size[1]
    coverage = masks_at_stride(F.pad(resized, (0, pad_w, 0, pad_h)), stride)
    logits = torch.logit(coverage.clamp(LOGIT_CLAMP, 1 - LOGIT_CLAMP))
    scale = (size[1] / width, size[0] / height)
    (xs, ys), box_logits = sample_box_grid(logits, stride, box, scale, (height, width))
    grid_gt = gt[ys:ys + box_logits.shape[1], xs:xs + box_logits.shape[2]]
    return (box_logits[0] > 0).numpy(), grid_gt


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def measure(json_path: str, image_root: str | None, images: int, sizes: list[tuple[int, int]],
            strides: list[int]) -> list[dict]:
    """One row per (test size, stride) and one per test size for box fill, each with mIoU by object size."""
    coco = load_coco(json_path, image_root, used_images=images).subset(images)
    masks = coco.masks("evaluation")
    scores: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for instance in coco.instances():
        if instance.iscrowd:
            continue
        image = coco.image(instance.image_id)
        gt = masks.mask(instance.ann_id)
        x0, y0, x1, y1 = instance.bbox_xyxy
        for short, longest in sizes:
            size = resized_size(image.height, image.width, short, longest)
            side = math.sqrt((x1 - x0) * (y1 - y0)) * size[0] / image.height
            bucket = next(name for name, lo, hi in zip(SIZE_BUCKETS, SIZE_EDGES, SIZE_EDGES[1:]) if lo <= side < hi)
            for stride in strides:
                mask, grid_gt = oracle_mask(gt, instance.bbox_xyxy, size, stride)
                for name in ("all", bucket):
                    scores[(short, longest, stride)][name].append(iou(mask, grid_gt))
            for name in ("all", bucket):
                scores[(short, longest, "box fill")][name].append(iou(np.ones_like(grid_gt), grid_gt))
    rows = []
    for (short, longest, stride), by_size in scores.items():
        rows.append({"test_size": short, "max_size": longest, "mask": stride if stride == "box fill" else
                     f"coverage oracle, stride {stride}",
                     "instances": len(by_size["all"]),
                     "mIoU": {name: float(np.mean(values)) for name, values in by_size.items()},
                     "instances_by_size": {name: len(values) for name, values in by_size.items()}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True, help="a COCO instance file with masks (the val set)")
    parser.add_argument("--image-root", help="folder of its images (default: beside the json, as load_coco finds)")
    parser.add_argument("--images", type=int, default=60, help="the first N images")
    parser.add_argument("--sizes", nargs="+", default=["256:512"], help="test sizes as SHORT:MAX")
    parser.add_argument("--strides", nargs="+", type=int, default=[8, 4, 2])
    add_record_option(parser, "mask_resolution")
    args = parser.parse_args()
    started = provenance()
    sizes = [tuple(int(v) for v in size.split(":")) for size in args.sizes]
    rows = measure(args.json, args.image_root, args.images, sizes, args.strides)
    print(mask_resolution_table(rows))
    save(args.record, "mask_resolution", started, rows, arguments=args)


if __name__ == "__main__":
    main()
