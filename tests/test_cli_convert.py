"""Tests of dynamic_atss.convert.cli."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

import torch

import dynamic_atss
from dynamic_atss import registry
from dynamic_atss.convert import convert_mmdet_atss
import dynamic_atss as da

from hub_server import hub_server  # noqa: F401  (pytest fixture)
from helpers_mmdet import TINY, mmdet_atss_state_dict, assert_all_landed
from helpers_url import TAG, assert_same_raw_outputs, point_tag_at, tiny_checkpoint_bytes
from helpers_vfnet import TINY_VFNET, expected_vfnet_target, mmdet_vfnet_state_dict


def test_convert_script_writes_and_pushes(tmp_path, hub_server):  # noqa: F811
    import importlib.util
    from pathlib import Path

    from dynamic_atss import create

    source = mmdet_atss_state_dict(**TINY, seed=9)
    checkpoint = tmp_path / "atss_tiny_coco.pth"
    torch.save({"state_dict": source, "meta": {"CLASSES": ("a", "b", "c")}}, checkpoint)  # mmdetection 2.x meta
    path = Path(__file__).resolve().parents[1] / "hub" / "convert_mmdet.py"
    spec = importlib.util.spec_from_file_location("hub_script_convert_mmdet", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "out"
    assert script.main([str(checkpoint), "--out", str(out), "--push", "org/converted", "--endpoint",
                        hub_server.endpoint, "--token", "t", "--metrics", '{"AP": 12.5}']) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                     "preprocessor_config.json"]
    card = (out / "README.md").read_text()
    assert "mmdetection" in card and "hf-hub:org/converted" in card
    loaded = create("hf-hub:org/converted", endpoint=hub_server.endpoint, cache_dir=tmp_path / "cache")
    assert loaded.config.class_names == ["a", "b", "c"] and loaded.config.head.num_groups == 32
    assert loaded.pretrained_info["recipe"]["checkpoint"] == "atss_tiny_coco.pth"
    assert_all_landed(loaded, source)


def test_convert_script_tag_is_the_manual_route(tmp_path, scratch_registry, capsys):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "hub" / "convert_mmdet.py"
    spec = importlib.util.spec_from_file_location("hub_script_convert_mmdet_tag", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    checkpoint = tmp_path / "atss_tiny.pth"
    checkpoint.write_bytes(tiny_checkpoint_bytes(tmp_path))
    # the real entry: another file (one line, exit status 2)
    assert script.main([str(checkpoint), "--tag", TAG, "--out", str(tmp_path / "out")]) == 2
    assert "does not start with 985f7bd0" in capsys.readouterr().err
    point_tag_at("https://example.invalid/atss_tiny.pth", hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:8])
    assert script.main([str(checkpoint), "--tag", TAG, "--out", str(tmp_path / "out")]) == 0
    loaded = dynamic_atss.create(str(tmp_path / "out"))
    assert loaded.pretrained_info["metrics"]["AP"] == 39.4
    assert_same_raw_outputs(loaded, convert_mmdet_atss(checkpoint))


def test_convert_script_converts_vfnet_checkpoints(tmp_path, scratch_registry, capsys):  # noqa: F811
    """`dynamic-atss convert` (the manual route the URL loader names) takes any registered family; with `--tag`
    the checkpoint must hold the family of the index entry."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "hub" / "convert_mmdet.py"
    spec = importlib.util.spec_from_file_location("hub_script_convert_mmdet_vfnet", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    source = mmdet_vfnet_state_dict(**TINY_VFNET, seed=5)
    checkpoint = tmp_path / "vfnet_tiny.pth"
    torch.save({"state_dict": source, "meta": {"CLASSES": ("a", "b", "c")}}, checkpoint)
    assert script.main([str(checkpoint), "--out", str(tmp_path / "out")]) == 0
    loaded = da.create(f"local-dir:{tmp_path / 'out'}")
    assert loaded.config.head.kind == "vfnet" and loaded.pretrained_info["recipe"]["checkpoint"] == "vfnet_tiny.pth"
    assert_all_landed(loaded, source, expected_vfnet_target)
    # --tag of an ATSS entry (its hash pointed at this file): the family does not match
    atss = registry.get_pretrained_cfg("atss_r50.mmdet_coco_1x")
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:8]
    registry.register_pretrained(dataclasses.replace(atss, hash_prefix=digest), default=True)
    assert script.main([str(checkpoint), "--tag", "atss_r50.mmdet_coco_1x", "--out", str(tmp_path / "out2")]) == 2
    assert re.search("error: .*vfnet head.*not atss", capsys.readouterr().err)


def test_a_missing_checkpoint_is_one_line(tmp_path):
    from helpers_cli import one_line_error, run_installed

    result = run_installed("convert", "nope.pth", "--out", str(tmp_path / "d"), cwd=tmp_path)
    one_line_error(result, "convert", "nope.pth: no such checkpoint file")
    assert not (tmp_path / "d").exists()
