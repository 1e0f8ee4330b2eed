"""Overlay pictures of predictions (`apis predict --vis`), checked pixel by pixel on a hand-made prediction."""

from pathlib import Path

import numpy as np
from PIL import Image

from apis.engine.predictor import ImagePrediction
from apis.report.overlay import COLOURS, MASK_ALPHA, overlay_image, write_overlay


def _found(height=32, width=64):
    masks = np.zeros((1, height, width), dtype=bool)
    masks[0, 20:30, 40:60] = True
    return ImagePrediction(Path("x.png"), height, width, masks, np.array([[40.0, 20.0, 60.0, 30.0]]),
                           np.array([0.87]), np.array([1]))


def test_masks_are_blended_and_boxes_drawn_at_the_enlarged_scale():
    pixels = np.full((32, 64, 3), 100, dtype=np.uint8)
    image = np.asarray(overlay_image(pixels, _found(), [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]))
    factor = 8  # 64 px -> at least 512 px on the longer side
    assert image.shape == (32 * factor, 64 * factor, 3)
    expected = np.round((1 - MASK_ALPHA) * 100 + MASK_ALPHA * np.asarray(COLOURS[0])).astype(np.uint8)
    inside = image[25 * factor, 50 * factor]  # inside the mask, away from the box's outline and label
    assert inside.tolist() == expected.tolist()
    assert image[5, 5].tolist() == [100, 100, 100]  # outside: the image as it was
    assert image[25 * factor, 40 * factor].tolist() == list(COLOURS[0])  # the box's left edge
    assert image[30 * factor - 1, 50 * factor].tolist() == list(COLOURS[0])  # its bottom edge
    # The label sits above the box in the detection's colour, with white text.
    label = image[20 * factor - 24:20 * factor, 40 * factor:40 * factor + 60]
    assert (label == COLOURS[0]).all(axis=2).any() and (label > 240).all(axis=2).any()


def test_write_overlay_writes_a_png(tmp_path):
    path = write_overlay(np.zeros((32, 64, 3), dtype=np.uint8), _found(), [{"id": 1}, {"id": 2}], tmp_path / "o.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (512, 256)
