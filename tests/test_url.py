"""`create("atss_r50.mmdet_coco_1x", pretrained=True)`: public checkpoints by URL, hash-checked, converted, cached.

Nothing leaves the machine: a loopback `FileServer` (tests/hub_server.py) serves a tiny checkpoint written in
mmdetection's layout (tests/test_mmdet.py builds it). The real index entries are never weakened: a test
registers a copy of the entry whose `url` / `hash_prefix` point at the loopback file (a scratch registry), or
sets `DYNAMIC_ATSS_WEIGHTS_MIRROR` so that the real entry is fetched from the loopback server.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import socket
from pathlib import Path

import huggingface_hub
import pytest
import torch
from hub_server import file_server  # noqa: F401  (pytest fixture)
from test_mmdet import TINY, mmdet_atss_state_dict

import dynamic_atss
from dynamic_atss import registry
from dynamic_atss.convert import MIRROR_ENV, WeightsDownloadError, available_converters, checkpoint_path, convert_mmdet_atss
from dynamic_atss.convert import converted_dir
from dynamic_atss.convert import convert_mmdet_state_dict
from dynamic_atss.registry import FamilyNotAvailableError, NoPretrainedWeightsError

TAG = "atss_r50.mmdet_coco_1x"
REAL_URL = ("https://download.openmmlab.com/mmdetection/v2.0/atss/atss_r50_fpn_1x_coco/"
            "atss_r50_fpn_1x_coco_20200209-985f7bd0.pth")


@pytest.fixture
def scratch_registry(monkeypatch):
    monkeypatch.setattr(registry, "_PRETRAINED", dict(registry._PRETRAINED))
    monkeypatch.setattr(registry, "_DEFAULT_TAG", dict(registry._DEFAULT_TAG))


@pytest.fixture
def torch_cache(tmp_path, monkeypatch):
    """An empty torch hub cache (where URL weights go), online."""
    path = tmp_path / "torch-hub"
    monkeypatch.setattr(torch.hub, "_hub_dir", str(path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    return path / "checkpoints"


def tiny_checkpoint_bytes(tmp_path: Path, seed: int = 0) -> bytes:
    """A tiny checkpoint in mmdetection's layout: {"state_dict": ..., "meta": {"CLASSES": ...}} saved by torch."""
    source = mmdet_atss_state_dict(**TINY, seed=seed)
    source["bbox_head.atss_cls.bias"].fill_(-1.0)  # detections above the 0.05 threshold
    path = tmp_path / f"tiny-{seed}.pth"
    meta = {"CLASSES": ("cat", "dog", "bird"), "epoch": 12, "mmdet_version": "2.0.0", "config": "model = dict(...)"}
    # the legacy (pre-zip) format: mmdetection v2.0's 2020 checkpoints were written by torch < 1.6
    torch.save({"state_dict": source, "meta": meta}, path, _use_new_zipfile_serialization=False)
    return path.read_bytes()


def serve_tiny(server, tmp_path: Path, seed: int = 0) -> tuple[str, bytes, str]:
    """Serve a tiny checkpoint under an mmdetection-style name ending in its SHA-256 prefix; -> (url, bytes, hash)."""
    data = tiny_checkpoint_bytes(tmp_path, seed)
    prefix = hashlib.sha256(data).hexdigest()[:8]
    path = f"/mmdetection/v2.0/atss/atss_tiny_fpn_1x_coco/atss_tiny_fpn_1x_coco_2020-{prefix}.pth"
    server.files[path] = data
    return server.url(path), data, prefix


def point_tag_at(url: str, prefix: str, tag: str = TAG) -> None:
    """The test override: the real entry, with the loopback URL and that file's hash (scratch registry only)."""
    real = registry.get_pretrained_cfg(tag)
    registry.register_pretrained(dataclasses.replace(real, url=url, hash_prefix=prefix), default=True)


def assert_same_raw_outputs(a, b) -> None:
    x = torch.randn(1, 3, 128, 192, generator=torch.Generator().manual_seed(0))
    for model in (a, b):  # small inputs keep the test fast (the resize happens inside the model)
        model.config.min_size, model.config.max_size = 128, 192
    with torch.no_grad():
        for level_a, level_b in zip(a.forward_raw(x), b.forward_raw(x)):
            assert all(torch.equal(u, v) for u, v in zip(level_a, level_b))
        image = [torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(1))]
        det_a, det_b = a.eval()(image)[0], b.eval()(image)[0]
    assert len(det_a["boxes"]) > 0
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(det_a[key], det_b[key])


def cache_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# ---------------------------------------------------------------------------------------------- the acceptance path
def test_tag_downloads_converts_caches_and_matches_the_converter(tmp_path, file_server, torch_cache,  # noqa: F811
                                                                 scratch_registry):
    url, data, prefix = serve_tiny(file_server, tmp_path)
    point_tag_at(url, prefix)
    old_umask = os.umask(0o022)
    try:
        model = dynamic_atss.create(TAG, pretrained=True, progress=False)
    finally:
        os.umask(old_umask)
    assert file_server.requests == [url[len(file_server.base_url):]]
    local_copy = tmp_path / "atss_tiny.pth"
    local_copy.write_bytes(data)
    assert_same_raw_outputs(model, convert_mmdet_atss(local_copy))  # same code path as the manual route
    assert model.config.class_names == ["cat", "dog", "bird"] and model.config.assigner.pred_weight == 0
    assert model.pretrained_info["tag"] == TAG and model.pretrained_info["url"] == url

    # the download and its conversion sit next to each other in torch's cache, readable as the umask says
    pth = checkpoint_path(url)
    folder = converted_dir(url)
    assert pth.parent == torch_cache and folder.parent == torch_cache and pth.read_bytes() == data
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "conversion.json",
                                                       "model.safetensors", "preprocessor_config.json"]
    for path in [pth, *folder.iterdir()]:
        assert path.stat().st_mode & 0o777 == 0o644, path
    document = json.loads((folder / "config.json").read_text())
    assert document["metrics"]["AP"] == 39.4 and document["metrics"]["source"] == "mmdetection"
    assert document["recipe"]["url"] == url

    # second call: a cache hit, without the network (offline, server stopped)
    file_server.stop()
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        again = dynamic_atss.create(TAG, pretrained=True)
        assert_same_raw_outputs(model, again)
        # `create("atss_r50", pretrained=True)` is the default tag; num_classes / overrides work as for any weights
        with pytest.warns(UserWarning, match="cls_logits"):
            tuned = dynamic_atss.create("atss_r50", pretrained=True, num_classes=5, **{"assigner.pred_weight": 1.0})
        assert tuned.config.num_classes == 5 and tuned.config.assigner.pred_weight == 1.0
    finally:
        del os.environ["HF_HUB_OFFLINE"]
    assert len(file_server.requests) == 1


def test_force_download_fetches_and_converts_again(tmp_path, file_server, torch_cache, scratch_registry):  # noqa: F811
    url, _, prefix = serve_tiny(file_server, tmp_path)
    point_tag_at(url, prefix)
    first = dynamic_atss.create(TAG, pretrained=True, progress=False)
    marker = converted_dir(url) / "model.safetensors"
    before = marker.stat().st_mtime_ns
    dynamic_atss.create(TAG, pretrained=True, progress=False)
    assert len(file_server.requests) == 1 and marker.stat().st_mtime_ns == before  # cache hit
    second = dynamic_atss.create(TAG, pretrained=True, force_download=True, progress=False)
    assert len(file_server.requests) == 2 and marker.stat().st_mtime_ns != before
    assert_same_raw_outputs(first, second)


def test_a_stale_conversion_is_redone_from_the_cached_checkpoint(tmp_path, file_server, torch_cache,  # noqa: F811
                                                                 scratch_registry):
    url, _, prefix = serve_tiny(file_server, tmp_path)
    point_tag_at(url, prefix)
    dynamic_atss.create(TAG, pretrained=True, progress=False)
    record = converted_dir(url) / "conversion.json"
    record.write_text(record.read_text().replace(dynamic_atss.__version__, "0.0.0"))  # written by another version
    dynamic_atss.create(TAG, pretrained=True, progress=False)
    assert len(file_server.requests) == 1  # converted again, from the cached checkpoint
    assert dynamic_atss.__version__ in record.read_text()


# ---------------------------------------------------------------------------------------------- failures
def test_hash_mismatch_names_the_url_and_caches_nothing(tmp_path, file_server, torch_cache, monkeypatch):  # noqa: F811
    # The real entry, fetched from a mirror that serves another file: its SHA-256 is not 985f7bd0...
    file_server.files["/mmdetection/v2.0/atss/atss_r50_fpn_1x_coco/atss_r50_fpn_1x_coco_20200209-985f7bd0.pth"] = \
        tiny_checkpoint_bytes(tmp_path)
    monkeypatch.setenv(MIRROR_ENV, file_server.base_url + "/")
    with pytest.raises(WeightsDownloadError) as caught:
        dynamic_atss.create(TAG, pretrained=True, progress=False)
    message = str(caught.value)
    assert "985f7bd0" in message and file_server.base_url + "/mmdetection/v2.0/atss/" in message
    assert REAL_URL in message and "dynamic-atss convert FILE" in message
    assert file_server.requests == [urlpath(REAL_URL)]
    assert cache_files(torch_cache) == []  # no partial file, no conversion


def urlpath(url: str) -> str:
    return re.sub(r"^https?://[^/]+", "", url)


def test_truncated_download_is_an_error_and_not_cached(tmp_path, file_server, torch_cache,  # noqa: F811
                                                       scratch_registry):
    url, _, prefix = serve_tiny(file_server, tmp_path)
    point_tag_at(url, prefix)
    file_server.truncate.add(urlpath(url))
    with pytest.raises(WeightsDownloadError, match=r"(?s)interrupted or truncated.*" + re.escape(url)):
        dynamic_atss.create(TAG, pretrained=True, progress=False)
    assert cache_files(torch_cache) == []
    file_server.truncate.clear()  # the next try succeeds: nothing poisoned the cache
    dynamic_atss.create(TAG, pretrained=True, progress=False)
    assert (converted_dir(url) / "model.safetensors").is_file()


def test_offline_mode_downloads_nothing_and_says_what_to_do(tmp_path, file_server, torch_cache,  # noqa: F811
                                                            scratch_registry, monkeypatch):
    url, data, prefix = serve_tiny(file_server, tmp_path)
    point_tag_at(url, prefix)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsDownloadError) as caught:
        dynamic_atss.create(TAG, pretrained=True)
    message = str(caught.value)
    for expected in ("offline mode is on (HF_HUB_OFFLINE=1)", url, prefix, "dynamic-atss convert FILE",
                     str(checkpoint_path(url))):
        assert expected in message, expected
    with pytest.raises(WeightsDownloadError, match=r"local_files_only=True"):
        dynamic_atss.create(TAG, pretrained=True, local_files_only=True)
    assert file_server.requests == []
    # the manual route the message describes: the file put where it says is converted, offline
    checkpoint_path(url).parent.mkdir(parents=True)
    checkpoint_path(url).write_bytes(data)
    model = dynamic_atss.create(TAG, pretrained=True)
    assert model.config.class_names == ["cat", "dog", "bird"] and file_server.requests == []


def test_unreachable_host_names_the_url(tmp_path, torch_cache, scratch_registry):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/weights/atss_tiny_2020-0123abcd.pth"
    point_tag_at(url, "0123abcd")
    with pytest.raises(WeightsDownloadError, match=r"(?s)could not download " + re.escape(url) + ".*dynamic-atss convert"):
        dynamic_atss.create(TAG, pretrained=True, progress=False)
    assert cache_files(torch_cache) == []


# ---------------------------------------------------------------------------------------------- the index
def without_family(monkeypatch, family: str) -> None:
    """This version as if `family` had no mmdetection head mapping (every family in the index has one now)."""
    from dynamic_atss.convert import mmdet

    for marker in [k for k, (f, _) in mmdet.MMDET_HEADS.items() if f == family]:
        monkeypatch.delitem(mmdet.MMDET_HEADS, marker)


def test_family_not_available_yet_is_a_clear_error(torch_cache, monkeypatch):
    without_family(monkeypatch, "gfl")
    for name in ("gfl_r50.mmdet_coco_1x", "gfl_r101.mmdet_coco_2x_ms"):
        with pytest.raises(FamilyNotAvailableError, match=r"head family.*not available in this version.*atss_r50"):
            dynamic_atss.create(name, pretrained=True)
    assert cache_files(torch_cache) == []


def test_pretrained_without_weights_explains_what_is_available(monkeypatch):
    from dynamic_atss.convert import mmdet

    # the ATSS weights only (other families' weights are listed too where they are nearer, e.g. VFNet R-101)
    for marker in [k for k, (family, _) in mmdet.MMDET_HEADS.items() if family != "atss"]:
        monkeypatch.delitem(mmdet.MMDET_HEADS, marker)
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


def test_suggested_weights_for_an_atss_model_are_atss_weights_first():
    with pytest.raises(NoPretrainedWeightsError) as caught:
        dynamic_atss.create("dynamic_atss_r101_dcn", pretrained=True)
    suggested = re.findall(r"create\('([^']+)'", str(caught.value))
    assert suggested[0].startswith("atss_"), suggested
    assert "plain ATSS, not Dynamic ATSS" in str(caught.value)


def test_suggested_weights_follow_the_head_family():
    for model, family in (("dynamic_vfnet_r101", "vfnet_"), ("dynamic_gflv2_r50", "gfl_")):
        with pytest.raises(NoPretrainedWeightsError) as caught:
            dynamic_atss.create(model, pretrained=True)
        suggested = re.findall(r"create\('([^']+)'", str(caught.value))
        assert suggested[0].startswith(family), (model, suggested)
        assert "plain ATSS" not in str(caught.value) and "not their combined-IoU versions" in str(caught.value)


def test_atss_constructors_build_what_the_converter_builds():
    for name, layers in (("atss_r50", (3, 4, 6, 3)), ("atss_r101", (3, 4, 23, 3))):
        converted, _ = convert_mmdet_state_dict(mmdet_atss_state_dict(layers=layers, device="meta"))
        built = dynamic_atss.create(name)
        assert built.config == dataclasses.replace(converted, class_names=None), name
        assert {k: v.shape for k, v in built.state_dict().items()} == \
            {k: v.shape for k, v in dynamic_atss.DynamicATSS(converted).state_dict().items()}


def test_fine_tune_recipe_starts_from_converted_weights():
    import yaml

    root = Path(__file__).resolve().parents[1]
    recipe = yaml.safe_load((root / registry.FINETUNE_RECIPE).read_text())
    assert recipe["init_from"] == TAG and recipe["base"] == "_coco_1x.yaml"
    assert recipe["model_overrides"]["assigner.pred_weight"] == 1.0
    base = yaml.safe_load((root / "configs" / "_coco_1x.yaml").read_text())
    assert recipe["optim"]["max_iters"] < base["optim"]["max_iters"] and recipe["optim"]["lr"] < base["optim"]["lr"]
    registry.split_name(recipe["init_from"])  # a name create() accepts


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


def test_convert_script_tag_is_the_manual_route(tmp_path, scratch_registry, capsys):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "hub" / "convert_mmdet.py"
    spec = importlib.util.spec_from_file_location("hub_script_convert_mmdet_tag", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    checkpoint = tmp_path / "atss_tiny.pth"
    checkpoint.write_bytes(tiny_checkpoint_bytes(tmp_path))
    with pytest.raises(SystemExit, match=r"does not start with 985f7bd0"):  # the real entry: another file
        script.main([str(checkpoint), "--tag", TAG, "--out", str(tmp_path / "out")])
    point_tag_at("https://example.invalid/atss_tiny.pth", hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:8])
    assert script.main([str(checkpoint), "--tag", TAG, "--out", str(tmp_path / "out")]) == 0
    loaded = dynamic_atss.create(str(tmp_path / "out"))
    assert loaded.pretrained_info["metrics"]["AP"] == 39.4
    assert_same_raw_outputs(loaded, convert_mmdet_atss(checkpoint))


def test_a_family_registering_its_mmdet_head_makes_its_tags_loadable(torch_cache, monkeypatch):
    from dynamic_atss.convert import mmdet

    without_family(monkeypatch, "vfnet")
    assert "vfnet_r50.mmdet_coco_1x" not in dynamic_atss.list_models("vfnet*", pretrained=True)
    monkeypatch.setitem(mmdet.MMDET_HEADS, "bbox_head.vfnet_test_marker", ("vfnet", lambda remaining, take: {}))
    assert "vfnet_r50.mmdet_coco_1x" in dynamic_atss.list_models("vfnet*", pretrained=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsDownloadError, match=r"vfnet_r50_fpn_1x_coco_20201027-38db6f58\.pth"):
        dynamic_atss.create("vfnet_r50.mmdet_coco_1x")  # now only the (offline) download stands in the way
    with pytest.raises(FamilyNotAvailableError):
        dynamic_atss.create("vfnet_x101_64x4d_dcn")  # random weights need a registered constructor


def test_a_stalled_download_times_out_names_the_url_and_leaves_nothing(tmp_path, file_server, torch_cache,  # noqa: F811
                                                                      scratch_registry, monkeypatch):
    """Issue 18, item 10: a mirror that stops sending mid-download hung forever and left `*.partial` behind."""
    import time

    url, _, prefix = serve_tiny(file_server, tmp_path)
    point_tag_at(url, prefix)
    file_server.stall.add(urlpath(url))
    monkeypatch.setenv("DYNAMIC_ATSS_DOWNLOAD_TIMEOUT", "1")
    start = time.monotonic()
    with pytest.raises(WeightsDownloadError) as caught:
        dynamic_atss.create(TAG, pretrained=True, progress=False)
    assert time.monotonic() - start < 30  # bounded: the 1 s timeout, not the server's 60 s stall
    message = str(caught.value)
    for expected in ("stalled: no data for 1 s", "DYNAMIC_ATSS_DOWNLOAD_TIMEOUT", url, "dynamic-atss convert FILE"):
        assert expected in message, expected
    assert cache_files(torch_cache) == []  # no *.partial left behind
