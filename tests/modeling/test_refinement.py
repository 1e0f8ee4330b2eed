"""Mask refinement at inference: one mean-field update against a hand computation, a blurred disk sharpened on its
image, and the refinement wired into prediction, export and the config."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from apis.config import ConfigError
from apis.config_loading import load_config
from apis.config_use import check_overrides_used
from apis.modeling.build import build_model
from apis.modeling.condinst import CondInst
from apis.modeling.postprocess import box_colours, paste_masks
from apis.modeling.refinement import (
    VARIANCE_FLOOR,
    ColourCRF,
    build_refinement,
    colour_log_likelihood_ratio,
    grid_colours,
    refine_probabilities,
)


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_one_update_on_three_pixels_matches_a_hand_computation():
    """Pixels 0 and 1 are black, pixel 2 white; radius 1 on a 1 x 3 grid: 0 and 2 have one neighbour (pixel 1),
    pixel 1 has two. Colours over their standard deviation: all 27 values' sd is 127.5, so black 0, white 2, and the
    black-white squared distance over the 3 channels is 12: affinity exp(-12 / 2) between 1 and 2, 1 between 0
    and 1."""
    colours = torch.tensor([[0.0, 0.0, 255.0]] * 3).view(3, 1, 3)
    logits = torch.tensor([[[2.0, -0.5, -2.0]]])
    refined = ColourCRF(iterations=1, weight=4.0, radius=1, colour_sigma=1.0, colour_model_weight=0.0)(logits, colours)
    m = [2 * _sigmoid(u) - 1 for u in (2.0, -0.5, -2.0)]
    edge = math.exp(-6.0)
    expected = [2.0 + 4.0 * m[1], -0.5 + 4.0 / 2 * (m[0] + edge * m[2]), -2.0 + 4.0 * edge * m[1]]
    assert refined[0, 0].tolist() == pytest.approx(expected, abs=1e-4)
    assert expected[1] > 0  # the black pixel the model left out joins its black neighbour; the white one stays out


def test_the_affinities_match_a_loop_over_each_pixels_window():
    """On a 4 x 5 grid with radius 2 (windows that cross every edge), each pixel's affinity with each neighbour,
    in the window's row-by-row order without its centre, equals the formula written out pixel by pixel."""
    crf = ColourCRF(weight=3.0, radius=2, colour_sigma=0.7)
    scaled = torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(0)) * 2
    affinity = crf.affinities(scaled)
    assert affinity.shape == (24, 4, 5)
    for y in range(4):
        for x in range(5):
            offsets = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if (dy, dx) != (0, 0)]
            inside = [0 <= y + dy < 4 and 0 <= x + dx < 5 for dy, dx in offsets]
            expected = [3.0 / sum(inside) * math.exp(-((scaled[:, y, x] - scaled[:, y + dy, x + dx]) ** 2).sum().item()
                                                      / (2 * 0.7 ** 2)) if ok else 0.0
                        for (dy, dx), ok in zip(offsets, inside)]
            assert affinity[:, y, x].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_the_colour_model_matches_a_hand_computation():
    """Two black pixels that are object, two white ones that are not. The 12 colour values (0 or 255) have sd
    127.5 sqrt(12 / 11), so black and white lie d^2 = 4 * 11 / 12 apart per channel; each Gaussian has the floor
    variance 0.05 (its pixels share one colour), so the log-likelihood ratio is +-3 d^2 / (2 * 0.05)."""
    colours = torch.tensor([[0.0, 0.0, 255.0, 255.0]] * 3).view(3, 1, 4)
    ratio = colour_log_likelihood_ratio(torch.tensor([[[1.0, 1.0, 0.0, 0.0]]]), colours / colours.std())
    half = 3 * (4 * 11 / 12) / (2 * VARIANCE_FLOOR)
    assert ratio[0, 0].tolist() == pytest.approx([half, half, -half, -half], rel=1e-4)
    # A map that is all object has no background to model: no colour term.
    assert torch.equal(colour_log_likelihood_ratio(torch.ones(1, 1, 4), colours), torch.zeros(1, 1, 4))
    # Logits of +-6 (probabilities within 0.25 % of 1 and 0) fit nearly the same Gaussians: the refined logits are
    # the model's plus colour_model_weight times that ratio.
    refined = ColourCRF(weight=0.0, colour_model_weight=0.01)(torch.tensor([[[6.0, 6.0, -6.0, -6.0]]]), colours)
    assert refined[0, 0].tolist() == pytest.approx([6 + 0.01 * half, 6 + 0.01 * half, -6 - 0.01 * half,
                                                    -6 - 0.01 * half], rel=2e-3)


def test_nothing_changes_without_weights_and_ruled_out_pixels_stay_out():
    logits = torch.randn(2, 5, 6)
    colours = torch.rand(3, 5, 6) * 255
    assert torch.equal(ColourCRF(weight=0.0, colour_model_weight=0.0)(logits, colours), logits)
    assert torch.allclose(ColourCRF(iterations=0, colour_model_weight=0.0)(logits, colours), logits, atol=1e-4)
    logits[0, :, 0] = -math.inf
    refined = ColourCRF()(logits, colours)
    assert torch.isneginf(refined[0, :, 0]).all() and torch.isfinite(refined[0, :, 1:]).all()
    with pytest.raises(ValueError, match="same grid"):
        ColourCRF()(logits, colours[:, :4])
    with pytest.raises(ValueError, match="radius >= 1"):
        ColourCRF(radius=0)


def _disk_scene(size=40, radius=9.0):
    """A bright disk on a dark, slightly noisy image, and the mask a stride-8 head would draw of it: the disk's
    coverage of 8 x 8 cells upsampled bilinearly (a blob whose 0.5 contour cuts across the disk's edge)."""
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    disk = ((xx - 19.0) ** 2 + (yy - 21.0) ** 2) <= radius ** 2
    generator = torch.Generator().manual_seed(0)
    image = torch.where(disk, 200.0, 30.0)[None].expand(3, -1, -1) + torch.rand(3, size, size, generator=generator) * 20
    coverage = F.avg_pool2d(disk.float()[None, None], 8)
    blurred = F.interpolate(coverage, size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    return disk, image, blurred


def _iou(a, b):
    return float((a & b).sum() / (a | b).sum())


def test_a_blurred_disk_is_sharpened_on_its_image():
    disk, image, blurred = _disk_scene()
    refined = refine_probabilities(ColourCRF(), blurred, image)
    before, after = _iou(blurred > 0.5, disk), _iou(refined > 0.5, disk)
    assert before < 0.9 and after > 0.97 and after > before + 0.05
    # On a flat image there is no edge to follow: the refinement only smooths the blob, never towards a disk.
    flat = refine_probabilities(ColourCRF(), blurred, torch.full_like(image, 90.0))
    assert _iou(flat > 0.5, disk) < after - 0.05


def test_grid_colours_and_box_colours_read_the_pixels_of_the_grid():
    image = np.random.default_rng(0).integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    colours = grid_colours(image, (3, 2), (4, 5))
    expected = torch.from_numpy(image[2:6, 3:8]).permute(2, 0, 1).float()
    assert colours.shape == (3, 4, 5) and torch.equal(colours, expected)
    # The resized image at scale 1 (padded bottom/right): each grid pixel's centre reads the pixel itself.
    padded = torch.zeros(3, 32, 32)
    padded[:, :12, :16] = torch.from_numpy(image).permute(2, 0, 1).float()
    sampled = box_colours(padded, (3.0, 2.0, 8.0, 6.0), (1.0, 1.0), (12, 16))
    assert torch.allclose(sampled, colours)


def test_pasted_masks_follow_the_image_with_refinement():
    disk, image, blurred = _disk_scene(size=32)
    padded = torch.zeros(3, 32, 32)
    padded[:] = image
    logits = torch.logit(F.avg_pool2d(blurred[None, None], 4)[0].clamp(1e-4, 1 - 1e-4))  # [1, 8, 8] at stride 4
    box = torch.tensor([[0.0, 0.0, 32.0, 32.0]])
    raw = paste_masks(logits, 4, box, (1.0, 1.0), (32, 32), 0.5)
    refined = paste_masks(logits, 4, box, (1.0, 1.0), (32, 32), 0.5, padded, ColourCRF())
    assert _iou(refined[0], disk) > _iou(raw[0], disk) + 0.05
    with pytest.raises(ValueError, match="needs the image"):
        paste_masks(logits, 4, box, (1.0, 1.0), (32, 32), 0.5, None, ColourCRF())


def test_the_config_builds_the_refinement_into_both_models_and_refuses_its_keys_when_off():
    tiny = ["model.depth=18", "model.fpn_channels=16", "model.num_classes=2", "model.norm=bn"]
    assert build_model(load_config(None, tiny).model).refinement is None
    on = ["model.refinement.method=colour_crf", "model.refinement.weight=2.5", "model.refinement.radius=2"]
    cfg = load_config(None, [*tiny, *on])
    expected = ColourCRF(weight=2.5, radius=2)
    assert build_refinement(cfg.model.refinement) == expected
    assert isinstance(build_model(cfg.model), CondInst) and build_model(cfg.model).refinement == expected
    rcnn = load_config(None, [*tiny, *on, "model.arch=mask_rcnn"])
    assert build_model(rcnn.model, rcnn.loss).refinement == expected
    check_overrides_used("train", cfg, on)
    with pytest.raises(ConfigError, match="model.refinement.method=colour_crf turns it on"):
        check_overrides_used("train", load_config(None, ["model.refinement.weight=2.5"]),
                             ["model.refinement.weight=2.5"])
    with pytest.raises(ConfigError, match="model.refinement.method"):
        load_config(None, ["model.refinement.method=crf"])
    with pytest.raises(ConfigError, match="model.refinement.colour_sigma"):
        load_config(None, ["model.refinement.colour_sigma=0"])


@pytest.mark.parametrize("arch", ["condinst", "mask_rcnn"])
def test_a_model_predicts_refined_masks_inside_its_boxes(arch):
    torch.manual_seed(0)
    tiny = ["model.depth=18", "model.fpn_channels=16", "model.num_classes=2", "model.norm=bn",
            "model.score_threshold=0.0", "model.refinement.method=colour_crf", f"model.arch={arch}"]
    if arch == "condinst":
        tiny += ["model.mask_branch_channels=16", "model.head_convs=1"]
    cfg = load_config(None, tiny)
    model = build_model(cfg.model, cfg.loss).eval()
    assert model.refinement == ColourCRF()
    images = torch.rand(1, 3, 64, 64) * 255
    found = model.predict(images, [(64, 64)], [(64, 64)])[0]
    assert len(found.boxes) > 0 and found.masks.shape == (len(found.boxes), 64, 64)
    for mask, box in zip(found.masks, found.boxes.tolist()):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if len(xs):
            assert xs.min() >= math.floor(box[0]) and xs.max() < math.ceil(box[2])
            assert ys.min() >= math.floor(box[1]) and ys.max() < math.ceil(box[3])
