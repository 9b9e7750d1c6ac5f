"""fuse_for_inference: folded BN / fused ReLU / packed oneDNN convs give the same outputs as the original model."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

import dynamic_atss as da
from dynamic_atss.models.dcn import ModulatedDeformConv2d
from dynamic_atss.models.fuse import (
    FusedConv2d,
    FusedResidualBlock,
    fold_conv_bn,
    fuse_for_inference,
    has_mkldnn_fusion,
    winograd_conv3x3,
    winograd_weight,
)

TINY = {"backbone": "test_resnet", "fpn_channels": 32, "head.channels": 32, "head.num_groups": 8,
        "min_size": 128, "max_size": 192}  # fmt: skip


def randomise_bn(model: nn.Module, generator: torch.Generator) -> int:
    """Non-trivial statistics in every (Frozen)BatchNorm2d (random init leaves them at identity)."""
    count = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (FrozenBatchNorm2d, nn.BatchNorm2d)):
                c = module.running_mean.numel()
                module.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(c, generator=generator) * 0.3)
                module.running_mean.copy_(torch.randn(c, generator=generator) * 0.3)
                module.running_var.copy_(torch.rand(c, generator=generator) * 2 + 0.2)
                count += 1
    return count


def tiny_model(name: str = "r50", **extra) -> nn.Module:
    model = da.create(name, **{**TINY, **extra}).eval()
    generator = torch.Generator().manual_seed(1)
    assert randomise_bn(model, generator) > 10
    with torch.no_grad():  # make the head's outputs depend on the input (random init: nearly constant)
        for module in model.head.modules():
            if isinstance(module, (nn.Conv2d, ModulatedDeformConv2d)) and module.weight.numel() > 0:
                module.weight.normal_(0, 0.05, generator=generator)
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / a.double().abs().max().clamp(min=1e-12))


def assert_raw_close(ref_out, new_out, tol=1e-4):
    for ref_level, new_level in zip(ref_out, new_out, strict=True):
        for ref, new in zip(ref_level, new_level, strict=True):
            assert ref.shape == new.shape
            assert rel_err(ref, new) < tol


@pytest.mark.parametrize(("name", "fused_blocks", "winograd"), [("r50", 4, False), ("r50_dcn", 2, False), ("r50", 4, 32)])
def test_fused_outputs_equal_unfused(name, fused_blocks, winograd, monkeypatch):
    model = tiny_model(name)
    reference = copy.deepcopy(model)
    if winograd:  # the tiny model's convs have 32 channels and small maps: let Winograd take them all
        monkeypatch.setattr(FusedConv2d, "winograd_min_pixels", 1)
    fused = fuse_for_inference(model, winograd=winograd)
    assert fused is model  # in place by default
    winograd_convs = [m for m in fused.modules() if isinstance(m, FusedConv2d) and m.winograd]
    assert (len(winograd_convs) >= 10) == bool(winograd and has_mkldnn_fusion())  # head towers, FPN outputs, ...

    # every BatchNorm of the backbone is gone (folded), and the residual blocks are fused
    assert not any(isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) for m in fused.modules())
    # (BasicBlocks whose last conv is a DCN keep their own forward)
    assert sum(isinstance(m, FusedResidualBlock) for m in fused.modules()) == fused_blocks
    assert any(isinstance(m, FusedConv2d) and m.activation == "relu" for m in fused.modules())
    assert all(not p.requires_grad for p in fused.parameters())

    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 128, 192, generator=generator)
    with torch.inference_mode():
        assert_raw_close(reference.forward_raw(x), fused.forward_raw(x))
        images = [torch.rand(3, 120, 170, generator=generator), torch.rand(3, 96, 128, generator=generator)]
        reference.config.test.score_thresh = fused.config.test.score_thresh = 0.0  # many detections to compare
        expected, got = reference(images), fused(images)
    for exp, out in zip(expected, got, strict=True):
        assert len(exp["scores"]) > 10
        n = min(len(exp["scores"]), len(out["scores"]))  # the last ranks may differ by a near-tie at the cut
        assert abs(len(exp["scores"]) - len(out["scores"])) <= 1
        torch.testing.assert_close(out["scores"][: n - 5], exp["scores"][: n - 5], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out["boxes"][: n - 5], exp["boxes"][: n - 5], rtol=1e-4, atol=1e-3)
        assert torch.equal(out["labels"][: n - 5], exp["labels"][: n - 5])


def test_dcn_bn_folded_into_deformable_conv():
    model = tiny_model("r50_dcn")
    dcns = [m for m in model.backbone.modules() if isinstance(m, ModulatedDeformConv2d)]
    assert dcns and all(m.bias is None for m in dcns)
    fuse_for_inference(model)
    assert all(m.bias is not None for m in dcns)  # BN shift became the DCN's bias


def test_fold_conv_bn_matches_eval_batchnorm_and_frozen_bn():
    generator = torch.Generator().manual_seed(3)
    for bn in (nn.BatchNorm2d(8), FrozenBatchNorm2d(8, eps=1e-3)):
        conv = nn.Conv2d(4, 8, 3, padding=1, bias=True)
        randomise_bn(nn.Sequential(bn), generator)
        block = nn.Sequential(conv, bn).eval()
        x = torch.randn(2, 4, 9, 11, generator=generator)
        with torch.no_grad():
            expected = block(x)
            fold_conv_bn(conv, bn)
            got = conv(x)
        assert rel_err(expected, got) < 1e-5


def test_plain_sequential_conv_bn_relu_with_example_input():
    generator = torch.Generator().manual_seed(4)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 1),
                        nn.BatchNorm2d(8)).eval()
    randomise_bn(net, generator)
    x = torch.randn(1, 3, 20, 24, generator=generator)
    with torch.no_grad():
        expected = net(x)
    fused = fuse_for_inference(copy.deepcopy(net), example_input=x)
    kinds = [type(m).__name__ for m in fused]
    assert kinds == ["FusedConv2d", "Identity", "Identity", "FusedConv2d", "Identity"]
    assert fused[0].activation == "relu" and fused[3].activation == "none"
    with torch.no_grad():
        assert rel_err(expected, fused(x)) < 1e-5


class _ConvUsedTwice(nn.Module):
    """BN input = conv output, but the conv output is ALSO used by functional code the trace cannot see."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_verify_catches_a_pattern_it_does_not_understand():
    generator = torch.Generator().manual_seed(5)
    net = _ConvUsedTwice().eval()
    randomise_bn(net, generator)
    x = torch.randn(1, 3, 8, 8, generator=generator)
    with pytest.raises(RuntimeError, match="changed output"):
        fuse_for_inference(net, example_input=x)


class _AddThenRelu(nn.Module):
    """conv -> bn -> (in-place add) -> relu: the ReLU must not be fused into the conv (it comes after the add)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.bn(self.conv(x))
        y += x
        return self.act(y)


def test_in_place_add_blocks_relu_fusion():
    generator = torch.Generator().manual_seed(6)
    net = _AddThenRelu().eval()
    randomise_bn(net, generator)
    x = torch.randn(1, 4, 8, 8, generator=generator)
    with torch.no_grad():
        expected = net(x.clone())
    fused = fuse_for_inference(net, example_input=x)
    assert isinstance(fused.act, nn.ReLU) and fused.conv.activation == "none"
    with torch.no_grad():
        assert rel_err(expected, fused(x.clone())) < 1e-5


@pytest.mark.skipif(not has_mkldnn_fusion(), reason="no oneDNN fused convolution in this build")
def test_packed_weights_follow_weight_changes_and_shapes():
    generator = torch.Generator().manual_seed(7)
    conv = FusedConv2d(8, 16, 3, padding=1, activation="relu").eval().requires_grad_(False)
    for shape in [(1, 8, 30, 40), (2, 8, 7, 5), (1, 8, 30, 40)]:
        x = torch.randn(*shape, generator=generator)
        with torch.no_grad():
            torch.testing.assert_close(conv(x), F.relu(F.conv2d(x, conv.weight, conv.bias, padding=1)), rtol=1e-4, atol=1e-5)
    assert len(conv._packed) == 2  # one packed weight per input shape
    with torch.no_grad():
        conv.weight.mul_(-1)  # an in-place change must not leave a stale packed weight
        x = torch.randn(1, 8, 30, 40, generator=generator)
        torch.testing.assert_close(conv(x), F.relu(F.conv2d(x, conv.weight, conv.bias, padding=1)), rtol=1e-4, atol=1e-5)
    other = torch.randn(1, 16, 30, 40, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(conv.forward_add_relu(x, other),
                                   F.relu(F.conv2d(x, conv.weight, conv.bias, padding=1) + other), rtol=1e-4, atol=1e-5)


def test_fused_model_falls_back_when_gradients_are_needed():
    model = tiny_model()
    reference = copy.deepcopy(model)
    fuse_for_inference(model)
    x = torch.randn(1, 3, 128, 128, requires_grad=True)
    out = model.forward_raw(x)  # grad enabled and the input requires grad: plain F.conv2d path
    out[0][0].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with torch.no_grad():
        assert_raw_close(reference.forward_raw(x), out)


def test_not_inplace_leaves_the_original_alone():
    model = tiny_model()
    fused = fuse_for_inference(model, inplace=False, channels_last=False)
    assert fused is not model
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in fused.modules())


@pytest.mark.parametrize(("shape", "relu", "chunk_tiles"), [
    ((1, 8, 16, 10, 12), False, 1024), ((2, 5, 7, 9, 11), True, 7), ((3, 16, 4, 1, 1), True, 1),
    ((1, 32, 24, 33, 20), False, 16),
])  # fmt: skip
def test_winograd_conv_equals_direct_convolution(shape, relu, chunk_tiles):
    n, c, k, h, w = shape
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(n, c, h, w, generator=generator)
    weight, bias = torch.randn(k, c, 3, 3, generator=generator), torch.randn(k, generator=generator)
    expected = F.conv2d(x, weight, bias, padding=1)
    expected = expected.clamp_min(0) if relu else expected
    got = winograd_conv3x3(x.contiguous(memory_format=torch.channels_last), winograd_weight(weight), bias, relu,
                           chunk_tiles=chunk_tiles)
    assert got.shape == expected.shape and got.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(expected, got) < 1e-5


def test_winograd_used_only_where_eligible(monkeypatch):
    monkeypatch.setattr(FusedConv2d, "winograd_min_pixels", 64)
    conv = FusedConv2d(16, 16, 3, padding=1, winograd=True).eval().requires_grad_(False)
    strided = FusedConv2d(16, 16, 3, stride=2, padding=1, winograd=True)
    assert conv.winograd and not strided.winograd  # stride 2: direct
    calls = []
    monkeypatch.setattr("dynamic_atss.models.fuse.winograd_conv3x3",
                        lambda *a, **k: calls.append(1) or winograd_conv3x3(*a, **k))
    with torch.no_grad():
        for side in (4, 12):  # 16 pixels: direct; 144: Winograd
            x = torch.randn(1, 16, side, side)
            torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1), rtol=1e-4, atol=1e-5)
    assert len(calls) == (1 if has_mkldnn_fusion() else 0)


def test_a_fused_model_cannot_be_saved_as_a_checkpoint(tmp_path):
    model = fuse_for_inference(tiny_model())
    with pytest.raises(ValueError, match="fused for inference"):
        model.save_pretrained(tmp_path / "fused")
    assert not (tmp_path / "fused" / "model.safetensors").exists()
