"""ResNet + FPN builder: stage channels, pyramid shapes, local-only weight loading."""

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from apis.modeling.backbone import backbone_state_dict, build_backbone


@pytest.mark.parametrize("depth, channels", [(18, [128, 256, 512]), (50, [512, 1024, 2048])])
def test_stage_channels_and_pyramid_shapes(depth, channels):
    backbone = build_backbone(depth, "frozen_bn", "none", fpn_channels=32)
    assert [block[0].in_channels for block in backbone.fpn.inner_blocks] == channels
    with torch.no_grad():
        pyramid = backbone(torch.randn(1, 3, 64, 96))
    assert [tuple(p.shape) for p in pyramid] == [(1, 32, 8, 12), (1, 32, 4, 6), (1, 32, 2, 3), (1, 32, 1, 2),
                                                 (1, 32, 1, 1)]
    assert backbone.strides == (8, 16, 32, 64, 128)


def test_norm_choice():
    frozen = build_backbone(18, "frozen_bn", "none", 32)
    trained = build_backbone(18, "bn", "none", 32)
    assert any(isinstance(m, FrozenBatchNorm2d) for m in frozen.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in trained.modules())
    with pytest.raises(ValueError, match="model.norm"):
        build_backbone(18, "group", "none", 32)
    with pytest.raises(ValueError, match="model.depth"):
        build_backbone(26, "bn", "none", 32)


def test_imagenet_weights_are_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="resnet18-f37072fd.pth"):
        build_backbone(18, "frozen_bn", "imagenet", 32)


def _reference_state(depth_constructor) -> dict:
    torch.manual_seed(1)
    return depth_constructor(weights=None).state_dict()


def test_imagenet_weights_from_the_local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state = _reference_state(torchvision.models.resnet18)
    cache = Path(tmp_path) / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(state, cache / "resnet18-f37072fd.pth")
    backbone = build_backbone(18, "frozen_bn", "imagenet", 32)
    assert torch.equal(backbone.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    assert torch.equal(backbone.stem[1].running_var, state["bn1.running_var"])
    # Pretrained: stem and first stage frozen, the rest trains.
    assert not backbone.stem[0].weight.requires_grad and not backbone.layer1[0].conv1.weight.requires_grad
    assert backbone.layer2[0].conv1.weight.requires_grad


def test_weights_from_a_path(tmp_path):
    state = _reference_state(torchvision.models.resnet18)
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    backbone = build_backbone(18, "bn", str(path), 32)
    assert torch.equal(backbone.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    with pytest.raises(ValueError, match="not a torchvision ResNet state dict"):
        build_backbone(34, "bn", str(path), 32)
    with pytest.raises(FileNotFoundError, match="no such file"):
        build_backbone(18, "bn", str(tmp_path / "missing.pth"), 32)


def test_backbone_file_round_trip_with_fpn(tmp_path):
    torch.manual_seed(3)
    source = build_backbone(18, "bn", "none", 32)
    path = tmp_path / "pretrained.pth"
    state = backbone_state_dict(source)
    # torchvision's layout (what ImageNet files use) plus the FPN.
    assert {"conv1.weight", "bn1.running_mean", "layer4.1.conv2.weight"} <= set(state)
    assert any(key.startswith("fpn.") for key in state) and not any(key.startswith("stem.") for key in state)
    torch.save(state, path)
    loaded = build_backbone(18, "bn", str(path), 32)
    for (name, ours), (_, theirs) in zip(loaded.state_dict().items(), source.state_dict().items()):
        assert torch.equal(ours, theirs), name
    images = torch.randn(1, 3, 64, 64)
    loaded.eval(), source.eval()
    with torch.no_grad():
        assert all(torch.allclose(a, b) for a, b in zip(loaded(images), source(images)))


def test_backbone_file_with_another_fpn_width_is_refused(tmp_path):
    path = tmp_path / "pretrained.pth"
    torch.save(backbone_state_dict(build_backbone(18, "bn", "none", 32)), path)
    with pytest.raises(ValueError, match="model.fpn_channels=64"):
        build_backbone(18, "bn", str(path), 64)
