"""Point lookups in COCO run-length codes: is pixel ``(x, y)`` on the mask, without decoding the mask.

A COCO RLE lists the lengths of alternating runs of 0s and 1s (0s first) over the image's pixels in
column-major order: pixel ``(x, y)`` (x = column, y = row) is number ``x * height + y``. The pixel lies on the
mask when the run that holds it has an odd index. Compressed RLE strings (pycocotools' ``rleToString``) are
decoded here with numpy, many at once; polygons and uncompressed RLE are turned into compressed strings by
pycocotools, exactly as :meth:`apis.data.coco.CocoDataset._decode_mask` rasterises them, so a lookup answers
what indexing the decoded mask answers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

# A compressed run length is written 5 bits per character from '0' (48): bit 0x20 says more characters
# follow, and bit 0x10 of a value's last character is its sign.
_CHAR_BASE = 48
_MORE = 0x20
_SIGN = 0x10
_BITS = 0x1F


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
            rles = mask_utils.frPyObjects([segmentations[index] for index in uncompressed], height, width)
            for index, rle in zip(uncompressed, rles):
                encoded[index] = rle["counts"]
    missing = [index for index, counts in enumerate(encoded) if counts is None]
    if missing:
        raise ValueError(f"segmentation {missing[0]} is neither polygons nor RLE (or has no polygon)")
    return encoded


def run_ends(strings: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Decode compressed RLE strings (pycocotools' ``rleFrString``) all at once.

    Returns:
        ``ends``: int64 ``[R]``, the run ends of every string one after the other (each string's own cumulative
        run lengths, its last equal to its image's area); ``offsets``: int64 ``[len(strings) + 1]``, string
        ``i``'s runs are ``ends[offsets[i]:offsets[i + 1]]``.
    """
    lengths = np.fromiter(map(len, strings), dtype=np.int64, count=len(strings))
    if not lengths.all():
        raise ValueError(f"compressed RLE string {int(np.argmin(lengths))} is empty")
    chars = np.frombuffer(b"".join(strings), dtype=np.uint8).astype(np.int64) - _CHAR_BASE
    if chars.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64)
    last = (chars & _MORE) == 0  # the last character of a value
    starts = np.flatnonzero(np.concatenate(([True], last[:-1])))  # the first character of each value
    value_of_char = np.cumsum(last) - last
    position = np.arange(chars.size) - starts[value_of_char]
    values = np.add.reduceat((chars & _BITS) << (5 * position), starts)
    ends_at = np.flatnonzero(last)
    negative = (chars[ends_at] & _SIGN) != 0
    values[negative] -= np.int64(1) << (5 * (position[ends_at][negative] + 1))
    # Values per string: a string ends where a value ends (checked by the dataset loader).
    string_of_char = np.repeat(np.arange(len(strings)), lengths)
    per_string = np.bincount(string_of_char[ends_at], minlength=len(strings))
    offsets = np.concatenate(([0], np.cumsum(per_string)))
    string_of_value = np.repeat(np.arange(len(strings)), per_string)
    index = np.arange(values.size) - offsets[string_of_value]
    # From its fourth value on, a string stores each run as the difference to the run two before it.
    runs = values.copy()
    for chain in ((index % 2 == 1), (index % 2 == 0) & (index >= 2)):
        runs[chain] = _segment_cumsum(values[chain], string_of_value[chain])
    return _segment_cumsum(runs, string_of_value), offsets


def _segment_cumsum(values: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """The running sum of ``values`` restarting wherever ``segment`` (non-decreasing ids) changes."""
    if values.size == 0:
        return values
    total = np.cumsum(values)
    first = np.concatenate(([True], segment[1:] != segment[:-1]))
    before = (total - values)[first]
    return total - before[np.cumsum(first) - 1]


def labels_at(strings: Sequence[bytes], heights: np.ndarray, which: np.ndarray, xs: np.ndarray, ys: np.ndarray
              ) -> np.ndarray:
    """``bool [N]``: whether pixel ``(xs[n], ys[n])`` lies on the mask ``strings[which[n]]`` of an image
    ``heights[which[n]]`` pixels high. The points must lie in their image (the caller checks)."""
    ends, offsets = run_ends(strings)
    areas = ends[offsets[1:] - 1]
    # Every string's ends shifted by the areas before it: one sorted array holds all the masks end to end.
    base = np.concatenate(([0], np.cumsum(areas)[:-1]))
    shifted = ends + np.repeat(base, np.diff(offsets))
    which = np.asarray(which, dtype=np.int64)
    pixel = np.asarray(xs, dtype=np.int64) * np.asarray(heights, dtype=np.int64)[which] + np.asarray(ys, np.int64)
    run = np.searchsorted(shifted, base[which] + pixel, side="right") - offsets[which]
    return run % 2 == 1
