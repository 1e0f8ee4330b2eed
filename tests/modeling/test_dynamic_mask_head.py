"""Dynamic mask head: parameter count, the batched computation against a per-instance reference, the window."""

import math

import pytest
import torch
import torch.nn.functional as F

from apis.modeling.dynamic_mask_head import (
    LEAKY_SLOPE,
    OUTSIDE_WINDOW_LOGIT,
    DynamicMaskHead,
    fan_in_parameters,
    num_dynamic_params,
    sizes_of_interest,
    window_radii,
)
from apis.modeling.fcos import assign_locations, level_locations
from apis.modeling.mask_losses import box_masks_at_stride


def test_parameter_count_of_the_paper():
    # (8 + 2) * 8 + 8  +  8 * 8 + 8  +  8 * 1 + 1 = 169
    assert num_dynamic_params(8, 8, 3) == 169
    assert num_dynamic_params(8, 16, 2) == (10 * 16 + 16) + (16 + 1)


def test_sizes_of_interest_follow_adelaidet():
    assert sizes_of_interest([0, 64, 128, 256, 512, math.inf]) == [64, 128, 256, 512, 1024]


def reference_logits(mask_features, params, locations, levels, image_index, soi, feature_stride, out_stride,
                     negative_slope=0.0):
    """One instance at a time: concatenate relative coordinates, run three 1x1 convs with F.conv2d."""
    _, channels, height, width = mask_features.shape
    ys = torch.arange(height, dtype=torch.float32) * feature_stride + feature_stride / 2
    xs = torch.arange(width, dtype=torch.float32) * feature_stride + feature_stride / 2
    cell_y, cell_x = torch.meshgrid(ys, xs, indexing="ij")
    outputs = []
    for k in range(params.shape[0]):
        rel_x = (locations[k, 0] - cell_x) / soi[levels[k]]
        rel_y = (locations[k, 1] - cell_y) / soi[levels[k]]
        x = torch.cat([torch.stack([rel_x, rel_y])[None], mask_features[image_index[k]][None]], dim=1)
        p = params[k]
        shapes = [(8, channels + 2), (8, 8), (1, 8)]
        offset = 0
        for layer, (out, inp) in enumerate(shapes):
            weight = p[offset:offset + out * inp].reshape(out, inp, 1, 1)
            offset += out * inp
            bias = p[offset:offset + out]
            offset += out
            x = F.conv2d(x, weight, bias)
            if layer < len(shapes) - 1:
                x = torch.where(x > 0, x, negative_slope * x)
        outputs.append(F.interpolate(x, scale_factor=feature_stride // out_stride, mode="bilinear",
                                     align_corners=False)[0, 0])
    return torch.stack(outputs)


@pytest.mark.parametrize(("activation", "slope"), [("relu", 0.0), ("leaky_relu", LEAKY_SLOPE)])
def test_batched_head_matches_per_instance_reference(activation, slope):
    torch.manual_seed(0)
    soi = [64.0, 128.0, 256.0, 512.0, 1024.0]
    head = DynamicMaskHead(8, 8, 3, soi, feature_stride=8, out_stride=4, activation=activation)
    mask_features = torch.randn(2, 8, 5, 7)
    params = torch.randn(4, 169) * 0.3
    locations = torch.tensor([[12.0, 20.0], [44.0, 4.0], [8.0, 16.0], [40.0, 24.0]])
    levels = torch.tensor([0, 1, 0, 2])
    image_index = torch.tensor([0, 1, 1, 0])
    logits = head(mask_features, params, locations, levels, image_index)
    assert logits.shape == (4, 10, 14)
    expected = reference_logits(mask_features, params, locations, levels, image_index, soi, 8, 4, slope)
    assert torch.allclose(logits, expected, atol=1e-5)
    hidden = head.layer_outputs(mask_features, params, locations, levels, image_index)
    assert [tuple(h.shape) for h in hidden] == [(4, 8, 35), (4, 8, 35), (4, 1, 35)]
    assert torch.allclose(F.interpolate(hidden[-1].reshape(4, 1, 5, 7), scale_factor=2, mode="bilinear",
                                        align_corners=False)[:, 0], logits, atol=1e-6)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_only_leaky_relu_keeps_a_gradient_through_switched_off_units(activation):
    """The trap point supervision fell into (docs/results.md): once the second layer's units are negative
    over the whole image, a ReLU head's output is its last bias and its first layer gets no gradient."""
    torch.manual_seed(0)
    head = DynamicMaskHead(8, 8, 3, [64.0] * 5, feature_stride=8, out_stride=4, activation=activation)
    weights, biases = head._split(torch.randn(1, 169) * 0.3)
    biases[1] -= 100.0  # every layer-2 unit negative everywhere
    params = torch.cat([torch.cat([w.flatten(1), b.flatten(1)], dim=1) for w, b in zip(weights, biases)], dim=1)
    params.requires_grad_(True)
    logits = head(torch.randn(1, 8, 5, 7), params, torch.tensor([[20.0, 20.0]]), torch.tensor([0]),
                  torch.tensor([0]))
    logits.std().backward()
    first_layer_grad = params.grad[0, :head.shapes[0][0] * head.shapes[0][1]]
    if activation == "relu":
        assert float(logits.detach().std()) == 0.0 and not bool(first_layer_grad.any())
    else:
        assert float(logits.detach().std()) > 0.0 and bool(first_layer_grad.abs().sum() > 0)


def test_unknown_activation_is_refused():
    with pytest.raises(ValueError, match="model.dynamic_activation='gelu'.*relu, leaky_relu"):
        DynamicMaskHead(8, 8, 3, [64.0] * 5, feature_stride=8, out_stride=4, activation="gelu")


def test_no_instances():
    head = DynamicMaskHead(8, 8, 3, [64.0] * 5, feature_stride=8, out_stride=4)
    logits = head(torch.randn(1, 8, 3, 4), torch.zeros(0, 169), torch.zeros(0, 2),
                  torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    assert logits.shape == (0, 6, 8)


def test_fan_in_parameters_are_he_initialised_in_the_controller_layout():
    torch.manual_seed(0)
    head = DynamicMaskHead(64, 64, 3, [64.0] * 5, feature_stride=8, out_stride=4)
    params = fan_in_parameters(head.shapes)
    assert params.shape == (head.num_params,)
    weights, biases = head._split(params[None])
    for layer, ((out, width), weight, bias) in enumerate(zip(head.shapes, weights, biases)):
        gain = 1.0 if layer == len(head.shapes) - 1 else 2.0
        assert weight.shape == (1, out, width)
        assert float(weight.std()) == pytest.approx(math.sqrt(gain / width), rel=0.15)
        assert torch.equal(bias, torch.zeros_like(bias))


@pytest.mark.parametrize("init, low, high", [("fan_in", 0.02, math.inf), ("zeros", 0.0, 0.02)])
def test_initial_masks_vary_over_the_image_only_with_fan_in_init(tiny_model, init, low, high):
    """AdelaiDet's zero controller bias makes every initial mask almost constant over the image (the state
    sparse point supervision with SGD did not leave in our CPU runs); the fan-in init does not."""
    torch.manual_seed(0)
    model = tiny_model(norm="frozen_bn", dynamic_init=init)
    images = torch.rand(1, 3, 64, 64) * 255
    outputs = model(images)
    chosen = torch.randperm(outputs.locations.shape[0])[:20]
    logits = model.mask_logits(outputs, torch.zeros(20, dtype=torch.long), chosen)
    spread = float(logits.detach().flatten(1).std(dim=1).median())
    assert low <= spread < high


SIZE_RANGES = [0.0, 64.0, 128.0, 256.0, 512.0, math.inf]
SOI = [64.0, 128.0, 256.0, 512.0, 1024.0]


def test_window_radii_are_the_upper_size_edges_plus_a_cell():
    assert window_radii(SIZE_RANGES, 4) == [68.0, 132.0, 260.0, 516.0, math.inf]


@pytest.mark.parametrize("stride", [8, 4])
def test_windowed_head_is_the_whole_image_head_inside_its_window(stride):
    torch.manual_seed(0)
    height, width = 288 // stride, 384 // stride
    whole = DynamicMaskHead(8, 8, 3, SOI, stride, stride, "leaky_relu")
    windowed = DynamicMaskHead(8, 8, 3, SOI, stride, stride, "leaky_relu", window_radii(SIZE_RANGES, stride))
    mask_features = torch.randn(2, 8, height, width)
    params = torch.randn(7, whole.num_params)
    locations = torch.tensor([[4.0, 4.0], [380.0, 150.0], [200.0, 100.0], [100.0, 280.0], [60.0, 60.0],
                              [190.0, 140.0], [300.0, 20.0]])
    levels = torch.tensor([0, 0, 1, 2, 0, 4, 3])
    image_index = torch.tensor([0, 1, 0, 1, 1, 0, 0])
    expected = whole(mask_features, params, locations, levels, image_index)
    logits = windowed(mask_features, params, locations, levels, image_index)
    inside = logits != OUTSIDE_WINDOW_LOGIT
    assert torch.allclose(logits[inside], expected[inside], atol=1e-4)
    # By hand: the cells whose centre lies within the radius (a square) are all computed...
    ys = torch.arange(height) * stride + stride / 2
    xs = torch.arange(width) * stride + stride / 2
    for k in range(len(levels)):
        radius = window_radii(SIZE_RANGES, stride)[levels[k]]
        near = ((ys[:, None] - locations[k, 1]).abs() <= radius) & ((xs[None, :] - locations[k, 0]).abs() <= radius)
        assert inside[k][near].all()
    # ...a P3 window is 2 * ceil(68 / stride) + 1 cells a side, moved inside the map at the border, and the
    # open-ended top level (P7) reads the whole map.
    side = 2 * math.ceil(68 / stride) + 1
    assert int(inside[0].sum()) == int(inside[1].sum()) == side * side
    assert bool(inside[0, :side, :side].all()) and bool(inside[5].all())


def test_every_box_fcos_assigns_lies_in_the_locations_window():
    """Training loses nothing to the window: the cells of every box a location is assigned are computed."""
    torch.manual_seed(1)
    stride = 4
    height, width = 512, 640
    shapes = [(height // s, width // s) for s in (8, 16, 32, 64, 128)]
    locations, levels = level_locations(shapes, (8, 16, 32, 64, 128), torch.device("cpu"))
    corners = torch.rand(40, 2) * torch.tensor([width - 8.0, height - 8.0])
    sizes = torch.exp(torch.rand(40, 2) * math.log(500.0)) + 4
    boxes = torch.cat([corners, torch.minimum(corners + sizes, torch.tensor([width, height]))], dim=1)
    gt_index, _ = assign_locations(locations, levels, boxes, (8, 16, 32, 64, 128), SIZE_RANGES, 1.5)
    positive = torch.nonzero(gt_index >= 0).squeeze(1)
    assert len(positive) > 50 and len(torch.unique(levels[positive])) >= 3
    head = DynamicMaskHead(8, 8, 3, SOI, stride, stride, "relu", window_radii(SIZE_RANGES, stride))
    logits = head(torch.randn(1, 8, height // stride, width // stride), torch.randn(len(positive), head.num_params),
                  locations[positive], levels[positive], torch.zeros_like(positive))
    in_box = box_masks_at_stride(boxes[gt_index[positive]], height // stride, width // stride, stride)
    assert bool((logits != OUTSIDE_WINDOW_LOGIT)[in_box].all())
