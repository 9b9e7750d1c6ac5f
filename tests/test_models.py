import json
import math

import pytest
import torch

import dynamic_atss as da
from dynamic_atss.detection.anchors import AnchorGenerator, BoxCoder
from dynamic_atss.config import AnchorConfig, HeadConfig, ModelConfig, TestConfig, apply_overrides
from dynamic_atss.detection.heads import build_head
from dynamic_atss.ops.dcn import ModulatedDeformConv2d, patch_resnet_dcn

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


def test_frozen_backbone_defaults():
    with torch.device("meta"):
        model = da.create("r50")
    trunk = model.backbone.trunk
    from torchvision.ops.misc import FrozenBatchNorm2d

    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in trunk.modules())
    assert isinstance(trunk.bn1, FrozenBatchNorm2d)
    assert not trunk.conv1.weight.requires_grad
    assert not any(p.requires_grad for p in trunk.layer1.parameters())
    assert all(p.requires_grad for p in trunk.layer2.parameters())
    with torch.device("meta"):
        unfrozen = da.create("r50", **{"backbone.frozen_stages": -1, "backbone.norm": "bn"})
    assert unfrozen.backbone.trunk.conv1.weight.requires_grad
    assert isinstance(unfrozen.backbone.trunk.bn1, torch.nn.BatchNorm2d)


def test_any_timm_backbone(tiny_kwargs):
    model = da.create("r50", **{**tiny_kwargs, "backbone": "test_efficientnet"}).eval()
    cls, _, _ = model.forward_raw(torch.randn(1, 3, 64, 96))
    assert [tuple(c.shape[-2:]) for c in cls] == [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]


def test_forward_raw_shapes(tiny_kwargs):
    model = da.create("r50", num_classes=7, **tiny_kwargs).eval()
    cls, box, quality = model.forward_raw(torch.randn(2, 3, 128, 192))
    for level, stride in enumerate((8, 16, 32, 64, 128)):
        h, w = math.ceil(128 / stride), math.ceil(192 / stride)
        assert cls[level].shape == (2, 7, h, w)
        assert box[level].shape == (2, 4, h, w)
        assert quality[level].shape == (2, 1, h, w)


def test_eval_forward_two_image_sizes(tiny_kwargs):
    model = da.create("r50", num_classes=3, **tiny_kwargs).eval()
    model.config.test.score_thresh = 0.0  # random weights score ~0.01: keep everything
    images = [torch.rand(3, 90, 150), torch.rand(3, 200, 120)]
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for det, image in zip(out, images, strict=True):
        assert set(det) == {"boxes", "scores", "labels"}
        assert 0 < len(det["boxes"]) <= 100
        assert det["labels"].dtype == torch.int64 and det["labels"].max() < 3
        height, width = image.shape[1:]
        assert (det["boxes"][:, 0::2] >= 0).all() and (det["boxes"][:, 0::2] <= width + 1e-3).all()
        assert (det["boxes"][:, 1::2] >= 0).all() and (det["boxes"][:, 1::2] <= height + 1e-3).all()
        # a box beyond the image would have been clipped to it: some must touch the far edges
        assert det["boxes"][:, 2].max() > 0.5 * width


def test_resize_respects_min_and_max_size(tiny_kwargs):
    model = da.create("r50", **tiny_kwargs).eval()
    batch, sizes, original = model.preprocess([torch.rand(3, 100, 1000), torch.rand(3, 64, 64)])
    assert sizes.tolist() == [[19, 192], [128, 128]]  # longer side capped at 192; shorter side to 128
    assert batch.shape == (2, 3, 128, 192) and batch.shape[-1] % 32 == 0
    assert original == [(100, 1000), (64, 64)]


@pytest.mark.parametrize(
    "images, match",
    [
        ([torch.rand(3, 32, 32), torch.rand(1, 32, 32)], "image 1: expected shape"),
        ([torch.rand(3, 32, 32), torch.rand(3, 0, 32)], "image 1: has a zero side"),
        ([torch.zeros(3, 32, 32, dtype=torch.uint8)], r"image 0: .*float"),
        ([], "non-empty"),
    ],
)
def test_bad_images_name_the_index(tiny_kwargs, images, match):
    model = da.create("r50", **tiny_kwargs).eval()
    with pytest.raises(ValueError, match=match):
        model(images)


def test_box_coder_round_trip():
    anchors = torch.tensor([[0.0, 0.0, 64.0, 64.0], [100.0, 50.0, 228.0, 178.0]]).repeat(50, 1)
    xy = torch.rand(100, 2) * 200
    wh = torch.rand(100, 2) * 300 + 1
    boxes = torch.cat([xy, xy + wh], 1)
    coder = BoxCoder()
    torch.testing.assert_close(coder.decode(coder.encode(boxes, anchors), anchors), boxes, atol=1e-4, rtol=1e-5)
    # widths/heights are clamped before exp
    huge = coder.decode(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), anchors[:1])
    assert torch.isfinite(huge).all() and (huge[0, 2] - huge[0, 0]) <= 64 * 1000 / 16 + 1e-3


def test_anchor_grid_convention():
    anchors, counts = AnchorGenerator(AnchorConfig())([(2, 3), (1, 2), (1, 1), (1, 1), (1, 1)], torch.device("cpu"))
    assert counts == [6, 2, 1, 1, 1] and anchors.shape == (11, 4)
    # level 0, stride 8: side 64, centre of cell (0, 1) = (12, 4), row-major over (y, x)
    torch.testing.assert_close(anchors[1], torch.tensor([12 - 32.0, 4 - 32.0, 12 + 32.0, 4 + 32.0]))
    mm, _ = AnchorGenerator(AnchorConfig(center_offset=0.0))([(2, 3), (1, 2), (1, 1), (1, 1), (1, 1)], torch.device("cpu"))
    torch.testing.assert_close(mm[1], torch.tensor([8 - 32.0, -32.0, 8 + 32.0, 32.0]))


def test_dcn_bottleneck_reproduces_plain_resnet():
    import timm

    trunk = timm.create_model("resnet18", features_only=True, out_indices=(2, 3, 4)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference = trunk(x)
        patched = patch_resnet_dcn(trunk)
        assert patched == 6  # two blocks in each of stages 2-4
        for module in trunk.modules():
            if isinstance(module, ModulatedDeformConv2d):
                module.conv_offset.bias[18:] = 40.0  # offsets 0, mask sigmoid(40) = 1
        out = trunk(x)
    for a, b in zip(out, reference, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # The default initialisation is DCNv2's: offsets 0 and mask 0.5, i.e. half the plain conv.
    dcn = ModulatedDeformConv2d(4, 4, bias=False)
    conv = torch.nn.Conv2d(4, 4, 3, padding=1, bias=False)
    conv.weight.data.copy_(dcn.weight.data)
    y = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(dcn(y), 0.5 * conv(y), atol=1e-5, rtol=1e-5)


def test_scores_follow_the_score_convention(tiny_kwargs):
    model = da.create("r50", **tiny_kwargs).eval()
    model.config.test.score_thresh = 0.0
    image = [torch.rand(3, 128, 128)]
    with torch.no_grad():
        sqrt_scores = model(image)[0]["scores"]
        model.config.conventions.score_sqrt = False
        plain_scores = model(image)[0]["scores"]
    torch.testing.assert_close(sqrt_scores[:5] ** 2, plain_scores[:5], rtol=1e-4, atol=1e-6)


def test_config_json_round_trip_and_overrides():
    config = apply_overrides(ModelConfig(), {"head.quality": "centerness", "min_size": (640, 800), "backbone": "resnet101"})
    data = json.loads(json.dumps(config.to_dict()))
    assert ModelConfig.from_dict(data) == config
    assert config.backbone.name == "resnet101" and config.head.quality == "centerness"
    with pytest.raises(ValueError, match="unknown field"):
        ModelConfig.from_dict({**data, "bogus": 1})
    with pytest.raises(ValueError, match="unknown config override"):
        apply_overrides(config, {"head.nope": 1})


def test_head_family_is_a_config_field(tiny_kwargs):
    model = da.create("r50", **tiny_kwargs)
    assert model.config.head.kind == "atss" and model.head.kind == "atss"
    assert ModelConfig.from_dict(json.loads(json.dumps(model.config.to_dict()))).head.kind == "atss"
    assert model.head.output_names == ("cls_logits", "box_deltas", "quality_logits")
    assert len(model.forward_raw(torch.zeros(1, 3, 64, 64))) == len(model.head.output_names)
    with pytest.raises(ValueError, match=r"head.kind='yolo' is not a known head family; known: \['atss'"):
        da.create("r50", **{**tiny_kwargs, "head.kind": "yolo"})
    with pytest.raises(ValueError, match="head.dgqp=True needs box distributions"):
        da.create("r50", **{**tiny_kwargs, "head.dgqp": True})


def test_test_presets(tiny_kwargs):
    model = da.create("r50", **tiny_kwargs)
    assert model.config.test.score_thresh == 0.05 and model.config.test.max_detections == 100
    model.set_test_preset("vis")
    assert model.config.test.score_thresh > 0.05
    with pytest.raises(ValueError, match="unknown test preset"):
        model.set_test_preset("fast")


def test_one_public_preprocessing(tiny_kwargs):
    """`preprocess(normalize=False)` is what graphs that normalise inside get; nothing outside the detector
    calls its private checks (ONNX Runtime and export share the public transform)."""
    import ast
    from pathlib import Path

    model = da.create("r50", **tiny_kwargs).eval()
    images = [torch.rand(3, 70, 90), torch.rand(3, 50, 40)]
    normalised, sizes, original = model.preprocess(images)
    plain, plain_sizes, _ = model.preprocess(images, normalize=False)
    assert torch.equal(sizes, plain_sizes) and original == [(70, 90), (50, 40)]
    for index, (height, width) in enumerate(sizes.tolist()):
        torch.testing.assert_close(normalised[index, :, :height, :width],
                                   model.normalize(plain[index, :, :height, :width]))
    package = Path(da.__file__).parent
    for path in (package / "inference").glob("*.py"):
        private = {node.attr for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Attribute)
                   and node.attr in ("_check_images", "_target_size")}
        assert not private, f"{path.name} calls {private}"


def test_float_images_in_0_255_are_refused_with_the_fix(tiny_kwargs):
    """Issue 18, item 9: `model(images)` with floats in 0..255 used to give wrong boxes silently."""
    model = da.create("r50", num_classes=3, **tiny_kwargs).eval()
    with pytest.raises(ValueError, match=r"image 1: values in \[0, 255\], expected floats in \[0, 1\]; divide 0-255 "
                                         r"images by 255"):
        model([torch.rand(3, 64, 64), torch.full((3, 64, 64), 255.0).index_fill_(1, torch.tensor([0]), 0.0)])
    with pytest.raises(ValueError, match="pass the images unnormalised"):
        model([torch.randn(3, 64, 64) * 2])
    assert len(model([torch.rand(3, 64, 64)])) == 1  # [0, 1] passes
