"""Tests of dynamic_atss.zoo."""

from __future__ import annotations

import pytest
import torch

import dynamic_atss as da
from dynamic_atss.ops.dcn import ModulatedDeformConv2d
from dynamic_atss.detection.heads.vfnet import VFNetHead


GFL_NAMES = [f"{family}_{variant}" for family in ("gfl", "dynamic_gfl", "gflv2", "dynamic_gflv2")
             for variant in ("r50", "r101", "r101_dcn", "x101_32x8d", "x101_64x4d")]
GFL_NAMES += ["gfl_x101_32x4d", "gfl_x101_32x4d_dcn_c4"]  # mmdetection's published GFL X-101s


def test_registered_constructors_and_their_defaults():
    assert set(GFL_NAMES) <= set(da.list_models("*gfl*"))
    assert all(callable(getattr(da, name)) for name in GFL_NAMES)  # importable constructors
    with torch.device("meta"):
        model = da.create("dynamic_gflv2_r101_dcn")
    config = model.config
    assert config.head.kind == "gfl" and config.head.family_options().dgqp and config.head.family_options().reg_max == 16
    assert (config.head.family_options().dgqp_topk, config.head.family_options().dgqp_hidden, config.head.conv_bias) == (4, 64, False)
    assert config.backbone.dcn and not config.head.dcn_last_conv
    assert any(isinstance(m, ModulatedDeformConv2d) for m in model.backbone.modules())
    assert config.anchors.center_offset == 0.0 and config.conventions.relu_before_p7 is False
    assert (config.loss.cls_loss, config.loss.box_weight, config.head.family_options().dfl_weight) == ("qfl", 2.0, 0.25)
    assert config.assigner.pred_weight == 1.0
    with torch.device("meta"):
        baseline = da.create("gfl_x101_64x4d")
    assert baseline.config.assigner.pred_weight == 0.0 and not baseline.config.head.family_options().dgqp
    assert baseline.config.backbone.name == "resnext101_64x4d" and baseline.head.dgqp is None


ALL_MODELS = [
    "dynamic_atss_r50", "dynamic_atss_r101", "dynamic_atss_r50_dcn", "dynamic_atss_r101_dcn",
    "dynamic_atss_x101_32x8d", "dynamic_atss_x101_64x4d", "dynamic_atss_x101_32x8d_dcn", "dynamic_atss_x101_64x4d_dcn",
]


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_registered_model_builds(name):
    assert name in da.list_models()
    with torch.device("meta"):  # full-size architectures, no memory or init time
        model = da.create(name)
    n = count(model)
    print(f"{name}: {n:,} parameters")
    assert 30e6 < n < 110e6
    is_dcn = name.endswith("_dcn")
    has_dcn = any(isinstance(m, ModulatedDeformConv2d) for m in model.modules())
    assert has_dcn == is_dcn
    constructor = getattr(da, name)  # the exported constructor builds this very model
    assert name in da.__all__ and constructor.__name__ == name
    with torch.device("meta"):
        assert constructor().config == model.config


def test_r50_state_dict_matches_mmdetection_size():
    with torch.device("meta"):
        model = da.create("r50")
    values = sum(t.numel() for t in model.state_dict().values())
    # mmdetection ATSS R-50: 32,295,322 parameter values + 53,173 buffer values. We differ by the tower
    # conv biases of the authors' code (+2,048) and BN's num_batches_tracked (-53).
    assert abs(values - 32_348_495) / 32_348_495 < 1e-3


VFNET_MODELS = [
    f"{prefix}vfnet_{variant}" for prefix in ("", "dynamic_")
    for variant in ("r50", "r50_dcn", "r101", "r101_dcn", "x101_32x8d", "x101_64x4d")
]


# ---------------------------------------------------------------------------------------------- model
@pytest.mark.parametrize("name", VFNET_MODELS)
def test_every_vfnet_constructor_builds(name):
    assert name in da.list_models("*vfnet*")
    with torch.device("meta"):
        model = da.create(name)
    assert getattr(da, name) is not None  # exported constructor
    assert isinstance(model.head, VFNetHead)
    config = model.config
    assert (config.head.kind, config.head.num_convs, config.head.conv_bias) == ("vfnet", 3, False)
    assert config.assigner.pred_weight == (1.0 if name.startswith("dynamic_") else 0.0)
    assert config.anchors.center_offset == 0.0 and config.conventions.relu_before_p7 is True
    assert config.head.dcn_last_conv == config.backbone.dcn == name.endswith("_dcn")
    has_dcn = any(isinstance(m, ModulatedDeformConv2d) for m in model.modules())
    assert has_dcn == name.endswith("_dcn")
    assert 30e6 < sum(p.numel() for p in model.parameters()) < 110e6
