"""Tests of dynamic_atss.hub.serialization."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import dynamic_atss
from dynamic_atss import DynamicATSS
from dynamic_atss.hub import ConfigFormatError, StateDictMismatchError

from helpers_hub import tiny_model


def test_load_time_overrides(tmp_path):
    tiny_model().save_pretrained(tmp_path / "m")
    loaded = dynamic_atss.create(f"local-dir:{tmp_path / 'm'}", min_size=80, **{"test.score_thresh": 0.3,
                                                                                 "assigner.pred_weight": "up"})
    assert loaded.config.min_size == 80 and loaded.config.test.score_thresh == 0.3
    assert loaded.config.assigner.pred_weight == "up"
    with pytest.raises(ValueError, match=r"cannot override \['head.channels: checkpoint 32, requested 64'\]"):
        dynamic_atss.create(f"local-dir:{tmp_path / 'm'}", **{"head.channels": 64})
    # fields that restate the checkpoint's values are accepted (a recipe written for this architecture)
    same = dynamic_atss.create(f"local-dir:{tmp_path / 'm'}", backbone="test_resnet", **{"head.channels": 32,
                                                                                         "fpn_channels": "32"})
    assert same.config.head.channels == 32
    with pytest.raises(FileNotFoundError, match="no such folder"):
        dynamic_atss.create(f"local-dir:{tmp_path / 'missing'}")


def test_other_num_classes_reinitialises_only_the_classifier(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "m")
    with pytest.warns(UserWarning, match=r"num_classes=7 differs from the checkpoint's 3.*head\.cls_logits"):
        tuned = DynamicATSS.from_pretrained(tmp_path / "m", num_classes=7)
    assert tuned.config.num_classes == 7 and tuned.config.class_names is None
    old, new = model.state_dict(), tuned.state_dict()
    assert set(old) == set(new)
    for key in old:
        if key.startswith("head.cls_logits."):
            continue
        assert torch.equal(old[key], new[key]), key
    assert new["head.cls_logits.weight"].shape == (7, 32, 3, 3)
    assert new["head.cls_logits.weight"].std().item() == pytest.approx(0.01, rel=0.2)
    assert torch.allclose(new["head.cls_logits.bias"], torch.full((7,), -math.log(99.0)))
    with torch.no_grad():
        assert tuned.forward_raw(torch.randn(1, 3, 64, 64))[0][0].shape[1] == 7
    with pytest.warns(UserWarning, match="cls_logits"):
        named = DynamicATSS.from_pretrained(tmp_path / "m", num_classes=2, class_names=["a", "b"])
    assert named.config.class_names == ["a", "b"]


def _tamper(folder: Path, edit) -> None:
    tensors = load_file(str(folder / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "model.safetensors"))


def test_missing_unexpected_and_misshaped_tensors_are_named(tmp_path):
    tiny_model().save_pretrained(tmp_path / "m")
    for name, edit, pattern in [
        ("missing", lambda t: t.pop("head.bbox_pred.bias"), r"1 missing tensor\(s\): head\.bbox_pred\.bias"),
        ("shape", lambda t: t.update({"fpn.fpn.extra_blocks.p6.weight": torch.zeros(32, 32, 1, 1)}),
         r"fpn\.fpn\.extra_blocks\.p6\.weight: checkpoint \(32, 32, 1, 1\), model \(32, 32, 3, 3\)"),
        ("unexpected", lambda t: t.update({"head.extra.weight": torch.zeros(2)}),
         r"unexpected tensor\(s\): head\.extra\.weight"),
    ]:
        folder = tmp_path / name
        shutil.copytree(tmp_path / "m", folder)
        _tamper(folder, edit)
        with pytest.raises(StateDictMismatchError, match=pattern):
            dynamic_atss.create(f"local-dir:{folder}")
    # other num_classes does not excuse other problems
    with pytest.raises(StateDictMismatchError, match=r"head\.bbox_pred\.bias"):
        dynamic_atss.create(f"local-dir:{tmp_path / 'missing'}", num_classes=5)


def test_config_json_errors(tmp_path):
    tiny_model().save_pretrained(tmp_path / "m")
    original = json.loads((tmp_path / "m" / "config.json").read_text())
    cases = [
        ("unknown_top", lambda d: d.update(extra=1), r"unknown top-level field\(s\) \['extra'\]"),
        ("unknown_model", lambda d: d["model"]["head"].update(width=3), r"config\.head: unknown field\(s\) \['width'\]"),
        ("architecture", lambda d: d.update(architecture="RetinaNet"), r"architecture is 'RetinaNet', expected 'DynamicATSS'"),
        ("newer", lambda d: d.update(format_version=3), r"format_version 3 was written by a newer dynamic-atss"),
    ]
    for name, edit, pattern in cases:
        folder = tmp_path / name
        shutil.copytree(tmp_path / "m", folder)
        document = json.loads(json.dumps(original))
        edit(document)
        (folder / "config.json").write_text(json.dumps(document))
        with pytest.raises(ConfigFormatError, match=pattern):
            dynamic_atss.create(f"local-dir:{folder}")


def test_format_errors_are_user_input_errors_with_their_builtin_base():
    """Issue 23, item 7: the command line turns them into exit 2 and one line; callers' `except ValueError` /
    `except RuntimeError` still catch them."""
    from dynamic_atss.errors import UserInputError

    assert issubclass(ConfigFormatError, UserInputError) and issubclass(ConfigFormatError, ValueError)
    assert issubclass(StateDictMismatchError, UserInputError) and issubclass(StateDictMismatchError, RuntimeError)


@pytest.mark.parametrize("name", ["gflv2", "atss_mmdet", "vfnet"])
def test_version_1_folder_resaves_in_version_2_with_the_family_options_in_head(tmp_path, name):
    """Issue 23: a head family owns its options; config.json (format_version 2) keeps them in `model.head.options`
    (those away from their defaults), no longer flat in `head` / `loss` (format_version 1, still read)."""
    from dynamic_atss.hub.serialization import FORMAT_VERSION

    source = Path(__file__).parent / "fixtures" / "saved_models" / name
    old = json.loads((source / "config.json").read_text())
    assert old["format_version"] == 1 and "options" not in old["model"]["head"]
    model = dynamic_atss.create(source).eval()
    model.save_pretrained(tmp_path / "v2")
    new = json.loads((tmp_path / "v2" / "config.json").read_text())
    assert new["format_version"] == FORMAT_VERSION == 2
    head, loss = new["model"]["head"], new["model"]["loss"]
    assert set(head) == {"kind", "channels", "num_convs", "num_groups", "conv_bias", "dcn_last_conv", "prior_prob",
                         "options"}
    assert set(loss) == {"cls_loss", "box_weight"}
    expected_options = {"gflv2": {"dgqp": True}, "atss_mmdet": {"quality": "centerness"}, "vfnet": {}}[name]
    assert head["options"] == expected_options
    for section in ("head", "loss"):  # every value the old file held is what the new model computes with
        for key, value in old["model"][section].items():
            if key in new["model"][section]:
                assert new["model"][section][key] == value, key
            elif hasattr(model.head.options, key):
                assert getattr(model.head.options, key) == value, key
    reloaded = dynamic_atss.create(tmp_path / "v2").eval()
    assert reloaded.config == model.config
    images = [torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(0))]
    with torch.no_grad():
        for a, b in zip(model.forward_raw(model.preprocess(images)[0]), reloaded.forward_raw(reloaded.preprocess(images)[0])):
            assert all(torch.equal(x, y) for x, y in zip(a, b))
