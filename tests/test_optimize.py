"""`optimize_for_inference`: the fused, channels_last (optionally bfloat16) snapshot equals the default path up to
float rounding, owns its weights, leaves the source alone, and is what `predict` runs."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

import dynamic_atss as da
from dynamic_atss.inference import InferenceSnapshot, optimize

from helpers_optimize import _confident, _randomise_bns


def _flat(raw):
    return [t for level in raw for t in level]


def test_snapshot_detections_equal_the_default_paths(tiny_kwargs, assert_same_detections):
    model = _confident("r50", tiny_kwargs)
    snapshot = da.optimize_for_inference(model)
    assert isinstance(snapshot, InferenceSnapshot) and not snapshot.training
    images = [torch.rand(3, 120, 150), torch.rand(3, 96, 128)]
    with torch.no_grad():
        expected, got = model(images), snapshot(images)
    assert_same_detections(expected, got)  # same labels, boxes within 1e-3 relative, scores within 1e-4
    assert all(d["boxes"].dtype == d["scores"].dtype == torch.float32 for d in got)


@pytest.mark.parametrize("name", ["r50", "gflv2_r50", "vfnet_r50_dcn", "dynamic_atss_r50_dcn"])
def test_snapshot_raw_outputs_of_every_family(name, tiny_kwargs):
    """float32: the default path's outputs up to rounding; bfloat16: float32 outputs, close (DCN stays float32)."""
    model = _randomise_bns(da.create(name, num_classes=3, **tiny_kwargs).eval())
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        expected = _flat(model.forward_raw(x))
        fp32 = _flat(da.optimize_for_inference(model).forward_raw(x))
        bf16 = _flat(da.optimize_for_inference(model, torch.bfloat16).forward_raw(x))
    for e, f, b in zip(expected, fp32, bf16, strict=True):
        scale = float(e.abs().max())
        assert float((f - e).abs().max()) <= 1e-4 * scale
        assert b.dtype == torch.float32 and float((b - e).abs().max()) <= 0.1 * scale


def test_snapshot_is_a_fused_channels_last_copy_that_owns_its_weights(tiny_kwargs):
    model = _randomise_bns(da.create("r50", num_classes=3, **tiny_kwargs).eval())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    snapshot = da.optimize_for_inference(model, torch.bfloat16)
    # every backbone BatchNorm fused (timm's deep stem included), none left; the source untouched
    assert not any(isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) for m in snapshot.modules())
    fused = sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    identities = [sum(isinstance(m, nn.Identity) for m in net.modules()) for net in (snapshot.model, model)]
    assert identities[0] - identities[1] == fused > 0
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert model.training is False and all(isinstance(m, FrozenBatchNorm2d) for m in [model.backbone.trunk.bn1])
    # no storage shared with the source
    source_storages = {t.untyped_storage().data_ptr() for t in model.state_dict().values()}
    assert not source_storages & {t.untyped_storage().data_ptr() for t in snapshot.state_dict().values()}
    params = list(snapshot.model.backbone.parameters()) + list(snapshot.model.fpn.parameters()) + list(
        snapshot.model.head.parameters())
    assert all(not p.requires_grad and p.dtype == torch.bfloat16 for p in params)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in params if p.dim() == 4)
    assert snapshot.model.image_mean.dtype == torch.float32  # pre-processing stays float32
    # the configuration is the snapshot's own
    snapshot.set_test_preset("vis")
    assert snapshot.config.test.score_thresh != model.config.test.score_thresh


def test_plain_batch_norms_fuse_with_their_running_statistics(tiny_kwargs):
    """A trainable-BatchNorm backbone (the demo's): fused with its running statistics, as in eval mode."""
    model = _randomise_bns(da.create("r50", num_classes=3, **tiny_kwargs, **{"backbone.norm": "bn",
                                                                           "backbone.frozen_stages": -1}).eval())
    snapshot = da.optimize_for_inference(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in snapshot.modules())
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        for e, g in zip(_flat(model.forward_raw(x)), _flat(snapshot.forward_raw(x)), strict=True):
            assert float((g - e).abs().max()) <= 1e-4 * float(e.abs().max())


def test_only_chained_pairs_are_fused():
    """A BatchNorm is fused only into the conv whose output it alone receives."""
    chain = nn.Sequential(nn.Conv2d(3, 4, 3), FrozenBatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.ReLU(),
                          FrozenBatchNorm2d(4))
    assert optimize.fuse_conv_batch_norms(chain) == 1
    assert [type(m).__name__ for m in chain] == ["Conv2d", "Identity", "ReLU", "Conv2d", "ReLU", "FrozenBatchNorm2d"]


def test_snapshot_refuses_training_and_bad_arguments(tiny_kwargs):
    model = da.create("r50", num_classes=3, **tiny_kwargs)
    snapshot = da.optimize_for_inference(model)
    assert model.training  # the source's mode is left alone
    with pytest.raises(RuntimeError, match="cannot be trained"):
        snapshot.train()
    with pytest.raises(TypeError, match="already a snapshot"):
        da.optimize_for_inference(snapshot)
    with pytest.raises(TypeError, match="dynamic_atss detector"):
        da.optimize_for_inference(nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="torch.bfloat16"):
        da.optimize_for_inference(model, torch.float16)


def test_bfloat16_warns_on_a_cpu_without_it(tiny_kwargs, monkeypatch):
    model = da.create("r50", num_classes=3, **tiny_kwargs)
    monkeypatch.setattr(optimize, "has_native_bfloat16", lambda: False)
    with pytest.warns(UserWarning, match="slower"):
        da.optimize_for_inference(model, torch.bfloat16)
    monkeypatch.setattr(optimize, "has_native_bfloat16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        da.optimize_for_inference(model, torch.bfloat16)
