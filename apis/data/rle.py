"""Point lookups in COCO run-length codes: is pixel ``(x, y)`` on the mask, without decoding the mask.

A COCO RLE lists the lengths of alternating runs of 0s and 1s (0s first) over the image's pixels in
column-major order (pixel ``(x, y)``, x = column, y = row, is number ``x * height + y``); a compressed RLE
string packs those lengths in characters. Polygons and uncompressed RLE are made compressed strings by
pycocotools exactly as :meth:`apis.data.coco.CocoDataset._decode_mask` rasterises them, and a point is looked
up in the runs by pycocotools' C code, so a lookup answers what indexing the decoded mask answers, at a
fraction of the cost: decoding a 640x480 mask writes 300k bytes to read one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

# A compressed value: 5 bits per character from '0' (48); bit 0x20 says more characters follow, bit 0x10 of
# the last character is the sign. pycocotools keeps run lengths in 32 bits: 7 characters (35 bits) hold any.
_CHAR_BASE, _MORE, _SIGN, _BITS = 48, 0x20, 0x10, 0x1F
_MAX_VALUE_CHARS = 7
MASKS_PER_CALL = 8  # masks per pycocotools ``iou`` call in :func:`labels_at` (4-16 time alike; 1 is twice as slow)


def compressed_runs(counts: str) -> np.ndarray | None:
    """The run lengths (int64) of a compressed COCO RLE string as pycocotools' ``rleFrString`` decodes it, or
    None when it is malformed: a character outside ``'0'..'o'``, a value cut off at the end, or a value of more
    than 7 characters (no 32-bit run length needs more)."""
    if not counts.isascii():
        return None
    chars = np.frombuffer(counts.encode("ascii"), dtype=np.uint8).astype(np.int64) - _CHAR_BASE
    if chars.size == 0:
        return np.zeros(0, dtype=np.int64)
    last = (chars & _MORE) == 0  # the last character of a value
    if ((chars < 0) | (chars > 63)).any() or not last[-1]:
        return None
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    length = ends - starts + 1
    if length.max() > _MAX_VALUE_CHARS:
        return None
    position = np.arange(chars.size) - np.repeat(starts, length)
    values = np.add.reduceat((chars & _BITS) << (5 * position), starts)
    negative = (chars[ends] & _SIGN) != 0
    values[negative] -= np.int64(1) << (5 * length[negative])
    # From the fourth value on, a value is the difference to the run two before it.
    runs = values.copy()
    runs[3::2] = np.cumsum(values[1::2])[1:]
    runs[4::2] = np.cumsum(values[2::2])[1:]
    return runs


def encode_segmentations(segmentations: Sequence[object], heights: Sequence[int], widths: Sequence[int]
                         ) -> list[bytes]:
    """The compressed RLE string of each COCO segmentation (polygons, uncompressed or compressed RLE) of an
    image ``heights[i]`` x ``widths[i]``. Polygons and uncompressed RLE of images of one size go to pycocotools
    in one call; an instance of several polygons is their union (``merge``), as pycocotools decodes it."""
    from pycocotools import mask as mask_utils

    encoded: list[bytes | None] = [None] * len(segmentations)
    to_convert: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, seg in enumerate(segmentations):
        counts = seg.get("counts") if isinstance(seg, dict) else None
        if isinstance(counts, (str, bytes)):
            encoded[index] = counts.encode("ascii") if isinstance(counts, str) else counts
        else:
            to_convert[(int(heights[index]), int(widths[index]))].append(index)
    for (height, width), indices in to_convert.items():
        polygons = [(index, polygon) for index in indices if isinstance(segmentations[index], list)
                    for polygon in segmentations[index]]
        if polygons:
            rles = mask_utils.frPyObjects([polygon for _, polygon in polygons], height, width)
            parts: dict[int, list[dict]] = defaultdict(list)
            for (index, _), rle in zip(polygons, rles):
                parts[index].append(rle)
            for index, pieces in parts.items():
                encoded[index] = (pieces[0] if len(pieces) == 1 else mask_utils.merge(pieces))["counts"]
        uncompressed = [index for index in indices if isinstance(segmentations[index], dict)]
        if uncompressed:
            # Only the two keys: pycocotools takes a list whose first item has 4 entries for boxes.
            plain = [{key: segmentations[index][key] for key in ("size", "counts")} for index in uncompressed]
            rles = mask_utils.frPyObjects(plain, height, width)
            for index, rle in zip(uncompressed, rles):
                encoded[index] = rle["counts"]
    missing = [index for index, counts in enumerate(encoded) if counts is None]
    if missing:
        raise ValueError(f"segmentation {missing[0]} is neither polygons nor RLE (or has no polygon)")
    return encoded


def labels_at(strings: Sequence[bytes], heights: np.ndarray, widths: np.ndarray, which: np.ndarray,
              xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """``bool [N]``: whether pixel ``(xs[n], ys[n])`` lies on the mask ``strings[which[n]]`` of an image
    ``heights[which[n]]`` x ``widths[which[n]]``. The points must lie in their image (the caller checks).

    Each point becomes a one-pixel RLE (pycocotools' ``frPyObjects`` of the box ``[x, y, 1, 1]``) and its overlap
    with its mask is pycocotools' ``iou`` with the mask as a crowd region (intersection over the pixel's area:
    1 or 0), computed in C from the run-length codes. ``iou`` pairs every pixel with every mask it is given,
    so masks go to it :data:`MASKS_PER_CALL` at a time; a pixel outside a mask's box costs one box test.
    """
    from pycocotools import mask as mask_utils

    heights, widths = np.asarray(heights, dtype=np.int64), np.asarray(widths, dtype=np.int64)
    which, xs, ys = (np.asarray(values, dtype=np.int64) for values in (which, xs, ys))
    labels = np.zeros(which.size, dtype=bool)
    order = np.lexsort((which, widths[which], heights[which]))  # by image size, then by mask
    sizes = np.stack([heights[which[order]], widths[which[order]]], axis=1)
    size_starts = np.flatnonzero(np.concatenate(([True], (sizes[1:] != sizes[:-1]).any(axis=1), [True])))
    for begin, end in zip(size_starts[:-1], size_starts[1:]):
        points = order[begin:end]
        height, width = (int(v) for v in sizes[begin])
        pixels = mask_utils.frPyObjects(np.stack([xs[points], ys[points], np.ones(points.size), np.ones(points.size)],
                                                 axis=1).astype(np.float64), height, width)
        masks, position = np.unique(which[points], return_inverse=True)  # position: non-decreasing
        firsts = np.arange(0, masks.size, MASKS_PER_CALL)
        bounds = np.searchsorted(position, np.append(firsts, masks.size))
        for first, lo, hi in zip(firsts, bounds[:-1], bounds[1:]):
            gt = [{"size": [height, width], "counts": strings[mask]} for mask in masks[first:first + MASKS_PER_CALL]]
            overlap = np.asarray(mask_utils.iou(pixels[lo:hi], gt, np.ones(len(gt), dtype=np.uint8)))
            labels[points[lo:hi]] = overlap.reshape(hi - lo, len(gt))[np.arange(hi - lo), position[lo:hi] - first] > 0.5
    return labels
