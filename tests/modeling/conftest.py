"""Shared reference implementations for the modeling tests."""

import math

import pytest
import torch

from apis.config import LossConfig, ModelConfig
from apis.modeling.condinst import CondInst


def _manual_bilinear(grid, x, y, stride):
    """Value of ``grid`` (list of rows) at the continuous image point (x, y), computed by hand.

    Cell ``i`` has its centre at ``stride * i + stride / 2``; beyond the outermost centres the border
    value is used.
    """
    height, width = len(grid), len(grid[0])
    u = min(max(x / stride - 0.5, 0.0), width - 1.0)
    v = min(max(y / stride - 0.5, 0.0), height - 1.0)
    i0, j0 = int(math.floor(v)), int(math.floor(u))
    i1, j1 = min(i0 + 1, height - 1), min(j0 + 1, width - 1)
    fv, fu = v - i0, u - j0
    top = grid[i0][j0] * (1 - fu) + grid[i0][j1] * fu
    bottom = grid[i1][j0] * (1 - fu) + grid[i1][j1] * fu
    return top * (1 - fv) + bottom * fv


@pytest.fixture
def manual_bilinear():
    return _manual_bilinear


@pytest.fixture(autouse=True)
def single_thread():
    """Run modeling tests on one intra-op thread: these tensors are tiny, and on a shared 2-core machine
    OpenMP threads waiting for each other made the training tests several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_model(loss: LossConfig | None = None, **model):
    """ResNet-18 CondInst with 32 FPN channels and one conv per tower; ``model`` overrides ModelConfig."""
    settings = dict(depth=18, norm="bn", num_classes=3, fpn_channels=32, mask_branch_channels=16, head_convs=1)
    settings.update(model)
    return CondInst.from_config(ModelConfig(**settings), loss or LossConfig())


@pytest.fixture
def tiny_model():
    return _tiny_model
