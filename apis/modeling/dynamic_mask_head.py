"""CondInst's dynamic mask head: a tiny per-instance MLP of 1x1 convs whose weights come from the controller.

Map convention: cell ``i`` of a map with stride ``s`` covers image pixels ``[s*i, s*i + s)``; its centre is
``s*i + s/2`` in continuous image coordinates (pixel ``(x, y)`` has centre ``(x+.5, y+.5)``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

RELATIVE_COORDINATES = 2  # (x, y) offsets fed to the first layer next to the mask features
LEAKY_SLOPE = 0.1  # negative slope of the "leaky_relu" activation between the head's layers
ACTIVATIONS = ("relu", "leaky_relu")
# The logit of every cell outside an instance's window (sigmoid ~ 5e-5: background to every loss and to
# inference); constant, so no gradient flows there.
OUTSIDE_WINDOW_LOGIT = -10.0


def layer_shapes(in_channels: int, channels: int, num_layers: int) -> list[tuple[int, int]]:
    """``(out, in)`` of each 1x1 conv: the first reads mask features + relative coordinates, the last emits 1."""
    shapes = []
    width = in_channels + RELATIVE_COORDINATES
    for layer in range(num_layers):
        out = 1 if layer == num_layers - 1 else channels
        shapes.append((out, width))
        width = out
    return shapes


def num_dynamic_params(in_channels: int, channels: int, num_layers: int) -> int:
    """Parameters the controller emits per instance (169 for 8 in, 8 channels, 3 layers)."""
    return sum(out * width + out for out, width in layer_shapes(in_channels, channels, num_layers))


def fan_in_parameters(shapes: list[tuple[int, int]]) -> Tensor:
    """One parameter vector ``[num_params]`` in the controller's layout (per layer: weights, then biases):
    He-normal weights, std ``sqrt(2 / fan_in)`` before a ReLU and ``sqrt(1 / fan_in)`` for the last layer,
    and zero biases. Used as the controller's initial bias, so that every instance's mask MLP starts as a
    well-scaled random network whose every layer gets gradient, instead of an almost-zero one.
    """
    pieces = []
    for layer, (out, width) in enumerate(shapes):
        gain = 1.0 if layer == len(shapes) - 1 else 2.0
        pieces += [torch.randn(out * width) * math.sqrt(gain / width), torch.zeros(out)]
    return torch.cat(pieces)


def sizes_of_interest(size_ranges: list[float]) -> list[float]:
    """Per-level normaliser of relative coordinates: the upper size edge, twice the last finite one for
    the open-ended top level (AdelaiDet: [64, 128, 256, 512] -> [64, 128, 256, 512, 1024])."""
    upper = list(size_ranges[1:])
    return [edge if math.isfinite(edge) else 2 * size_ranges[i] for i, edge in enumerate(upper)]


def window_radii(size_ranges: list[float], feature_stride: int) -> list[float]:
    """Per level, the half-side in pixels of the square around a location that holds every box FCOS may
    assign to it: a location is assigned a box only when its largest distance to the box's sides is at most
    the level's upper size edge; one cell more keeps the cells the box's border touches (``inf`` for the
    open-ended top level: the whole map)."""
    return [edge + feature_stride for edge in size_ranges[1:]]


class DynamicMaskHead(nn.Module):
    """Runs every instance's own mask MLP over the shared mask features.

    The first layer reads the mask features and the location's offset to each map cell,
    ``(instance_location - cell_centre) / size_of_interest[level]``. Instances are batched with
    ``bmm`` (no Python loop over instances). Output: logits at ``out_stride``, upsampled bilinearly.

    With ``window_radii`` (pixels, one per level: :func:`window_radii`) each instance's MLP runs only on
    the cells whose centre lies within that distance of its location (a square window, moved inside the map
    at the border), and every other cell gets :data:`OUTSIDE_WINDOW_LOGIT`. Training loses nothing: the
    boxes a location is assigned lie in its window. At stride 4 this is what keeps the head affordable: an
    instance of P3 reads 34 x 34 cells instead of the whole image.
    """

    def __init__(self, in_channels: int, channels: int, num_layers: int, sizes_of_interest: list[float],
                 feature_stride: int, out_stride: int, activation: str = "relu",
                 window_radii: list[float] | None = None):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"model.dynamic_activation={activation!r}: allowed values are {', '.join(ACTIVATIONS)}")
        if feature_stride % out_stride:
            raise ValueError(f"model.mask_out_stride={out_stride} must divide the mask branch stride {feature_stride}")
        self.shapes = layer_shapes(in_channels, channels, num_layers)
        self.num_params = num_dynamic_params(in_channels, channels, num_layers)
        self.feature_stride = feature_stride
        self.out_stride = out_stride
        self.negative_slope = LEAKY_SLOPE if activation == "leaky_relu" else 0.0
        self.register_buffer("sizes_of_interest", torch.tensor(sizes_of_interest, dtype=torch.float32),
                             persistent=False)
        if window_radii is not None and len(window_radii) != len(sizes_of_interest):
            raise ValueError(f"window_radii needs one radius per level ({len(sizes_of_interest)}), got {window_radii}")
        self.window_radii = window_radii

    def forward(self, mask_features: Tensor, params: Tensor, locations: Tensor, levels: Tensor,
                image_index: Tensor) -> Tensor:
        """Mask logits of ``n`` instances.

        Args:
            mask_features: ``[B, C, Hf, Wf]`` at ``feature_stride``.
            params: ``[n, num_params]`` dynamic parameters, one row per instance.
            locations: ``[n, 2]`` (x, y) image coordinates of the FCOS locations that emitted them.
            levels: ``[n]`` int64 pyramid level of each location.
            image_index: ``[n]`` int64 image of each instance in the batch.

        Returns:
            ``[n, Hf * f, Wf * f]`` logits with ``f = feature_stride / out_stride``.
        """
        height, width = mask_features.shape[-2:]
        n = params.shape[0]
        if self.window_radii is None:
            logits = self.layer_outputs(mask_features, params, locations, levels, image_index)[-1]
        else:
            logits = self._windowed_logits(mask_features, params, locations, levels, image_index)
        logits = logits.reshape(n, 1, height, width)
        factor = self.feature_stride // self.out_stride
        if factor > 1 and n > 0:
            logits = F.interpolate(logits, scale_factor=factor, mode="bilinear", align_corners=False)
        return logits.reshape(n, height * factor, width * factor)

    def layer_outputs(self, mask_features: Tensor, params: Tensor, locations: Tensor, levels: Tensor,
                      image_index: Tensor) -> list[Tensor]:
        """Every layer's output before its activation, ``[n, out, Hf * Wf]`` each, at ``feature_stride``
        (same arguments as :meth:`forward`); the last one holds the logits before upsampling. Lets a
        diagnosis see which hidden units are ever active."""
        batch, channels, height, width = mask_features.shape
        weights, biases = self._split(params)

        ys = torch.arange(height, device=params.device, dtype=params.dtype) * self.feature_stride
        xs = torch.arange(width, device=params.device, dtype=params.dtype) * self.feature_stride
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        cells = torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)]) + self.feature_stride / 2  # [2, HW]

        # First layer, split so that the [n, 2, HW] relative-coordinate tensor is never built:
        # W_c @ ((loc - cell) / soi) = (W_c / soi) @ loc - (W_c / soi) @ cell.
        coord_weights = weights[0][:, :, :RELATIVE_COORDINATES] / self.sizes_of_interest[levels][:, None, None]
        feature_weights = weights[0][:, :, RELATIVE_COORDINATES:]
        bias = biases[0] + torch.bmm(coord_weights, locations[:, :, None].to(params.dtype))
        features = mask_features.reshape(batch, channels, height * width)[image_index]
        outputs = [torch.baddbmm(bias, feature_weights, features) - torch.matmul(coord_weights, cells)]
        for weight, bias in zip(weights[1:], biases[1:]):
            outputs.append(torch.baddbmm(bias, weight, F.leaky_relu(outputs[-1], self.negative_slope)))
        return outputs

    def _windowed_logits(self, mask_features: Tensor, params: Tensor, locations: Tensor, levels: Tensor,
                         image_index: Tensor) -> Tensor:
        """``[n, 1, Hf * Wf]`` logits at ``feature_stride``: each instance's MLP on its window only."""
        height, width = mask_features.shape[-2:]
        stride = self.feature_stride
        logits = params.new_full((params.shape[0], height, width), OUTSIDE_WINDOW_LOGIT)
        for level in torch.unique(levels).tolist():
            members = torch.nonzero(levels == level).squeeze(1)
            radius = self.window_radii[level]
            rows = _window_cells(locations[members, 1], radius, stride, height)  # [m, Ky]
            cols = _window_cells(locations[members, 0], radius, stride, width)  # [m, Kx]
            # [m, Ky, Kx, C] -> [m, C, Ky * Kx]: the features of each instance's window, nothing else copied.
            features = mask_features[image_index[members, None, None], :, rows[:, :, None], cols[:, None, :]]
            features = features.flatten(1, 2).transpose(1, 2)
            cells_y = (rows[:, :, None] * stride + stride / 2).expand(-1, -1, cols.shape[1])
            cells_x = (cols[:, None, :] * stride + stride / 2).expand(-1, rows.shape[1], -1)
            cells = torch.stack([cells_x.flatten(1), cells_y.flatten(1)], dim=1).to(params.dtype)  # [m, 2, K]
            offsets = (locations[members, :, None].to(params.dtype) - cells) / self.sizes_of_interest[level]
            x = torch.cat([offsets, features.to(params.dtype)], dim=1)
            weights, biases = self._split(params[members])
            for layer, (weight, bias) in enumerate(zip(weights, biases)):
                if layer:
                    x = F.leaky_relu(x, self.negative_slope)
                x = torch.baddbmm(bias, weight, x)
            logits[members[:, None, None], rows[:, :, None], cols[:, None, :]] = x.reshape(
                len(members), rows.shape[1], cols.shape[1])
        return logits.reshape(-1, 1, height * width)

    def _split(self, params: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """``[n, P]`` -> per layer weights ``[n, out, in]`` and biases ``[n, out, 1]``."""
        if params.shape[1] != self.num_params:
            raise ValueError(f"dynamic mask head expects {self.num_params} parameters, got {params.shape[1]}")
        sizes = [size for out, width in self.shapes for size in (out * width, out)]
        pieces = torch.split(params, sizes, dim=1)
        n = params.shape[0]
        weights = [pieces[2 * i].reshape(n, out, width) for i, (out, width) in enumerate(self.shapes)]
        biases = [pieces[2 * i + 1].reshape(n, out, 1) for i, (out, _) in enumerate(self.shapes)]
        return weights, biases


def _window_cells(centres: Tensor, radius: float, stride: int, size: int) -> Tensor:
    """``[m, K]`` indices of the cells along one axis whose centre lies within ``radius`` pixels of each of
    ``centres [m]``: ``K`` consecutive cells, the window moved inside ``0..size-1`` (all of them when ``K``
    reaches ``size``)."""
    count = min(size, 2 * math.ceil(radius / stride) + 1) if math.isfinite(radius) else size
    first = torch.ceil((centres - radius) / stride - 0.5).long()  # the first cell whose centre is >= c - r
    first = first.clamp(0, size - count)
    return first[:, None] + torch.arange(count, device=centres.device)


def sample_mask_logits(logits: Tensor, points: Tensor, stride: int) -> Tensor:
    """Bilinear samples of mask logits at continuous image coordinates.

    With ``align_corners=False`` the map spans ``Wm * stride`` image pixels, so x maps to
    ``2 x / (Wm * stride) - 1``; points nearer the border than half a cell take the border value.

    Args:
        logits: ``[n, Hm, Wm]``, cell ``i`` covering image ``[stride*i, stride*(i+1))``.
        points: ``[n, P, 2]`` (x, y) continuous image coordinates (pixel centres are ``index + 0.5``).
        stride: the stride of ``logits``.

    Returns:
        ``[n, P]`` logits.
    """
    height, width = logits.shape[-2:]
    scale = points.new_tensor([width * stride, height * stride])
    grid = (points / scale * 2 - 1).to(logits.dtype)
    samples = F.grid_sample(logits[:, None], grid[:, None], mode="bilinear", padding_mode="border",
                            align_corners=False)
    return samples[:, 0, 0, :]
