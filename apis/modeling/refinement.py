"""Mask refinement at inference: the mask head's probabilities sharpened along the image's colour edges.

The mask head draws at stride 4 or 8 and its logits are upsampled bilinearly, so a probability map runs smoothly
across an object's outline while the image's outline is sharp, and objects a few cells wide come out as blobs
(docs/design.md, "Sharp masks"). :class:`ColourCRF` refines them with the image in two ways: a colour model per
mask (GrabCut's idea: the object's and the background's colours, each a Gaussian estimated from the model's own
probabilities inside the box) adds to each pixel's logit how much likelier its colour is under the object's; then
mean-field passes of a local, fully connected CRF with colour affinities (Krähenbühl and Koltun's dense CRF
restricted to a window, binary labels) move each pixel's logit towards the labels its neighbours of similar colour
hold, so labels spread within a region of one colour and stop at a colour edge. It needs no training and works
on any model's masks, on the grid of original-image pixels where the masks are pasted or exported:
:meth:`CondInst.predict <apis.modeling.condinst.CondInst.predict>` and Mask R-CNN's refine their detections'
masks, and the masks a run exports (:mod:`apis.loop.mask_export`) are refined on the stored image.

Shapes: ``logits [K, h, w]`` (``K`` maps on one pixel grid), ``colours [3, h, w]`` RGB in 0..255 at the same
pixels (entry ``[:, i, j]`` is the colour of the pixel whose logits are ``[:, i, j]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from apis.config import RefinementConfig

PROBABILITY_FLOOR = 1e-6  # probabilities are clamped to [floor, 1 - floor] when turned into logits
VARIANCE_FLOOR = 0.05  # of a colour model's Gaussians, in units of the grid's colour variance


@dataclass(frozen=True)
class ColourCRF:
    """A binary CRF on a mask's pixel grid: the model's logits and a colour model as the unary, colour affinities
    between the pixels within ``radius`` as the pairwise term; solved by mean field.

    Colours ``c`` are divided by the standard deviation of the colours of the grid, so that the settings mean the
    same on a faint fluorescence image and on a photograph. The unary is ``u = logits + colour_model_weight * llr``
    where ``llr`` is the log-likelihood ratio of the pixel's colour under two Gaussians (diagonal, variances at
    least ``VARIANCE_FLOOR``) fitted to the grid's colours weighted by ``p = sigmoid(logits)`` (the object) and by
    ``1 - p`` (the background); a map with less than a pixel's weight on either side gets no colour term. The
    pairwise weight of pixels ``i`` and ``j`` is ``w_ij = weight / n_i * exp(-|c_i - c_j|^2 / (2 colour_sigma^2))``
    with ``n_i`` the number of neighbours of ``i`` inside the grid. Each of ``iterations`` updates sets ``q =
    sigmoid(u + sum_j w_ij (2 q_j - 1))``, the exact mean-field update for two labels, from ``q = sigmoid(u)``; the
    result is the logit of the final ``q``.

    A pixel whose neighbours of its colour are mostly object is pulled to object (up to ``+weight`` in logit), one
    whose neighbours differ in colour keeps its unary. ``weight = 0`` and ``colour_model_weight = 0`` change
    nothing. The defaults are those of :class:`apis.config.RefinementConfig`.
    """

    iterations: int = 10
    weight: float = 16.0
    radius: int = 3
    colour_sigma: float = 1.0
    colour_model_weight: float = 1.0

    def __post_init__(self) -> None:
        if (self.iterations < 0 or self.weight < 0 or self.radius < 1 or self.colour_sigma <= 0
                or self.colour_model_weight < 0):
            raise ValueError(f"refinement needs iterations >= 0, weight >= 0, radius >= 1, colour_sigma > 0 and "
                             f"colour_model_weight >= 0, got {self}")

    def __call__(self, logits: Tensor, colours: Tensor) -> Tensor:
        """Refined logits ``[K, h, w]`` of ``logits [K, h, w]`` on the pixels whose colours are ``colours [3, h, w]``
        (logits of -inf, pixels a model rules out, stay -inf)."""
        if logits.ndim != 3 or colours.ndim != 3 or colours.shape[0] != 3 or logits.shape[1:] != colours.shape[1:]:
            raise ValueError(f"refinement needs logits [K, h, w] and colours [3, h, w] on the same grid, got "
                             f"{tuple(logits.shape)} and {tuple(colours.shape)}")
        if logits.shape[0] == 0 or (self.weight == 0 and self.colour_model_weight == 0):
            return logits
        scaled = colours.to(logits.device, torch.float32)
        scaled = scaled / scaled.std().clamp_min(1e-3)
        unary = logits.float()
        if self.colour_model_weight > 0:
            unary = unary + self.colour_model_weight * colour_log_likelihood_ratio(unary.sigmoid(), scaled)
        q = unary.sigmoid()
        if self.weight > 0:
            affinity = self.affinities(scaled)  # [N, h, w]
            for _ in range(self.iterations):
                q = (unary + (affinity * self._neighbours(2 * q - 1)).sum(dim=1)).sigmoid()
        return torch.where(torch.isneginf(unary), unary, torch.logit(q.clamp(PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)))

    def affinities(self, scaled: Tensor) -> Tensor:
        """``[N, h, w]``: ``w_ij`` of each pixel ``i`` with its ``N = (2 radius + 1)^2 - 1`` neighbours ``j`` (in
        :meth:`_neighbours`' order), 0 for a neighbour outside the grid; ``scaled [3, h, w]``: the colours over their
        standard deviation."""
        height, width = scaled.shape[1:]
        inside = self._neighbours(scaled.new_ones(1, height, width))[0]  # [N, h, w]: 1 where j is in the grid
        distance = ((self._neighbours(scaled) - scaled[:, None]) ** 2).sum(dim=0)  # [N, h, w]
        affinity = torch.exp(-distance / (2 * self.colour_sigma ** 2)) * inside
        return self.weight * affinity / inside.sum(dim=0).clamp_min(1)

    def _neighbours(self, maps: Tensor) -> Tensor:
        """``[C, N, h, w]``: for each of ``maps [C, h, w]``, its value at each pixel's ``N`` neighbours (the
        ``(2 radius + 1)^2`` window without its centre, row by row), 0 outside the grid."""
        channels, height, width = maps.shape
        size = 2 * self.radius + 1
        # A strided view of the zero-padded maps instead of F.unfold: the same values bit for bit, while F.unfold's
        # im2col on the small grid of one box was most of an evaluation's time (this runs once per mean-field pass).
        padded = F.pad(maps, (self.radius,) * 4)
        stride_c, stride_y, stride_x = padded.stride()
        windows = padded.as_strided((channels, size, size, height, width),
                                    (stride_c, stride_y, stride_x, stride_y, stride_x)).flatten(1, 2)
        centre = size * size // 2
        return torch.cat([windows[:, :centre], windows[:, centre + 1:]], dim=1)


def colour_log_likelihood_ratio(probabilities: Tensor, colours: Tensor) -> Tensor:
    """``[K, h, w]``: per map of ``probabilities [K, h, w]``, each pixel's log-likelihood ratio of its colour
    (``colours [3, h, w]``) under the object's Gaussian against the background's, both fitted to the grid's colours
    weighted by the probabilities and by their complement; 0 for a map with less than one pixel's weight on a side."""
    flat = colours.reshape(3, -1)  # [3, P]
    ratio, modelled = 0.0, True
    for weights, sign in ((probabilities, 1.0), (1 - probabilities, -1.0)):
        weights = weights.reshape(weights.shape[0], -1)  # [K, P]
        total = weights.sum(dim=1, keepdim=True)  # [K, 1]
        mean = weights @ flat.T / total.clamp_min(1e-6)  # [K, 3]
        variance = (weights @ (flat.T ** 2) / total.clamp_min(1e-6) - mean ** 2).clamp_min(VARIANCE_FLOOR)
        log_density = -0.5 * ((flat.T[None] - mean[:, None]) ** 2 / variance[:, None] + variance[:, None].log())
        ratio = ratio + sign * log_density.sum(dim=2)  # [K, P]
        modelled = modelled & (total >= 1)  # [K, 1]: at least a pixel's weight on this side
    return (ratio * modelled).reshape(probabilities.shape)


def refine_probabilities(refinement: ColourCRF | None, probabilities: Tensor, colours: Tensor
                         ) -> Tensor:
    """``probabilities [h, w]`` refined on the pixels of ``colours [3, h, w]`` (unchanged when ``refinement`` is
    None), as probabilities."""
    if refinement is None:
        return probabilities
    floor = PROBABILITY_FLOOR
    logits = torch.logit(probabilities.float().clamp(floor, 1 - floor))
    return refinement(logits[None], colours)[0].sigmoid()


def grid_colours(image: np.ndarray, origin: tuple[int, int], shape: tuple[int, int]) -> Tensor:
    """``[3, h, w]`` float: the colours of ``image`` (``uint8 [H, W, 3]`` RGB, as stored) on the grid of ``shape
    (h, w)`` whose top-left pixel is ``origin (xs, ys)``, the grid of a prediction set or an exported mask."""
    xs, ys = origin
    height, width = shape
    return torch.from_numpy(np.ascontiguousarray(image[ys:ys + height, xs:xs + width])).permute(2, 0, 1).float()


def build_refinement(cfg: RefinementConfig) -> ColourCRF | None:
    """The refinement ``cfg`` (``cfg.model.refinement``) describes, None for ``method: none``."""
    if cfg.method == "none":
        return None
    return ColourCRF(iterations=cfg.iterations, weight=cfg.weight, radius=cfg.radius, colour_sigma=cfg.colour_sigma,
                     colour_model_weight=cfg.colour_model_weight)
