"""`create("atss_r50.mmdet_coco_1x", pretrained=True)`: public checkpoints by URL, hash-checked, converted, cached.

Nothing leaves the machine: a loopback `FileServer` (tests/hub_server.py) serves a tiny checkpoint written in
mmdetection's layout (tests/helpers_mmdet.py builds it). The real index entries are never weakened: a test
registers a copy of the entry whose `url` / `hash_prefix` point at the loopback file (a scratch registry), or
sets `DYNAMIC_ATSS_WEIGHTS_MIRROR` so that the real entry is fetched from the loopback server.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import pytest

import dynamic_atss
from dynamic_atss import registry
from dynamic_atss.convert import MIRROR_ENV, WeightsDownloadError, checkpoint_path, convert_mmdet_atss
from dynamic_atss.convert import converted_dir
from dynamic_atss.registry import FamilyNotAvailableError

from hub_server import file_server  # noqa: F401  (pytest fixture)
from helpers_url import TAG, assert_same_raw_outputs, point_tag_at, serve_tiny, cache_files, tiny_checkpoint_bytes, without_family
REAL_URL = ("https://download.openmmlab.com/mmdetection/v2.0/atss/atss_r50_fpn_1x_coco/"
            "atss_r50_fpn_1x_coco_20200209-985f7bd0.pth")


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


def test_fine_tune_recipe_starts_from_converted_weights():
    import yaml

    root = Path(__file__).resolve().parents[1]
    recipe = yaml.safe_load((root / registry.FINETUNE_RECIPE).read_text())
    assert recipe["init_from"] == TAG and recipe["base"] == "_coco_1x.yaml"
    assert recipe["model_overrides"]["assigner.pred_weight"] == 1.0
    base = yaml.safe_load((root / "configs" / "_coco_1x.yaml").read_text())
    assert recipe["optim"]["max_iters"] < base["optim"]["max_iters"] and recipe["optim"]["lr"] < base["optim"]["lr"]
    registry.split_name(recipe["init_from"])  # a name create() accepts


def test_a_family_registering_its_mmdet_head_makes_its_tags_loadable(torch_cache, monkeypatch):
    from dynamic_atss.convert import mmdet

    without_family(monkeypatch, "vfnet")
    assert "vfnet_r50.mmdet_coco_1x" not in dynamic_atss.list_models("vfnet*", pretrained=True)
    mmdet.register_mmdet_head("bbox_head.vfnet_test_marker", "vfnet")(lambda remaining, take: {})
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


def test_weights_download_error_is_a_user_input_error():
    from dynamic_atss.errors import UserInputError

    assert issubclass(WeightsDownloadError, UserInputError) and issubclass(WeightsDownloadError, RuntimeError)


def test_a_tag_is_built_once_on_first_load(tmp_path, file_server, torch_cache, scratch_registry, monkeypatch):  # noqa: F811
    """Issue 23, item 6: the first load converted (building the model) and then built it again from the folder."""
    from dynamic_atss.models.detector import DynamicATSS

    url, _, prefix = serve_tiny(file_server, tmp_path)
    point_tag_at(url, prefix)
    builds = []
    original_init = DynamicATSS.__init__

    def counting_init(self, *args, **kwargs):
        builds.append(1)
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(DynamicATSS, "__init__", counting_init)
    first = dynamic_atss.create(TAG, pretrained=True, progress=False)
    assert len(builds) == 1
    again = dynamic_atss.create(TAG, pretrained=True)  # from the cached conversion: one build too
    assert len(builds) == 2
    assert first.training and again.training  # create's mode, whatever the source
    assert first.pretrained_info == again.pretrained_info
    assert_same_raw_outputs(first, again)
