"""Point lookups in COCO run-length codes: is pixel ``(x, y)`` on the mask, without decoding the mask.

A COCO RLE lists the lengths of alternating runs of 0s and 1s (0s first) over the image's pixels in
column-major order (pixel ``(x, y)``, x = column, y = row, is number ``x * height + y``); a compressed RLE
string packs those lengths in characters. Polygons and uncompressed RLE are made compressed strings by
pycocotools exactly as :meth:`apis.data.coco.CocoDataset._decode_mask` rasterises them, and a point is looked
up in the runs by pycocotools' C code, so a lookup answers what indexing the decoded mask answers, at a
fraction of the cost: decoding a 640x480 mask writes 300k bytes to read one.

:func:`compressed_totals` decodes many compressed strings at once with numpy, for what the dataset loader
checks of them (well formed, no negative run, as many pixels as the image).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

# A compressed value: 5 bits per character from '0' (48); bit 0x20 says more characters follow, bit 0x10 of
# the last character is the sign. pycocotools keeps run lengths in 32 bits: 7 characters (35 bits) hold any.
_CHAR_BASE, _MORE, _SIGN, _BITS = 48, 0x20, 0x10, 0x1F
_MAX_VALUE_CHARS = 7
_CHARS_PER_PASS = 1 << 22
MASKS_PER_CALL = 8  # masks per pycocotools ``iou`` call in :func:`labels_at` (4-16 time alike; 1 is twice as slow)


def compressed_totals(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What validating compressed COCO RLE strings needs, decoded as pycocotools' ``rleFrString`` decodes them,
    all strings at once (a dataset of masks stored as RLE holds one per instance).

    Returns, per string: ``well_formed`` (False for a character outside ``'0'..'o'``, a value cut off at the
    end, or a value of more than 7 characters, which no 32-bit run length needs), ``negative`` (a run length
    below 0) and ``covered`` (int64, the sum of the run lengths: the pixels the mask describes). ``negative``
    and ``covered`` mean nothing where ``well_formed`` is False.
    """
    sizes = np.cumsum([len(text) for text in strings])
    bounds = [0, *np.searchsorted(sizes, np.arange(_CHARS_PER_PASS, sizes[-1] if len(sizes) else 0, _CHARS_PER_PASS),
                                  side="right").tolist(), len(strings)]
    parts = [_totals(strings[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
    if not parts:
        return np.zeros(0, dtype=bool), np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
    return tuple(np.concatenate(column) for column in zip(*parts))


def _totals(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`compressed_totals` of strings of a few million characters in all (its arrays are 8 bytes a
    character)."""
    count = len(strings)
    ascii_only = np.fromiter((text.isascii() for text in strings), dtype=bool, count=count)
    strings = [text if fine else "" for text, fine in zip(strings, ascii_only)]
    lengths = np.fromiter(map(len, strings), dtype=np.int64, count=count)
    chars = np.frombuffer("".join(strings).encode("ascii"), dtype=np.uint8).astype(np.int64) - _CHAR_BASE
    string_of_char = np.repeat(np.arange(count), lengths)
    string_end = np.zeros(chars.size, dtype=bool)
    string_end[np.cumsum(lengths)[lengths > 0] - 1] = True
    last = (chars & _MORE) == 0  # the last character of a value
    bad = (chars < 0) | (chars > 63) | (string_end & ~last)
    ends = np.flatnonzero(last | string_end)  # a value never runs on into the next string
    starts = np.concatenate(([0], ends[:-1] + 1))
    length = ends - starts + 1
    position = np.minimum(np.arange(chars.size) - np.repeat(starts, length), _MAX_VALUE_CHARS)
    values = np.add.reduceat((chars & _BITS) << (5 * position), starts) if chars.size else chars
    negative_value = (chars[ends] & _SIGN) != 0
    values[negative_value] -= np.int64(1) << (5 * np.minimum(length, _MAX_VALUE_CHARS)[negative_value])
    string_of_value = string_of_char[ends]
    bad_strings = np.zeros(count, dtype=bool)
    bad_strings[string_of_char[bad]] = True
    bad_strings[string_of_value[length > _MAX_VALUE_CHARS]] = True
    # From the fourth value of a string on, a value is the difference to the run two before it.
    first_value = np.searchsorted(string_of_value, np.arange(count))
    index = np.arange(values.size) - first_value[string_of_value]
    runs = values.copy()
    for chain in ((index % 2 == 1), (index % 2 == 0) & (index >= 2)):
        runs[chain] = _segment_cumsum(values[chain], string_of_value[chain])
    covered = np.zeros(count, dtype=np.int64)
    np.add.at(covered, string_of_value, runs)
    negative = np.zeros(count, dtype=bool)
    negative[string_of_value[runs < 0]] = True
    return ascii_only & ~bad_strings, negative, covered


def _segment_cumsum(values: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """The running sum of ``values``, restarting wherever ``segment`` (non-decreasing ids) changes."""
    if values.size == 0:
        return values
    total = np.cumsum(values)
    first = np.concatenate(([True], segment[1:] != segment[:-1]))
    before = (total - values)[first]
    return total - before[np.cumsum(first) - 1]


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
    if which.size == 0:
        return labels
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
