"""Winograd F(4x4, 3x3) convolutions (models/winograd.py): equal to `F.conv2d` forward and backward, the module
switch keeps parameters / state dicts / folding, falls back where it must, and the detector's default path with
Winograd gives the direct path's detections, losses and gradients."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

import dynamic_atss as da
from dynamic_atss.models.fold import FoldingConv2d, fold_frozen_batch_norms
from dynamic_atss.models.winograd import (
    WinogradConv2d,
    WinogradFoldingConv2d,
    disable_winograd,
    enable_winograd,
    release_workspace,
    winograd_conv3x3,
    winograd_matrices,
    winograd_weight,
)


def _relative(expected: torch.Tensor, got: torch.Tensor) -> float:
    return float((expected - got).abs().max() / expected.abs().max().clamp(min=1e-12))


def test_matrices_are_lavin_and_grays_f4x4_3x3():
    """The Toom-Cook construction gives the published B^T, G, A^T (Lavin & Gray 2016, section 4.2)."""
    input_t, filter_t, output_t = winograd_matrices()
    assert torch.equal(input_t, torch.tensor([
        [4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=torch.float64))
    torch.testing.assert_close(filter_t, torch.tensor([
        [1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=torch.float64), rtol=0, atol=1e-15)
    assert torch.equal(output_t, torch.tensor([
        [1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], dtype=torch.float64))


SHAPES = [  # (N, C, K, H, W): sides that are and are not multiples of 4, a 1x1 map, several bands
    (1, 16, 24, 16, 16),
    (2, 8, 5, 13, 7),
    (3, 4, 6, 1, 1),
    (2, 32, 40, 37, 50),
    (1, 8, 8, 130, 9),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_forward_equals_conv2d(shape, channels_last):
    n, c, k, h, w = shape
    x = torch.randn(n, c, h, w, dtype=torch.float64).float()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(k, c, 3, 3), torch.randn(k)
    expected = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    with torch.inference_mode():
        got = winograd_conv3x3(x, weight, bias)
        cached = winograd_conv3x3(x, weight, None, transformed_weight=winograd_weight(weight))
    assert got.shape == expected.shape and got.is_contiguous(memory_format=torch.channels_last)
    assert _relative(expected, got.double()) < 1e-5
    assert _relative(expected - bias.double().view(1, -1, 1, 1), cached.double()) < 1e-5


# the last one has too few tiles for its channels: its filter gradient is the direct one
@pytest.mark.parametrize("shape", SHAPES[:4] + [(1, 64, 64, 8, 8)])
def test_backward_equals_conv2d(shape):
    n, c, k, h, w = shape
    x, weight, bias = torch.randn(n, c, h, w), torch.randn(k, c, 3, 3), torch.randn(k)
    grad_out = torch.randn(n, k, h, w)
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    expected = torch.autograd.grad((F.conv2d(*leaves, padding=1) * grad_out).sum(), leaves)
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    got = torch.autograd.grad((winograd_conv3x3(*leaves) * grad_out).sum(), leaves)
    for name, e, g in zip(("input", "weight", "bias"), expected, got):
        assert _relative(e, g) < 1e-4, f"{name} gradient differs"


def test_backward_with_only_some_inputs_needing_gradients():
    x, weight = torch.randn(2, 8, 9, 11), torch.randn(6, 8, 3, 3)
    for needs_x, needs_w in ((True, False), (False, True)):  # a frozen layer; a first layer
        leaves = [t.clone().requires_grad_(needs) for t, needs in ((x, needs_x), (weight, needs_w))]
        wanted = [t for t in leaves if t.requires_grad]
        (expected,) = torch.autograd.grad(F.conv2d(*leaves, padding=1).square().sum(), wanted)
        (got,) = torch.autograd.grad(winograd_conv3x3(*leaves).square().sum(), wanted)
        assert _relative(expected, got) < 1e-4


def test_transforms_made_in_inference_mode_serve_training():
    """The per-(device, dtype) transform matrices are made once; made first under inference_mode, they must still
    be usable where autograd records (a differentiable filter transform)."""
    import dynamic_atss.models.winograd as winograd

    winograd._transforms.cache_clear()
    with torch.inference_mode():
        winograd_conv3x3(torch.randn(1, 4, 8, 8), torch.randn(4, 4, 3, 3))
    weight = torch.randn(4, 4, 3, 3, requires_grad=True)
    (grad,) = torch.autograd.grad(winograd_weight(weight).sum(), [weight])
    assert torch.isfinite(grad).all()


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="weight"):
        winograd_conv3x3(torch.randn(1, 4, 8, 8), torch.randn(4, 5, 3, 3))
    with pytest.raises(ValueError, match="3x3"):
        winograd_weight(torch.randn(4, 4, 5, 5))


def test_concurrent_threads_get_their_own_workspace():
    """Per-thread scratch buffers: two threads convolving at once both get exact results."""
    weight = torch.randn(16, 16, 3, 3)
    inputs = [torch.randn(1, 16, 40 + 4 * i, 36) for i in range(2)]
    errors: list[float] = []

    def work(x):
        for _ in range(5):
            with torch.inference_mode():
                errors.append(_relative(F.conv2d(x, weight, padding=1), winograd_conv3x3(x, weight)))

    threads = [threading.Thread(target=work, args=(x,)) for x in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    release_workspace()
    assert len(errors) == 10 and max(errors) < 1e-5


# ----------------------------------------------------------------------------------------------- the module switch
def _convs() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(16, 16, 3, 1, 1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, 2, 1),  # stride 2: not eligible
        nn.Conv2d(16, 4, 3, 1, 1),  # too few output channels for the thresholds below
        nn.Conv2d(4, 16, 1),  # 1x1: not eligible
    )


def test_enable_switches_only_eligible_convs_and_keeps_state_dicts():
    model = _convs()
    keys = list(model.state_dict())
    x = torch.randn(2, 16, 20, 24)
    with torch.no_grad():
        expected = model(x)
    assert enable_winograd(model, min_in_channels=8, min_out_channels=8) == 1
    assert [type(m) for m in model] == [WinogradConv2d, nn.ReLU, nn.Conv2d, nn.Conv2d, nn.Conv2d]
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
    assert disable_winograd(model) == 1 and type(model[0]) is nn.Conv2d


def test_cached_transform_follows_in_place_weight_updates():
    conv = nn.Conv2d(8, 8, 3, 1, 1)
    enable_winograd(conv, min_in_channels=8, min_out_channels=8)
    x = torch.randn(1, 8, 16, 20)
    with torch.inference_mode():
        conv(x)
    with torch.no_grad():
        conv.weight.mul_(2)  # an optimizer step / load_state_dict changes the weight in place
    with torch.inference_mode():
        torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1), rtol=1e-4, atol=1e-5)


def test_folding_conv_with_winograd_equals_conv_and_frozen_batch_norm():
    conv, bn = nn.Conv2d(8, 8, 3, 1, 1, bias=False), FrozenBatchNorm2d(8)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean"):
            getattr(bn, name).copy_(torch.randn(8))
        bn.running_var.copy_(torch.rand(8) + 0.5)
    reference = nn.Sequential(conv, bn)
    x = torch.randn(1, 8, 18, 14)
    with torch.no_grad():
        expected = reference(x)
    folded = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, bias=False), FrozenBatchNorm2d(8))
    folded.load_state_dict(reference.state_dict())
    assert fold_frozen_batch_norms(folded) == 1 and type(folded[0]) is FoldingConv2d
    assert enable_winograd(folded, min_in_channels=8, min_out_channels=8) == 1
    assert type(folded[0]) is WinogradFoldingConv2d
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), expected, rtol=1e-4, atol=1e-5)


def test_falls_back_to_the_direct_convolution_where_it_must(monkeypatch):
    """bf16 autocast, float64, small maps and export use the direct convolution (the Winograd kernel is never called)."""
    import dynamic_atss.models.winograd as winograd

    conv = nn.Conv2d(8, 8, 3, 1, 1)
    enable_winograd(conv, min_in_channels=8, min_out_channels=8)
    calls = []
    monkeypatch.setattr(winograd, "_convolve", lambda *a: calls.append(1) or F.conv2d(a[0], conv.weight, a[2], padding=1))
    x = torch.randn(1, 8, 16, 20)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(x).dtype == torch.bfloat16
    with torch.no_grad():
        conv.double()(x.double())
        conv.float()
        program = torch.export.export(conv, (x,))
        conv(torch.randn(1, 8, 15, 16))  # a small map: fewer than MIN_PIXELS pixels
    assert calls == []
    assert "aten.conv2d" in str(program.graph) and "as_strided" not in str(program.graph)
    with torch.no_grad():
        conv(x)
    assert calls == [1]


# ----------------------------------------------------------------------------------------------- the detector
WIDE = {"fpn_channels": 128, "head.channels": 128, "head.num_groups": 16, "head.prior_prob": 0.3}


def _wide_model(tiny_kwargs, kind="atss"):
    torch.manual_seed(0)
    return da.create(f"dynamic_{kind}_r50", num_classes=4, **{**tiny_kwargs, **WIDE})


def test_the_detector_enables_winograd_by_default(tiny_kwargs):
    model = _wide_model(tiny_kwargs)
    switched = [name for name, m in model.named_modules() if isinstance(m, WinogradConv2d)]
    assert any(name.startswith("head.") for name in switched) and any(name.startswith("fpn.") for name in switched)


@pytest.mark.parametrize("kind", ["atss", "gfl"])
def test_default_path_equals_the_direct_convolutions(tiny_kwargs, kind, assert_same_detections):
    """Winograd (the default on CPU) gives the direct convolutions' detections: same labels, boxes within 1e-3
    relative, on images of different sizes in one batch."""
    model = _wide_model(tiny_kwargs, kind).eval()
    images = [torch.rand(3, 128, 192), torch.rand(3, 100, 150)]
    with torch.inference_mode():
        fast = model(images)
        disable_winograd(model)
        direct = model(images)
    assert_same_detections(direct, fast)


def test_training_step_with_winograd_equals_direct(tiny_kwargs, train_batch):
    """Same losses and gradients (the combined-IoU assigner sees the same predicted boxes)."""
    model = _wide_model(tiny_kwargs).train()
    images, targets = train_batch

    def step():
        model.zero_grad()
        torch.manual_seed(1)
        losses = model(images, targets)
        sum(losses.values()).backward()
        return losses, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    losses, grads = step()
    disable_winograd(model)
    expected_losses, expected_grads = step()
    for name in expected_losses:
        torch.testing.assert_close(losses[name], expected_losses[name], rtol=1e-4, atol=1e-6)
    assert grads.keys() == expected_grads.keys()
    for name, expected in expected_grads.items():
        assert _relative(expected, grads[name]) < 1e-3, f"gradient of {name} differs"


@pytest.mark.parametrize("counter", ["torch", "unavailable"])
def test_weight_caches_follow_in_place_updates_with_or_without_a_version_counter(monkeypatch, counter):
    """`Tensor._version` (not a documented API) keys the folded-weight and transformed-weight caches; without it
    (`tensor_version` -> None) nothing is cached and the results are still right."""
    import dynamic_atss.models.fold as fold
    import dynamic_atss.models.winograd as winograd

    if counter == "unavailable":
        monkeypatch.setattr(fold, "tensor_version", lambda tensor: None)
        monkeypatch.setattr(winograd, "tensor_version", lambda tensor: None)
    model = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, bias=False), FrozenBatchNorm2d(8))
    fold_frozen_batch_norms(model)
    enable_winograd(model, min_in_channels=8, min_out_channels=8)
    x = torch.randn(1, 8, 16, 20)

    def expected():
        return F.batch_norm(F.conv2d(x, model[0].weight, padding=1), model[1].running_mean, model[1].running_var,
                            model[1].weight, model[1].bias, False, 0.0, model[1].eps)

    with torch.no_grad():
        torch.testing.assert_close(model(x), expected(), rtol=1e-4, atol=1e-5)
        cached = model[0]._winograd_cache[1]
        model(x)
        assert (model[0]._winograd_cache[1] is cached) == (counter == "torch")  # reused only with a counter
        model[0].weight.mul_(-2)
        model[1].running_var.mul_(3)
        torch.testing.assert_close(model(x), expected(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size", [(16, 20), (13, 18)])
def test_output_may_be_modified_in_place_in_training(size):
    """The output is not a view (an in-place ReLU right after the convolution, as in timm's blocks once the
    BatchNorm is folded, must work and give the right gradients)."""
    x = torch.randn(2, 8, *size)
    weight = torch.randn(8, 8, 3, 3)
    leaves = [t.clone().requires_grad_() for t in (x, weight)]
    out = winograd_conv3x3(*leaves)
    assert out._base is None
    got = torch.autograd.grad(torch.relu_(out).square().sum(), leaves)
    leaves = [t.clone().requires_grad_() for t in (x, weight)]
    expected = torch.autograd.grad(torch.relu_(F.conv2d(*leaves, padding=1)).square().sum(), leaves)
    for e, g in zip(expected, got):
        assert _relative(e, g) < 1e-4
