"""The coordinate conventions in code (docs/design.md, "Coordinates").

* JSON points (PointSup's ``point_coords``) are **integer pixel indices** ``[x, y]``:
  ``x`` is the column, ``y`` the row, ``0 <= x < width``.
* Tensors hold **continuous** coordinates in which pixel ``(x, y)`` covers ``[x, x+1) x [y, y+1)``,
  so its centre is ``(x + 0.5, y + 0.5)``. Boxes are ``xyxy`` in the same continuous frame
  (COCO json boxes are ``xywh`` in that frame too).
* A pixel belongs to a box when its **centre** lies inside the box; those pixels are the
  candidate points of an instance.
"""

from __future__ import annotations

import math

import numpy as np

PIXEL_CENTRE = 0.5


def index_to_continuous(points: np.ndarray) -> np.ndarray:
    """Integer pixel indices ``[..., 2]`` -> continuous pixel-centre coordinates (float32)."""
    return np.asarray(points, dtype=np.float32) + PIXEL_CENTRE


def continuous_to_index(points: np.ndarray) -> np.ndarray:
    """Continuous coordinates ``[..., 2]`` -> the integer index of the pixel containing them."""
    return np.floor(np.asarray(points, dtype=np.float64)).astype(np.int64)


def xywh_to_xyxy(box) -> tuple[float, float, float, float]:
    x, y, w, h = (float(v) for v in box)
    return x, y, x + w, y + h


def box_pixel_range(x0: float, y0: float, x1: float, y1: float, width: int, height: int
                    ) -> tuple[int, int, int, int]:
    """Pixel indices whose centres lie in the box, as half-open ranges ``(xs, ys, xe, ye)``.

    Pixel ``x`` is inside when ``x0 <= x + 0.5 <= x1``; the range is clipped to the image.
    A box too thin to contain any pixel centre still gets the one pixel holding its centre,
    so every instance has at least one candidate point.
    """
    xs, xe = math.ceil(x0 - PIXEL_CENTRE), math.floor(x1 - PIXEL_CENTRE) + 1
    ys, ye = math.ceil(y0 - PIXEL_CENTRE), math.floor(y1 - PIXEL_CENTRE) + 1
    if xe <= xs:
        xs = min(max(int(math.floor((x0 + x1) / 2)), 0), width - 1)
        xe = xs + 1
    if ye <= ys:
        ys = min(max(int(math.floor((y0 + y1) / 2)), 0), height - 1)
        ye = ys + 1
    xs, ys = max(xs, 0), max(ys, 0)
    xe, ye = min(xe, width), min(ye, height)
    return xs, ys, max(xe, xs + 1), max(ye, ys + 1)


def point_in_box(x: int, y: int, x0: float, y0: float, x1: float, y1: float, width: int, height: int) -> bool:
    """Whether integer pixel ``(x, y)`` is a candidate point of the box (see :func:`box_pixel_range`)."""
    xs, ys, xe, ye = box_pixel_range(x0, y0, x1, y1, width, height)
    return xs <= x < xe and ys <= y < ye
