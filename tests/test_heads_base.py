"""Tests of dynamic_atss.detection.heads.base: the family spec's shared checks, head building and the shared parts
(towers, weight init, `Scale`, `connected`)."""

from __future__ import annotations

import math

import pytest
import torch

from dynamic_atss.config import HeadConfig, LossConfig, ModelConfig
from dynamic_atss.detection.heads import FAMILIES, build_head
from dynamic_atss.detection.heads.base import Scale, Variant, connected, conv_gn_tower, init_head_weights
from dynamic_atss.ops.dcn import ModulatedDeformConv2d


def test_build_head_names_an_unknown_kind_and_the_known_ones():
    config = ModelConfig(head=HeadConfig(kind="atss"))
    config.head.kind = "yolo"
    with pytest.raises(ValueError, match=r"head.kind='yolo' is not a known head family; known: \['atss', 'gfl', .*'vfnet'\]"):
        build_head(config)


def test_family_check_names_the_setting_and_the_fix():
    gfl, vfnet = FAMILIES["gfl"], FAMILIES["vfnet"]
    with pytest.raises(ValueError, match=r"loss.cls_loss='focal' is not available for head.kind='gfl'; use 'qfl'"):
        gfl.check(ModelConfig(head=HeadConfig(kind="gfl"), loss=LossConfig(cls_loss="focal")))
    with pytest.raises(ValueError, match=r"head.dgqp=True has no effect with head.kind='vfnet': .* the 'gfl' head"):
        vfnet.check(ModelConfig(head=HeadConfig(kind="vfnet", options={"dgqp": True}), loss=LossConfig(cls_loss="vfl")))
    options = gfl.check(ModelConfig(head=HeadConfig(kind="gfl", options={"dgqp": True}), loss=LossConfig(cls_loss="qfl")))
    assert isinstance(options, gfl.options) and options.dgqp and options.reg_max == 16  # allowed, defaults filled


def test_variant_named_puts_dynamic_first_and_reads_dcn_from_the_backbone_token():
    plain = Variant.named("gflv2", "r101_dcn", combined_ious=False, doc="d", dgqp=True)
    assert (plain.name, plain.trunk, plain.dcn, plain.combined_ious, plain.options) == (
        "gflv2_r101_dcn", "r101", True, False, {"dgqp": True})
    dynamic = Variant.named("atss", "r50", combined_ious=True, doc="")
    assert (dynamic.name, dynamic.trunk, dynamic.dcn) == ("dynamic_atss_r50", "r50", False)


def test_tower_layout_is_conv_gn_relu_with_dcn_only_last():
    config = HeadConfig(channels=16, num_convs=3, num_groups=4, conv_bias=False, dcn_last_conv=True)
    tower = conv_gn_tower(config, in_channels=8)
    assert len(tower) == 9
    kinds = [type(m).__name__ for m in tower]
    assert kinds == ["Conv2d", "GroupNorm", "ReLU", "Conv2d", "GroupNorm", "ReLU",
                     "ModulatedDeformConv2d", "GroupNorm", "ReLU"]
    assert tower[0].in_channels == 8 and tower[3].in_channels == 16 and tower[0].bias is None
    assert tower[1].num_groups == 4
    assert tower(torch.randn(2, 8, 10, 12)).shape == (2, 16, 10, 12)


def test_init_sets_the_prior_bias_and_skips_the_dcn_offset_convs():
    head = torch.nn.Module()
    head.tower = conv_gn_tower(HeadConfig(channels=8, num_convs=2, num_groups=2, dcn_last_conv=True), 8)
    head.cls_logits = torch.nn.Conv2d(8, 3, 3, padding=1)
    for p in head.parameters():
        torch.nn.init.constant_(p, 0.5)
    init_head_weights(head, prior_prob=0.01)
    torch.testing.assert_close(head.cls_logits.bias, torch.full((3,), -math.log(0.99 / 0.01)))
    assert float(head.tower[0].weight.detach().std()) == pytest.approx(0.01, rel=0.3)
    assert torch.equal(head.tower[0].bias, torch.zeros(8))
    dcn = head.tower[3]
    assert isinstance(dcn, ModulatedDeformConv2d)
    assert torch.equal(dcn.conv_offset.weight, torch.full_like(dcn.conv_offset.weight, 0.5))  # left alone


def test_scale_and_connected():
    scale = Scale(2.0)
    x = torch.ones(3)
    assert torch.equal(scale(x), torch.full((3,), 2.0)) and scale.scale.requires_grad
    out = torch.randn(4, requires_grad=True)
    loss = connected(torch.tensor(1.5), out)
    assert float(loss.detach()) == 1.5
    loss.backward()
    assert out.grad is not None and torch.equal(out.grad, torch.zeros(4))


def test_a_one_value_group_norm_map_works_in_eval_and_train(tiny_kwargs):
    """Issue 23, item 7: one channel per group (head.num_groups == head.channels) and a 1x1 P7 (an input of at most
    128 px) raised torch's "Expected more than 1 value per channel when training" in eval mode. The lone value
    normalises to 0: the GroupNorm gives its bias."""
    import dynamic_atss as da

    kwargs = {**tiny_kwargs, "head.channels": 8, "head.num_groups": 8, "fpn_channels": 8, "min_size": 64,
              "max_size": 96}
    model = da.create("r50", num_classes=3, **kwargs).eval()
    with torch.no_grad():
        raw = model.forward_raw(torch.rand(1, 3, 64, 64))
        assert raw[0][-1].shape[-2:] == (1, 1)
        detections = model([torch.rand(3, 64, 64)])
    assert len(detections) == 1 and torch.isfinite(raw[0][-1]).all()
    from dynamic_atss.detection.heads.base import GroupNorm

    norm = GroupNorm(4, 4)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
    x = torch.randn(1, 4, 1, 1, requires_grad=True)
    out = norm(x)
    torch.testing.assert_close(out, norm.bias.detach().view(1, 4, 1, 1).expand_as(out))
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    y = torch.randn(2, 4, 3, 3)  # any other shape: nn.GroupNorm's result
    torch.testing.assert_close(norm(y), torch.nn.functional.group_norm(y, 4, norm.weight, norm.bias, norm.eps))
    model.train()
    target = {"boxes": torch.tensor([[4.0, 4.0, 60.0, 60.0]]), "labels": torch.tensor([1])}
    losses = model([torch.rand(3, 64, 64)], [target])
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize(("name", "key", "value", "owner"), [
    ("r50", "head.reg_max", 8, "'gfl'"), ("r50", "head.assign_boxes", "initial", "'vfnet'"),
    ("gfl_r50", "head.quality", "centerness", "'atss'"), ("vfnet_r50", "loss.dfl_weight", 1.0, "'gfl'"),
    ("gfl_r50", "loss.vfl_alpha", 0.5, "'atss' / 'vfnet'"),
])
def test_another_familys_option_is_refused_naming_its_family(tiny_kwargs, name, key, value, owner):
    """Issue 23: each family names its own options; one of another family was silently ignored."""
    import dynamic_atss as da

    # (a family added later that shares the option is named after these: the pattern allows more owners)
    expected = rf"{key}={value!r} has no effect with head.kind=.*option of the {owner}( / '\w+')* head family"
    with pytest.raises(ValueError, match=expected):
        da.create(name, num_classes=3, **tiny_kwargs, **{key: value})


def test_each_family_owns_its_options_and_the_shared_sections_hold_none():
    """Issue 23: a family's options are a dataclass in its module (named by its `HeadFamily`), not fields of the
    shared `HeadConfig` / `LossConfig`; their dotted keys are those users set (`head.reg_max`, `loss.dfl_weight`)."""
    import dataclasses

    from dynamic_atss.config import family_option_rows, option_key
    from dynamic_atss.detection.heads import atss, gfl, vfnet

    assert (FAMILIES["atss"].options, FAMILIES["gfl"].options, FAMILIES["vfnet"].options) == (
        atss.ATSSOptions, gfl.GFLOptions, vfnet.VFNetOptions)
    keys = {option_key(f) for kind in ("atss", "gfl", "vfnet") for f in dataclasses.fields(FAMILIES[kind].options)}
    expected = {"head.reg_max", "head.dgqp", "head.dgqp_topk", "head.dgqp_hidden", "head.quality", "head.assign_boxes",
                "loss.dfl_weight", "loss.box_init_weight", "loss.focal_alpha", "loss.focal_gamma", "loss.vfl_alpha",
                "loss.quality_weight"}
    assert keys == expected
    for key in keys:
        section, name = key.split(".")
        assert not hasattr(getattr(ModelConfig(), section), name), key
    assert expected <= {row[0] for row in family_option_rows()}