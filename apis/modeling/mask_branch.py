"""CondInst mask branch: P3-P5 fused at stride 8 into a few shared mask feature channels."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class MaskBranch(nn.Module):
    """``forward([P3, P4, P5]) -> mask features [B, out_channels, H/8, W/8]``.

    Each input level is refined by a 3x3 conv, upsampled to P3's size (bilinear, align_corners=False,
    which keeps cell ``i`` of stride ``s`` covering ``[s*i, s*i + s)``) and summed; a tower of
    ``num_convs`` convs and a 1x1 projection follow. BatchNorm as in AdelaiDet's default.
    """

    stride = 8

    def __init__(self, in_channels: int, channels: int, out_channels: int, num_levels: int = 3,
                 num_convs: int = 4):
        super().__init__()
        self.refine = nn.ModuleList(_conv_bn_relu(in_channels, channels) for _ in range(num_levels))
        self.tower = nn.Sequential(*(_conv_bn_relu(channels, channels) for _ in range(num_convs)),
                                   nn.Conv2d(channels, out_channels, 1))
        self.out_channels = out_channels

    def forward(self, features: list[Tensor]) -> Tensor:
        fused = self.refine[0](features[0])
        for refine, feature in zip(self.refine[1:], features[1:]):
            fused = fused + F.interpolate(refine(feature), size=fused.shape[-2:], mode="bilinear",
                                          align_corners=False)
        return self.tower(fused)
