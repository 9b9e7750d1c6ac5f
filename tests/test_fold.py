"""The default inference path: frozen BatchNorms folded into their convs when no gradient is needed (exact to
float rounding, state dict unchanged, cache invalidated by weight updates), channels_last activations on CPU."""

from __future__ import annotations

import torch
from torchvision.ops.misc import FrozenBatchNorm2d

import dynamic_atss as da
from dynamic_atss.models.fold import FoldableFrozenBatchNorm2d, FoldingConv2d


def _unfold(model):
    """The same model with folding switched off (each BN normalises its input itself)."""
    for module in model.modules():
        if isinstance(module, FoldingConv2d):
            module._bn = None
    return model


def _randomise_bns(model):
    """Non-trivial statistics (timm zero-inits each block's last BN gamma), so that a skipped or doubled BN shows."""
    with torch.no_grad():
        torch.manual_seed(1)
        for bn in model.modules():
            if isinstance(bn, FrozenBatchNorm2d):
                bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 1.5)
    return model


def _flat(raw):
    return [t for level in raw for t in level]


def test_every_backbone_batchnorm_is_folded_and_outputs_match(tiny_kwargs):
    model = da.create("r50", num_classes=3, **tiny_kwargs).eval()
    trunk = model.backbone.trunk
    # all replaced by the foldable kind but the stem's last: timm's deep stem (test_resnet) ends in a Sequential
    assert [name for name, m in trunk.named_modules() if type(m) is FrozenBatchNorm2d] == ["bn1"]
    bns = [m for m in trunk.modules() if isinstance(m, FoldableFrozenBatchNorm2d)]
    convs = [m for m in trunk.modules() if isinstance(m, FoldingConv2d)]
    assert len(bns) == len(convs) > 0
    _randomise_bns(model)
    x = torch.randn(2, 3, 128, 160)
    with torch.no_grad():
        folded = _flat(model.forward_raw(x))
        for bn in bns:
            assert bn._folded_output is None  # every BN passed its conv's output through
        reference = _flat(_unfold(model).forward_raw(x))
    for a, b in zip(reference, folded):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_state_dict_is_unchanged_and_contiguous(tiny_kwargs, tmp_path):
    """Same keys as torchvision's FrozenBatchNorm2d layout; no cache in it; contiguous (safetensors saves it)."""
    from dynamic_atss.hub import save_model_dir

    model = da.create("r50", num_classes=3, **tiny_kwargs).eval()
    with torch.no_grad():
        model.forward_raw(torch.randn(1, 3, 128, 128))  # fills the folded-weight caches
    state = model.state_dict()
    assert not any("folded" in key for key in state)
    assert all(t.is_contiguous() for t in state.values())
    assert {"backbone.trunk.layer1.0.bn1.running_var", "backbone.trunk.layer1.0.conv1.weight"} <= set(state)
    loaded = da.create(f"local-dir:{save_model_dir(model, tmp_path / 'm')}").eval()
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        for a, b in zip(_flat(model.forward_raw(x)), _flat(loaded.forward_raw(x))):
            torch.testing.assert_close(b, a)


def test_folded_weights_follow_in_place_updates(tiny_kwargs):
    """A cached folded weight must not outlive the weights it came from (optimizer steps, load_state_dict)."""
    model = _randomise_bns(da.create("r50", num_classes=3, **tiny_kwargs).eval())
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        before = model.backbone(x)
        block = model.backbone.trunk.layer1[0]
        block.conv1.weight.mul_(2.0)  # in place, like an optimizer step
        block.bn2.running_mean.add_(0.5)
        after = model.backbone(x)
        reference = _unfold(model).backbone(x)
    assert not torch.allclose(before[0], after[0], rtol=1e-3, atol=1e-4)
    for a, b in zip(reference, after):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_training_gradients_are_those_of_the_unfolded_model(tiny_kwargs):
    """In training the frozen stem / stage 1 fold (their outputs need no gradient); gradients are unchanged."""
    images = [torch.rand(3, 128, 128), torch.rand(3, 128, 128)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 70.0, 90.0]]), "labels": torch.tensor([1])}] * 2
    grads = []
    for unfold in (False, True):
        torch.manual_seed(0)
        model = _randomise_bns(da.create("r50", num_classes=3, **tiny_kwargs).train())
        if unfold:
            _unfold(model)
        sum(model(images, targets).values()).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_batchnorm_passes_through_only_its_convs_output():
    bn = FoldableFrozenBatchNorm2d(4)
    bn.running_mean.fill_(1.0)
    conv = FoldingConv2d(4, 4, 1, bias=False)
    conv.attach(bn)
    x, other = torch.randn(1, 4, 5, 5), torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        expected = torch.nn.functional.conv2d(x, conv.weight) - 1.0
        out = conv(x)
        assert bn(out) is out  # already normalised by the folded conv
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
        conv(x)  # a pending pass-through never applies to another tensor
        torch.testing.assert_close(bn(other), other - 1.0, rtol=1e-4, atol=1e-4)


def test_default_inference_runs_channels_last_on_cpu(tiny_kwargs):
    model = da.create("r50", num_classes=3, **tiny_kwargs).eval()
    with torch.no_grad():
        raw = model.forward_raw(torch.randn(1, 3, 128, 128))
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in _flat(raw))
    assert all(p.is_contiguous() for p in model.parameters())  # the parameters keep their layout
