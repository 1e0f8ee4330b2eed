"""Pictures of predictions: an image with its masks, boxes, class names and scores drawn over it
(``apis predict --vis``).

Small images are enlarged by a whole factor (nearest neighbour, so pixels stay pixels) until the longer side is
at least :data:`MIN_LONG_SIDE`, so that the labels stay readable.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from apis.engine.predictor import ImagePrediction
from apis.utils.io import atomic_write_bytes

MIN_LONG_SIDE = 512
MASK_ALPHA = 0.45
COLOURS = ((229, 57, 53), (30, 136, 229), (67, 160, 71), (251, 140, 0), (142, 36, 170), (0, 172, 193),
           (253, 216, 53), (109, 76, 65), (216, 27, 96), (84, 110, 122))


def overlay_image(pixels: np.ndarray, found: ImagePrediction, categories: list[dict]) -> Image.Image:
    """``pixels`` (``uint8[H, W, 3]``) with every detection of ``found`` drawn over it, one colour per
    detection: the mask blended in, its box, and ``class score`` above the box."""
    factor = max(1, math.ceil(MIN_LONG_SIDE / max(found.height, found.width)))
    canvas = pixels.astype(np.float32)
    for index, mask in enumerate(found.masks):
        colour = np.asarray(COLOURS[index % len(COLOURS)], dtype=np.float32)
        canvas[mask] = (1 - MASK_ALPHA) * canvas[mask] + MASK_ALPHA * colour
    image = Image.fromarray(canvas.round().astype(np.uint8))
    if factor > 1:
        image = image.resize((found.width * factor, found.height * factor), Image.NEAREST)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=14)
    names = [str(c.get("name", c["id"])) for c in categories]
    for index, (box, score, label) in enumerate(zip(found.boxes, found.scores, found.labels)):
        colour = COLOURS[index % len(COLOURS)]
        x0, y0, x1, y1 = (float(v) * factor for v in box)
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=colour, width=2)
        text = f"{names[int(label)]} {float(score):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        ty = y0 - (bottom - top) - 4 if y0 >= (bottom - top) + 4 else y0
        draw.rectangle([x0, ty, x0 + (right - left) + 4, ty + (bottom - top) + 4], fill=colour)
        draw.text((x0 + 2, ty + 2 - top), text, fill=(255, 255, 255), font=font)
    return image


def write_overlay(pixels: np.ndarray, found: ImagePrediction, categories: list[dict], out_path: str | Path) -> Path:
    """Write :func:`overlay_image` as a PNG (atomically); returns the path."""
    buffer = io.BytesIO()
    overlay_image(pixels, found, categories).save(buffer, format="PNG")
    out_path = Path(out_path)
    atomic_write_bytes(out_path, buffer.getvalue())
    return out_path
