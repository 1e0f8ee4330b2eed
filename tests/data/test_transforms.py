import numpy as np
import pytest
import torch

from apis.data.coords import continuous_to_index, index_to_continuous
from apis.data.transforms import ResizeFlip, inference_transform, resized_size, sample_train_transform


def test_resized_size_short_edge_and_cap():
    # 480x640 -> short edge 800: scale 5/3, long edge 1066.7 -> 1067 (under the 1333 cap).
    assert resized_size(480, 640, 800, 1333) == (800, 1067)
    # 100x1000 -> short edge 800 would make the long edge 8000: capped at 1333, scale 1.333.
    assert resized_size(100, 1000, 800, 1333) == (133, 1333)
    assert inference_transform(256, 320, 352, 640).size == (352, 440)


def _object_mask(height: int = 40, width: int = 60) -> np.ndarray:
    """A rectangle joined to a disc: an asymmetric object so that a wrong flip is visible."""
    mask = np.zeros((height, width), dtype=bool)
    mask[8:30, 6:24] = True
    yy, xx = np.mgrid[:height, :width]
    mask |= (xx - 42) ** 2 + (yy - 22) ** 2 <= 11 ** 2
    return mask


def _interior_pixels(mask: np.ndarray, margin: int) -> np.ndarray:
    """``[K, 2]`` (x, y) of pixels whose whole (2*margin+1)^2 neighbourhood has their own value.

    Nearest-neighbour resizing may move a boundary by up to one source pixel, so only points away from
    the boundary must keep their value exactly.
    """
    height, width = mask.shape
    keep = []
    for y in range(margin, height - margin):
        for x in range(margin, width - margin):
            window = mask[y - margin:y + margin + 1, x - margin:x + margin + 1]
            if window.all() or not window.any():
                keep.append((x, y))
    return np.array(keep, dtype=np.int64)


@pytest.mark.parametrize("size", [(40, 60), (68, 102), (23, 35), (80, 120)])
@pytest.mark.parametrize("flip", [False, True])
def test_labelled_point_stays_on_the_same_object_pixel(size, flip):
    mask = _object_mask()
    transform = ResizeFlip((40, 60), size, flip)
    pixels = _interior_pixels(mask, margin=2)
    assert mask[pixels[:, 1], pixels[:, 0]].any() and not mask[pixels[:, 1], pixels[:, 0]].all()
    labels = torch.from_numpy(mask[pixels[:, 1], pixels[:, 0]].astype(np.float32))
    coords, new_labels = transform.apply_points(torch.from_numpy(index_to_continuous(pixels)), labels)
    assert torch.equal(new_labels, labels)  # all points stay inside the image

    new_mask = transform.apply_masks(torch.from_numpy(mask)[None])[0].numpy()
    assert new_mask.shape == size
    index = continuous_to_index(coords.numpy())
    assert np.array_equal(new_mask[index[:, 1], index[:, 0]], mask[pixels[:, 1], pixels[:, 0]])

    # The image goes through the same geometry: paint the object white on black and read it back.
    image = np.repeat(mask[:, :, None].astype(np.uint8) * 255, 3, axis=2)
    new_image = transform.apply_image(image)
    assert new_image.shape == (*size, 3)
    assert np.array_equal(new_image[index[:, 1], index[:, 0], 0] > 127, mask[pixels[:, 1], pixels[:, 0]])


def test_point_and_box_coordinates_by_hand():
    # 40x60 (HxW) -> 80x120, mirrored: x' = 120 - 2x, y' = 2y.
    transform = ResizeFlip((40, 60), (80, 120), True)
    assert transform.scale == (2.0, 2.0)
    coords, _ = transform.apply_points(torch.tensor([[3.5, 4.5]]), torch.tensor([1.0]))
    assert coords.tolist() == [[113.0, 9.0]]
    boxes = transform.apply_boxes(torch.tensor([[10.0, 20.0, 30.0, 35.0]]))
    assert boxes.tolist() == [[60.0, 40.0, 100.0, 70.0]]
    # Downscale without flip: 100x200 -> 50x100.
    half = ResizeFlip((100, 200), (50, 100), False)
    assert half.apply_boxes(torch.tensor([[10.0, 20.0, 30.0, 40.0]])).tolist() == [[5.0, 10.0, 15.0, 20.0]]


def test_points_outside_the_image_get_label_minus_one():
    transform = ResizeFlip((40, 60), (20, 30), True)
    coords = torch.tensor([[[10.5, 10.5], [60.5, 3.5], [5.5, -0.5]], [[59.5, 39.5], [0.5, 0.5], [1.5, 40.0]]])
    labels = torch.tensor([[1.0, 1.0, 0.0], [0.0, -1.0, 1.0]])
    _, new_labels = transform.apply_points(coords, labels)
    assert new_labels.tolist() == [[1.0, -1.0, -1.0], [0.0, -1.0, -1.0]]


def test_flip_only_mirrors_image_and_masks():
    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    transform = ResizeFlip((4, 5), (4, 5), True)
    assert np.array_equal(transform.apply_image(image), image[:, ::-1])
    masks = torch.from_numpy(np.random.default_rng(0).random((2, 4, 5)) > 0.5)
    assert torch.equal(transform.apply_masks(masks), masks.flip(-1).to(torch.uint8))
    assert transform.apply_masks(torch.zeros((0, 4, 5), dtype=torch.bool)).shape == (0, 4, 5)


def test_sample_train_transform_is_seeded_and_uses_the_listed_sizes():
    def draws(seed):
        rng = np.random.default_rng(seed)
        return [sample_train_transform(100, 150, [64, 80, 96], 1000, 0.5, rng) for _ in range(40)]

    first = draws(1)
    assert first == draws(1)
    assert first != draws(2)
    assert {t.size[0] for t in first} == {64, 80, 96}
    assert {t.flip for t in first} == {False, True}
    rng = np.random.default_rng(0)
    assert not any(sample_train_transform(10, 10, [8], 100, 0.0, rng).flip for _ in range(20))
    assert all(sample_train_transform(10, 10, [8], 100, 1.0, rng).flip for _ in range(20))
