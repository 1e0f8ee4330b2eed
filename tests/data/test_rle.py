"""Point lookups in run-length codes against pycocotools' decoding of the same masks."""

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from apis.data.rle import MASKS_PER_CALL, compressed_totals, encode_segmentations, labels_at


def _random_mask(rng, height, width, kind):
    if kind == "empty":
        return np.zeros((height, width), np.uint8)
    if kind == "full":
        return np.ones((height, width), np.uint8)
    if kind == "edges":  # on along every border of the image only
        mask = np.zeros((height, width), np.uint8)
        mask[[0, -1], :] = 1
        mask[:, [0, -1]] = 1
        return mask
    return (rng.random((height, width)) < rng.uniform(0.05, 0.95)).astype(np.uint8)


def _every_pixel(height, width):
    ys, xs = np.mgrid[:height, :width]
    return xs.ravel(), ys.ravel()


def test_compressed_strings_add_up_to_the_runs_they_encode():
    """Runs long enough for several characters and the difference coding from the fourth run on (negative
    differences included), decoded many strings at once, against the runs of the masks pycocotools encoded."""
    rng = np.random.default_rng(0)
    masks = [_random_mask(rng, h, w, kind) for h, w in ((3, 5), (40, 30), (1, 1)) for kind in ("random", "full")]
    big = np.zeros((3000, 4000), np.uint8)
    big[10:2990, 5:3995] = 1  # runs of 2,980 and 20 alternate between a long first and last run
    big[:, 2000] = 0
    masks += [big, _random_mask(rng, 5, 5, "empty")]
    strings = [mask_utils.encode(np.asfortranarray(mask))["counts"].decode("ascii") for mask in masks]
    well_formed, negative, covered = compressed_totals(strings)
    assert well_formed.all() and not negative.any()
    assert covered.tolist() == [mask.size for mask in masks]
    assert [t.tolist() for t in compressed_totals([])] == [[], [], []]


def _reference_runs(counts):
    """pycocotools' rleFrString, character by character in Python ints; None when malformed."""
    runs, position = [], 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                return None
            char = ord(counts[position]) - 48
            if not 0 <= char < 64:
                return None
            value |= (char & 0x1F) << shift
            more, position, shift = bool(char & 0x20), position + 1, shift + 5
            if not more and char & 0x10:
                value |= -1 << shift
        runs.append(value + (runs[-2] if len(runs) > 2 else 0))
    return runs


def test_any_string_decodes_as_pycocotools_would_or_is_refused():
    """Random strings over the code's 64 characters and a few outside it (cut values, signs, '\x7f', 'é'),
    empty ones included, decoded together against a character-by-character decoder."""
    rng = np.random.default_rng(5)
    alphabet = [chr(c) for c in range(48, 112)] + ["\x7f", "/", "é"]
    strings = ["".join(alphabet[i] for i in rng.integers(0, len(alphabet) - (3 if rng.random() < 0.8 else 0),
                                                         int(rng.integers(0, 12))))
               for _ in range(3000)]
    for counts, fine, negative, covered in zip(strings, *compressed_totals(strings)):
        expected = _reference_runs(counts)
        if expected is None:
            assert not fine, counts
        elif not fine:  # only a value of more than 7 characters is refused where the reference decodes
            assert any(len(value) > 7 for value in _values(counts)), counts
        else:
            assert (negative, covered) == (any(run < 0 for run in expected), sum(expected)), counts


def _values(counts):
    """The characters of each value of a well-formed string."""
    values, current = [], ""
    for char in counts:
        current += char
        if not (ord(char) - 48) & 0x20:
            values.append(current)
            current = ""
    return values


@pytest.mark.parametrize("kind", ["empty", "full", "edges", "random"])
def test_every_pixel_of_rle_masks_matches_decoding(kind):
    rng = np.random.default_rng(1)
    sizes = [(1, 1), (1, 7), (7, 1), (13, 9), (64, 48)]
    masks = [_random_mask(rng, h, w, kind) for h, w in sizes]
    rles = [mask_utils.encode(np.asfortranarray(mask)) for mask in masks]
    # Compressed strings as bytes and as str (as json stores them), and uncompressed counts lists.
    segmentations = [{"size": rle["size"], "counts": rle["counts"]} for rle in rles[:2]]
    segmentations += [{"size": rle["size"], "counts": rle["counts"].decode("ascii")} for rle in rles[2:4]]
    segmentations.append(_uncompressed(masks[4]))
    heights, widths = [h for h, _ in sizes], [w for _, w in sizes]
    strings = encode_segmentations(segmentations, heights, widths)
    for index, (height, width) in enumerate(sizes):
        xs, ys = _every_pixel(height, width)
        which = np.full(xs.size, index)
        decoded = mask_utils.decode({"size": [height, width], "counts": strings[index]}).astype(bool)
        assert np.array_equal(decoded, masks[index].astype(bool))
        assert np.array_equal(labels_at(strings, heights, widths, which, xs, ys), decoded[ys, xs])


def _uncompressed(mask):
    flat = mask.ravel(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    runs = np.diff(bounds).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + runs}


def test_random_polygons_match_decoding_on_every_pixel_and_the_image_edges():
    """Polygons (several per instance, reaching past the image's edges) are rasterised as pycocotools does."""
    rng = np.random.default_rng(2)
    segmentations, heights, widths = [], [], []
    for _ in range(40):
        height, width = int(rng.integers(1, 60)), int(rng.integers(1, 60))
        polygons = []
        for _ in range(int(rng.integers(1, 4))):
            corners = int(rng.integers(3, 9))
            xy = np.stack([rng.uniform(-5, width + 5, corners), rng.uniform(-5, height + 5, corners)], axis=1)
            polygons.append(xy.ravel().round(2).tolist())
        segmentations.append(polygons)
        heights.append(height)
        widths.append(width)
    strings = encode_segmentations(segmentations, heights, widths)
    for index, polygons in enumerate(segmentations):
        height, width = heights[index], widths[index]
        decoded = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))).astype(bool)
        xs, ys = _every_pixel(height, width)
        got = labels_at(strings, heights, widths, np.full(xs.size, index), xs, ys)
        assert np.array_equal(got, decoded[ys, xs]), index


def test_many_masks_and_points_in_one_call():
    """Points of many masks in any order, repeated, and on the four corners of each image; many masks of one
    image size, so that they take several pycocotools calls."""
    rng = np.random.default_rng(3)
    sizes = [(int(rng.integers(1, 40)), int(rng.integers(1, 40))) for _ in range(60)]
    sizes += [(17, 23)] * (2 * MASKS_PER_CALL + 5)
    kinds = ["empty", "full", "edges", "random"]
    masks = [_random_mask(rng, h, w, kinds[index % 4]) for index, (h, w) in enumerate(sizes)]
    strings = [mask_utils.encode(np.asfortranarray(mask))["counts"] for mask in masks]
    which = rng.integers(0, len(masks), 5000)
    xs = np.array([rng.integers(0, sizes[i][1]) for i in which])
    ys = np.array([rng.integers(0, sizes[i][0]) for i in which])
    corners = [(i, x, y) for i, (h, w) in enumerate(sizes) for x in (0, w - 1) for y in (0, h - 1)]
    which = np.concatenate([which, [c[0] for c in corners]])
    xs = np.concatenate([xs, [c[1] for c in corners]])
    ys = np.concatenate([ys, [c[2] for c in corners]])
    expected = [bool(masks[i][y, x]) for i, x, y in zip(which, xs, ys)]
    heights, widths = [h for h, _ in sizes], [w for _, w in sizes]
    assert labels_at(strings, heights, widths, which, xs, ys).tolist() == expected


def test_a_segmentation_that_is_no_mask_is_refused():
    with pytest.raises(ValueError, match="segmentation 1"):
        encode_segmentations([[[0, 0, 4, 0, 4, 4]], "nothing"], [5, 5], [5, 5])


def test_strings_decoded_in_several_passes_give_what_one_pass_gives(monkeypatch):
    rng = np.random.default_rng(6)
    strings = [mask_utils.encode(np.asfortranarray(_random_mask(rng, 9, 7, "random")))["counts"].decode("ascii")
               for _ in range(300)] + ["", "0", "\x7f"]
    whole = compressed_totals(strings)
    monkeypatch.setattr("apis.data.rle._CHARS_PER_PASS", 37)
    for column, expected in zip(compressed_totals(strings), whole):
        assert column.tolist() == expected.tolist()
    assert whole[2][:300].tolist() == [63] * 300 and whole[0].tolist() == [True] * 302 + [False]
