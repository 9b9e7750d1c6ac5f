"""factory.py: the one door (`create` / `load_model`) for names, tags, folders and Hub repos."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import dynamic_atss as da
from dynamic_atss import factory, registry
from dynamic_atss.registry import NoPretrainedWeightsError
import dynamic_atss
from dynamic_atss import registry

from hub_server import file_server  # noqa: F401  (pytest fixture)
from helpers_url import TAG, assert_same_raw_outputs, point_tag_at, serve_tiny, without_family


def test_constructors_and_names_build_the_same_model(tiny_kwargs):
    torch.manual_seed(0)
    by_name = da.create("dynamic_gflv2_r50", **tiny_kwargs)
    torch.manual_seed(0)
    by_constructor = da.dynamic_gflv2_r50(**tiny_kwargs)
    assert by_name.config == by_constructor.config
    for (name, a), (_, b) in zip(by_name.state_dict().items(), by_constructor.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_constructors_only_name_their_variant(monkeypatch):
    """A constructor hands its name (and tag) to the factory: no loading of its own."""
    calls = []
    monkeypatch.setattr(da.zoo, "create", lambda name, pretrained=False, **kw: calls.append((name, pretrained, kw)))
    da.vfnet_r50(pretrained=True, pretrained_tag="mmdet_coco_1x", num_classes=3)
    da.atss_r50(num_classes=5)
    assert calls == [("vfnet_r50.mmdet_coco_1x", True, {"num_classes": 3}), ("atss_r50", False, {"num_classes": 5})]


def test_overrides_reach_the_config(tiny_kwargs):
    model = da.create("atss_r50", **tiny_kwargs, **{"head.quality": "iou", "assigner.pred_weight": 1.0})
    assert model.config.head.family_options().quality == "iou" and model.config.assigner.pred_weight == 1.0
    assert model.config.anchors.center_offset == 0.0  # the variant's own settings stay


def test_load_model_needs_weights():
    with pytest.raises(NoPretrainedWeightsError, match="no published weights"):
        da.load_model("r50")


def test_folders_and_local_dir_load_through_the_factory(tmp_path, tiny_kwargs):
    model = da.create("r50", **tiny_kwargs).eval()
    model.save_pretrained(tmp_path / "saved")
    for name in (str(tmp_path / "saved"), f"local-dir:{tmp_path / 'saved'}"):
        loaded = da.load_model(name)
        assert loaded.config == model.config
        for key, value in model.state_dict().items():
            assert torch.equal(value, loaded.state_dict()[key]), key


def test_a_file_is_not_a_model_folder(tmp_path):
    (tmp_path / "weights.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="dynamic-atss convert FILE"):
        da.create(str(tmp_path / "weights.pth"))


def test_entry_points_load_through_the_factory():
    """predict / export, the benchmarks, the trainer and the demo import `create` from the factory only."""
    import ast
    from pathlib import Path

    root = Path(factory.__file__).parent
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and any(alias.name == "create" for alias in node.names):
                assert node.module and node.module.endswith("factory") or path.name == "__init__.py", \
                    f"{path.relative_to(root)} imports create from {node.module}"
    assert not hasattr(registry, "create") and not hasattr(registry, "load_pretrained_tag")


def test_path_like_names_in_create(tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        dynamic_atss.create(str(tmp_path / "missing"))
    (tmp_path / "weights.pth").write_bytes(b"")
    with pytest.raises(ValueError, match=r"is a file: give the model folder.*dynamic-atss convert"):
        dynamic_atss.create(str(tmp_path / "weights.pth"))


def test_pretrained_without_weights_explains_what_is_available(monkeypatch):
    # the ATSS weights only (other families' weights are listed too where they are nearer, e.g. VFNet R-101)
    without_family(monkeypatch, "gfl")
    without_family(monkeypatch, "vfnet")
    with pytest.raises(NoPretrainedWeightsError) as caught:
        dynamic_atss.create("dynamic_atss_r101_dcn", pretrained=True)
    message = str(caught.value)
    assert "dynamic_atss_r101_dcn.coco_2x_ms has no published weights yet" in message
    assert message.index("atss_r101.mmdet_coco_1x") < message.index("atss_r50.mmdet_coco_1x")  # nearest first
    assert "41.5 box AP" in message and "plain ATSS, not Dynamic ATSS" in message
    assert registry.FINETUNE_RECIPE in message and "--push-to-hub" in message
    assert Path(registry.FINETUNE_RECIPE).name in os.listdir(Path(__file__).resolve().parents[1] / "configs")
    with pytest.raises(NoPretrainedWeightsError, match="no published weights"):
        dynamic_atss.create("r50", pretrained=True)


def test_benchmark_and_trainer_load_the_tag_through_create(tmp_path, file_server, torch_cache,  # noqa: F811
                                                           scratch_registry):
    from dynamic_atss.benchmark import coco as coco_bench
    from dynamic_atss.engine.config import load_config
    from dynamic_atss.engine.trainer import build_model

    url, _, prefix = serve_tiny(file_server, tmp_path)
    point_tag_at(url, prefix)
    model, name = coco_bench.load_model(TAG)
    assert name == TAG and model.pretrained_info["url"] == url
    # the fine-tune recipe's model: converted weights, combined-IoU assigner
    recipe = load_config(Path(__file__).resolve().parents[1] / registry.FINETUNE_RECIPE)
    tuned = build_model(recipe, num_classes=3, class_names=["cat", "dog", "bird"])
    assert tuned.config.assigner.pred_weight == 1.0 and tuned.config.assigner.anchor_weight == 1.0
    assert_same_raw_outputs(model, tuned)  # the assignment changes training only
    assert len(file_server.requests) == 1


def test_path_mistakes_are_user_input_errors_with_their_builtin_base(tmp_path):
    """Issue 23, item 7: a missing folder was a plain FileNotFoundError, a file a plain ValueError (exit 1)."""
    from dynamic_atss.errors import UserInputError

    with pytest.raises(UserInputError, match="model folder not found") as caught:
        da.create(str(tmp_path / "missing") + os.sep)
    assert isinstance(caught.value, FileNotFoundError)
    (tmp_path / "weights.pth").write_bytes(b"")
    with pytest.raises(UserInputError, match="is a file: give the model folder") as caught:
        da.create(str(tmp_path / "weights.pth"))
    assert isinstance(caught.value, ValueError)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="missing config.json") as caught:
        da.create(f"local-dir:{tmp_path / 'empty'}")
    assert isinstance(caught.value, FileNotFoundError)


def test_create_returns_train_mode_whether_or_not_pretrained(tmp_path, tiny_kwargs):
    """Issue 23, item 6: `create(name)` gave train mode, `create(folder or tag)` eval mode."""
    model = da.create("r50", num_classes=3, **tiny_kwargs)
    assert model.training
    model.eval().save_pretrained(tmp_path / "m")
    for name in (str(tmp_path / "m"), f"local-dir:{tmp_path / 'm'}"):
        loaded = da.create(name)
        assert loaded.training and all(m.training for m in loaded.modules()), name
    assert da.load_model(str(tmp_path / "m")).training
