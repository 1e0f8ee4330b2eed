"""CondInst mask branch: P3-P5 fused into a few shared mask feature channels, at stride 8 or 4.

At stride 4 the branch also reads the ResNet's first stage ``C2`` (stride 4), the only backbone output fine
enough for objects a few cells wide: on DSB2018 nuclei at the CPU configs' input size (median side 13 px) a
stride-8 map gives an object one or two cells.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

STRIDES = (8, 4)


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class MaskBranch(nn.Module):
    """``forward([P3, P4, P5], c2) -> mask features [B, out_channels, Hp/stride, Wp/stride]``.

    Each pyramid level is refined by a 3x3 conv, upsampled to P3's size and summed. With ``stride=4`` that
    sum is upsampled once more and added to ``C2`` (refined by a 3x3 conv from ``fine_channels``). A tower of
    ``num_convs`` convs and a 1x1 projection follow, at the branch's stride. Every upsampling is bilinear with
    ``align_corners=False`` by a whole factor, which keeps cell ``i`` of stride ``s`` covering
    ``[s*i, s*i + s)`` at every level (the FPN's own nearest-neighbour upsampling by 2 keeps it too).
    BatchNorm as in AdelaiDet's default.

    Args:
        in_channels: channels of the pyramid levels.
        channels: channels inside the branch.
        out_channels: channels of the mask features.
        num_levels: pyramid levels read (P3 first).
        num_convs: convs of the tower.
        stride: 8 (P3's, CondInst's) or 4 (with ``C2``).
        fine_channels: channels of ``C2`` (needed when ``stride=4``).
    """

    def __init__(self, in_channels: int, channels: int, out_channels: int, num_levels: int = 3,
                 num_convs: int = 4, stride: int = 8, fine_channels: int | None = None):
        super().__init__()
        if stride not in STRIDES:
            raise ValueError(f"model.mask_feature_stride={stride}: allowed values are {', '.join(map(str, STRIDES))}")
        if stride == 4 and fine_channels is None:
            raise ValueError("a stride-4 mask branch needs the channels of C2 (fine_channels)")
        self.stride = stride
        self.refine = nn.ModuleList(_conv_bn_relu(in_channels, channels) for _ in range(num_levels))
        self.refine_fine = _conv_bn_relu(fine_channels, channels) if stride == 4 else None
        self.tower = nn.Sequential(*(_conv_bn_relu(channels, channels) for _ in range(num_convs)),
                                   nn.Conv2d(channels, out_channels, 1))
        self.out_channels = out_channels

    def forward(self, features: list[Tensor], c2: Tensor | None = None) -> Tensor:
        """Args: ``features`` the pyramid levels ``[B, in_channels, Hp/8, Wp/8]`` (P3), ... ; ``c2`` the ResNet's
        stride-4 stage ``[B, fine_channels, Hp/4, Wp/4]``, read only by a stride-4 branch."""
        fused = self.refine[0](features[0])
        for refine, feature in zip(self.refine[1:], features[1:]):
            fused = fused + F.interpolate(refine(feature), size=fused.shape[-2:], mode="bilinear",
                                          align_corners=False)
        if self.refine_fine is not None:
            if c2 is None:
                raise ValueError("a stride-4 mask branch needs C2")
            fine = self.refine_fine(c2)
            fused = fine + F.interpolate(fused, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return self.tower(fused)
