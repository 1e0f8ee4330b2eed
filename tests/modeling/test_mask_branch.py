"""Mask branch shapes and strides, and the alignment of a known mask through every upsampling of the mask path."""

import math

import pytest
import torch
import torch.nn.functional as F

from apis.modeling.mask_branch import MaskBranch
from apis.modeling.mask_losses import masks_at_stride
from apis.modeling.postprocess import paste_masks


@pytest.mark.parametrize(("stride", "expected"), [(8, (2, 8, 8, 12)), (4, (2, 8, 16, 24))])
def test_output_shape_follows_the_stride(stride, expected):
    branch = MaskBranch(16, 16, 8, num_convs=1, stride=stride, fine_channels=6)
    pyramid = [torch.randn(2, 16, 8, 12), torch.randn(2, 16, 4, 6), torch.randn(2, 16, 2, 3)]
    c2 = torch.randn(2, 6, 16, 24)
    assert branch(pyramid, c2).shape == expected
    assert branch.stride == stride


def test_stride_8_branch_ignores_c2_and_keeps_the_old_parameters():
    branch = MaskBranch(16, 16, 8, num_convs=1, stride=8, fine_channels=6)
    assert not any(key.startswith("refine_fine") for key in branch.state_dict())
    pyramid = [torch.randn(1, 16, 4, 4), torch.randn(1, 16, 2, 2), torch.randn(1, 16, 1, 1)]
    branch.eval()
    assert torch.equal(branch(pyramid), branch(pyramid, torch.randn(1, 6, 8, 8)))


def test_stride_4_branch_reads_c2():
    branch = MaskBranch(16, 16, 8, num_convs=1, stride=4, fine_channels=6).eval()
    pyramid = [torch.randn(1, 16, 4, 4), torch.randn(1, 16, 2, 2), torch.randn(1, 16, 1, 1)]
    c2 = torch.randn(1, 6, 8, 8)
    assert not torch.equal(branch(pyramid, c2), branch(pyramid, c2 + 1))
    with pytest.raises(ValueError, match="needs C2"):
        branch(pyramid)


def test_bad_strides_are_refused():
    with pytest.raises(ValueError, match="mask_feature_stride=2"):
        MaskBranch(16, 16, 8, stride=2, fine_channels=6)
    with pytest.raises(ValueError, match="channels of C2"):
        MaskBranch(16, 16, 8, stride=4)


def disk(height, width, cx, cy, radius):
    """A disk of pixels whose centre ``(x + .5, y + .5)`` lies within ``radius`` of ``(cx, cy)``."""
    ys = torch.arange(height, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(width, dtype=torch.float32)[None, :] + 0.5
    return (xs - cx) ** 2 + (ys - cy) ** 2 <= radius ** 2


def centroid(mask):
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return float(xs.float().mean() + 0.5), float(ys.float().mean() + 0.5)


@pytest.mark.parametrize(("feature_stride", "out_stride"), [(8, 4), (4, 4), (4, 2), (8, 8)])
@pytest.mark.parametrize(("cx", "cy"), [(44.0, 28.0), (40.0, 24.0)])
def test_a_known_mask_comes_back_where_it_was(feature_stride, out_stride, cx, cy):
    """A disk's coverage at the feature stride, as logits, upsampled to the output stride as the dynamic head
    does and pasted at the original resolution as inference does: the disk comes back without a shift and no
    1-pixel shift of it matches the disk better. The disk is centred on a cell centre (44, 28) or a cell corner
    (40, 24) of every grid, where the cells, the pixels and the disk are all symmetric about its centre: any
    shift of the centroid is then a misalignment, not the grid's rounding (elsewhere rounding moves a
    stride-8 disk by up to a pixel either way)."""
    height, width = 64, 96
    gt = disk(height, width, cx, cy, 9.0)
    pasted = reconstruct(gt, feature_stride, out_stride, torch.tensor([[cx - 12, cy - 12, cx + 12, cy + 12]]))
    x, y = centroid(pasted)
    assert abs(x - cx) < 0.05 and abs(y - cy) < 0.05

    def iou(a, b):
        return float((a & b).sum() / (a | b).sum())

    shifted = [iou(torch.roll(pasted, (dy, dx), (0, 1)), gt) for dx in (-1, 0, 1) for dy in (-1, 0, 1)]
    assert iou(pasted, gt) == max(shifted)


def reconstruct(gt, feature_stride, out_stride, box):
    """``gt``'s coverage at the feature stride as logits, through the dynamic head's upsampling and the paste."""
    logits = torch.logit(masks_at_stride(gt[None].float(), feature_stride).clamp(1e-4, 1 - 1e-4))
    if feature_stride > out_stride:
        logits = F.interpolate(logits[:, None], scale_factor=feature_stride // out_stride, mode="bilinear",
                               align_corners=False)[:, 0]
    return paste_masks(logits, out_stride, box, (1.0, 1.0), tuple(gt.shape), 0.5)[0]


def test_a_nucleus_sized_disk_needs_stride_4():
    """A disk 12 px across (a DSB2018 nucleus at the CPU configs' input size) survives stride-4 mask features
    far better than stride-8 ones, which is why the mask branch can work at stride 4."""
    gt = disk(64, 96, 42.3, 29.6, 6.0)
    box = torch.tensor([[36.0, 23.0, 49.0, 36.0]])

    def iou(a):
        return float((a & gt).sum() / (a | gt).sum())

    coarse, fine = iou(reconstruct(gt, 8, 4, box)), iou(reconstruct(gt, 4, 4, box))
    assert fine > 0.8 and fine > coarse + 0.1


def test_branch_upsampling_keeps_a_cell_where_it_was():
    """P3's cell (i, j) covers image [8j, 8j + 8) x [8i, 8i + 8): upsampled to stride 4 as the branch does, the
    mass of a single lit cell stays centred on that square's centre (8j + 4, 8i + 4)."""
    p3 = torch.zeros(1, 1, 6, 8)
    p3[0, 0, 2, 5] = 1.0
    fine = F.interpolate(p3, size=(12, 16), mode="bilinear", align_corners=False)[0, 0]
    ys = torch.arange(12, dtype=torch.float32)[:, None] * 4 + 2  # stride-4 cell centres
    xs = torch.arange(16, dtype=torch.float32)[None, :] * 4 + 2
    total = fine.sum()
    assert math.isclose(float((fine * xs).sum() / total), 8 * 5 + 4, abs_tol=1e-5)
    assert math.isclose(float((fine * ys).sum() / total), 8 * 2 + 4, abs_tol=1e-5)
