"""The coordinate convention, by hand (docs/design.md, "Coordinates"): pixel x covers [x, x + 1) and is a
candidate of a box when its centre x + 0.5 lies in [x0, x1], both edges included."""

import numpy as np
import pytest

from apis.data.coords import box_pixel_range, continuous_to_index, index_to_continuous, point_in_box, xywh_to_xyxy

# (x0, y0, x1, y1, width, height) -> (xs, ys, xe, ye), worked out by hand from the rule above.
BOX_PIXEL_RANGES = [
    # whole pixels: [0, 10) holds the centres 0.5 .. 9.5
    ((0.0, 0.0, 10.0, 10.0, 20, 20), (0, 0, 10, 10)),
    ((1.0, 2.0, 4.0, 3.0, 10, 10), (1, 2, 4, 3)),  # x centres 1.5, 2.5, 3.5; y centre 2.5
    # edges exactly on pixel centres are inside
    ((0.5, 0.5, 2.5, 2.5, 10, 10), (0, 0, 3, 3)),
    ((2.5, 4.5, 2.5, 4.5, 10, 10), (2, 4, 3, 5)),  # a box that is one pixel centre
    # edges just past a centre leave that pixel out
    ((0.51, 0.5, 2.49, 2.5, 10, 10), (1, 0, 2, 3)),
    ((0.6, 0.6, 2.4, 2.4, 10, 10), (1, 1, 2, 2)),
    # thinner than a pixel, no centre inside: the pixel holding the box's centre
    ((2.6, 2.6, 2.9, 2.9, 10, 10), (2, 2, 3, 3)),
    ((3.0, 1.0, 3.0, 5.0, 10, 10), (3, 1, 4, 5)),  # zero width at x = 3.0 -> pixel 3; y centres 1.5..4.5
    ((3.6, 1.0, 4.4, 2.0, 10, 10), (4, 1, 5, 2)),  # x: no centre in [3.6, 4.4]; the box centre 4.0 is in pixel 4
    # image borders clip the range
    ((-5.0, -5.0, 3.0, 3.0, 10, 10), (0, 0, 3, 3)),
    ((8.0, 8.0, 15.0, 12.0, 10, 10), (8, 8, 10, 10)),
    ((12.2, 3.0, 12.3, 4.0, 10, 10), (9, 3, 10, 4)),  # thin and outside on the right: the last column
    ((-8.0, 0.0, -2.0, 4.0, 10, 10), (0, 0, 1, 4)),  # wholly left of the image: the first column
]


@pytest.mark.parametrize("box, expected", BOX_PIXEL_RANGES)
def test_box_pixel_range_by_hand(box, expected):
    assert box_pixel_range(*box) == expected


def test_point_in_box_follows_the_same_edges():
    assert point_in_box(0, 0, 0.5, 0.5, 2.5, 2.5, 10, 10) and point_in_box(2, 2, 0.5, 0.5, 2.5, 2.5, 10, 10)
    assert not point_in_box(3, 2, 0.5, 0.5, 2.5, 2.5, 10, 10)
    assert not point_in_box(0, 1, 0.51, 0.5, 2.49, 2.5, 10, 10)
    assert point_in_box(4, 1, 3.6, 1.0, 4.4, 2.0, 10, 10) and not point_in_box(3, 1, 3.6, 1.0, 4.4, 2.0, 10, 10)


def test_index_and_continuous_coordinates():
    assert index_to_continuous(np.array([[0, 0], [3, 7]])).tolist() == [[0.5, 0.5], [3.5, 7.5]]
    assert continuous_to_index(np.array([[0.0, 0.99], [3.5, 7.0], [-0.1, 2.0]])).tolist() == [[0, 0], [3, 7],
                                                                                             [-1, 2]]
    assert xywh_to_xyxy([1, 2, 3, 4]) == (1.0, 2.0, 4.0, 6.0)
