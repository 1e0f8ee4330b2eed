"""ResNet + FPN (P3-P7) backbone from torchvision parts.

The FPN reads C3-C5 (strides 8, 16, 32) and adds P6/P7 from P5 with ``LastLevelP6P7``, as in FCOS and
CondInst. ImageNet weights are read only from local files: nothing is ever downloaded.

``model.backbone_weights`` takes a torchvision-layout ResNet state dict (``conv1.*``, ``bn1.*``,
``layer1.*`` ... ``layer4.*``; a classifier ``fc.*`` is ignored). A file written by ``apis pretrain``
(:func:`backbone_state_dict`) has the same layout plus the FPN's weights under ``fpn.*``, which are
loaded too when the FPN has the same width. Tensors stored in half precision are loaded as float32.

Besides a path, ``model.backbone_weights`` takes the name of a file shipped in ``apis/weights/``
(:data:`BUNDLED_WEIGHTS`): ``synth-source-r18`` is the demo's backbone, pretrained by ``apis pretrain`` on
the synthetic *source* family, whose shapes and hues the demo's data does not have (the command that
made it is in ``apis/weights/r18_synth_source.pth.json`` and docs/design.md, "Pretraining").
"""

from __future__ import annotations

import importlib.resources
from collections import OrderedDict
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

FPN_STRIDES = (8, 16, 32, 64, 128)
BUNDLED_WEIGHTS = {"synth-source-r18": "r18_synth_source.pth"}
FPN_PREFIX = "fpn."
# ResNetFPN keeps torchvision's stem as one Sequential: its keys <-> torchvision's.
_STEM_KEYS = {"stem.0.": "conv1.", "stem.1.": "bn1."}

_RESNETS = {
    18: (torchvision.models.resnet18, torchvision.models.ResNet18_Weights, (128, 256, 512)),
    34: (torchvision.models.resnet34, torchvision.models.ResNet34_Weights, (128, 256, 512)),
    50: (torchvision.models.resnet50, torchvision.models.ResNet50_Weights, (512, 1024, 2048)),
    101: (torchvision.models.resnet101, torchvision.models.ResNet101_Weights, (512, 1024, 2048)),
}


class ResNetFPN(nn.Module):
    """``forward(images [B, 3, H, W] normalised) -> [P3, P4, P5, P6, P7]``, each ``[B, fpn_channels, h, w]``.

    Level ``l`` has stride ``FPN_STRIDES[l]``; for ``H`` divisible by 32, P3-P5 are exactly ``H / stride``.
    :meth:`c2_and_pyramid` also returns the first stage's output ``C2`` (stride 4, ``c2_channels``), which a
    stride-4 mask branch reads.
    """

    def __init__(self, resnet: torchvision.models.ResNet, stage_channels: tuple[int, int, int],
                 fpn_channels: int):
        super().__init__()
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        self.fpn = FeaturePyramidNetwork(list(stage_channels), fpn_channels,
                                         extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels))
        self.strides = FPN_STRIDES
        self.out_channels = fpn_channels
        self.c2_channels = resnet.layer1[-1].conv1.in_channels  # 64 for ResNet-18/34, 256 for 50/101

    def forward(self, images: Tensor) -> list[Tensor]:
        return self.c2_and_pyramid(images)[1]

    def c2_and_pyramid(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(C2 [B, c2_channels, H/4, W/4], [P3, ..., P7])`` of ``images [B, 3, H, W]`` normalised."""
        c2 = self.layer1(self.stem(images))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        pyramid = self.fpn(OrderedDict([("c3", c3), ("c4", c4), ("c5", c5)]))
        return c2, list(pyramid.values())


def backbone_state_dict(backbone: ResNetFPN) -> dict[str, Tensor]:
    """The weights of ``backbone`` in the layout ``model.backbone_weights`` reads: torchvision's ResNet keys
    plus the FPN under ``fpn.*`` (CPU tensors)."""
    state = {}
    for key, value in backbone.state_dict().items():
        for ours, theirs in _STEM_KEYS.items():
            if key.startswith(ours):
                key = theirs + key[len(ours):]
        state[key] = value.detach().cpu().clone()
    return state


def build_backbone(depth: int, norm: str, weights: str, fpn_channels: int) -> ResNetFPN:
    """ResNet-``depth`` with ``norm`` ("frozen_bn" or "bn") and ``weights`` ("none", "imagenet" or a file).

    With loaded weights the stem and the first stage are frozen (detectron2's ``FREEZE_AT=2``); trained
    from scratch ("none") every layer learns, because frozen random filters would be useless.
    """
    if depth not in _RESNETS:
        raise ValueError(f"model.depth must be one of {sorted(_RESNETS)}, got {depth}")
    norm_layers = {"frozen_bn": FrozenBatchNorm2d, "bn": nn.BatchNorm2d}
    if norm not in norm_layers:
        raise ValueError(f"model.norm must be one of {sorted(norm_layers)}, got {norm!r}")
    constructor, weight_enum, stage_channels = _RESNETS[depth]
    resnet = constructor(weights=None, norm_layer=norm_layers[norm])
    fpn_state: dict[str, Tensor] = {}
    if weights != "none":
        path = _weights_file(weights, depth, weight_enum)
        fpn_state = _load_resnet_weights(resnet, path)
        for module in (resnet.conv1, resnet.bn1, resnet.layer1):
            module.requires_grad_(False)
    backbone = ResNetFPN(resnet, stage_channels, fpn_channels)
    if fpn_state:
        expected = {key: value.shape for key, value in backbone.fpn.state_dict().items()}
        found = {key: value.shape for key, value in fpn_state.items()}
        if expected != found:
            raise ValueError(f"model.backbone_weights: the FPN in {weights} does not fit model.fpn_channels="
                             f"{fpn_channels} (its shapes: {sorted(found.items())[:2]} ...)")
        backbone.fpn.load_state_dict(fpn_state)
    return backbone


def _weights_file(weights: str, depth: int, weight_enum) -> Path:
    """The file ``model.backbone_weights`` names: torchvision's ImageNet file, a bundled file or a path."""
    if weights == "imagenet":
        return _imagenet_file(depth, weight_enum)
    if weights in BUNDLED_WEIGHTS:
        return Path(str(importlib.resources.files("apis") / "weights" / BUNDLED_WEIGHTS[weights]))
    return Path(weights)


def _imagenet_file(depth: int, weight_enum) -> Path:
    """The torchvision ImageNet checkpoint of this depth in the local torch hub cache, or a clear error."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    names = [Path(member.url).name for member in weight_enum]
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"model.backbone_weights='imagenet' needs torchvision's ResNet-{depth} checkpoint on disk "
        f"(APIS never downloads weights). Place one of {names} in {folder}, "
        f"or set model.backbone_weights to the path of a torchvision ResNet-{depth} state dict.")


def _load_resnet_weights(resnet: torchvision.models.ResNet, path: Path) -> dict[str, Tensor]:
    """Load a torchvision-layout ResNet state dict (the classifier ``fc.*`` is ignored) into ``resnet``;
    returns the file's FPN weights (``fpn.*``, prefix removed), empty when it has none."""
    if not path.is_file():
        raise FileNotFoundError(f"model.backbone_weights: no such file {path} (a path, 'none', 'imagenet' or one "
                                f"of the bundled names {', '.join(BUNDLED_WEIGHTS)})")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"model.backbone_weights: {path} does not hold a state dict")
    def relevant(key: str) -> bool:  # BN step counters differ between checkpoints and carry no weights
        return not key.startswith("fc.") and not key.endswith("num_batches_tracked")

    fpn_state = {key[len(FPN_PREFIX):]: value for key, value in state.items() if key.startswith(FPN_PREFIX)}
    state = {key: value for key, value in state.items() if relevant(key) and not key.startswith(FPN_PREFIX)}
    expected = {key for key in resnet.state_dict() if relevant(key)}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"model.backbone_weights: {path} is not a torchvision ResNet state dict of this depth "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    resnet.load_state_dict(state, strict=False)  # copies cast half-precision files to float32
    return fpn_state
