"""Tests of dynamic_atss.hub.download."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

import dynamic_atss
from dynamic_atss import DynamicATSS, registry
from dynamic_atss.hub import HubUnreachableError

from hub_server import hub_server  # noqa: F401  (pytest fixture)
from helpers_hub import tiny_model, assert_same_outputs


def closed_port_endpoint() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_missing_repo_and_revision(hub_server, cache):  # noqa: F811
    with pytest.raises(RepositoryNotFoundError, match=r"(?s)org/does-not-exist.*dynamic-atss: could not load"):
        dynamic_atss.create("hf-hub:org/does-not-exist", endpoint=hub_server.endpoint, cache_dir=cache)
    tiny_model().push_to_hub("org/exists", endpoint=hub_server.endpoint, token="t")
    with pytest.raises(RevisionNotFoundError, match=r"'org/exists' at revision 'v9'"):
        dynamic_atss.create("hf-hub:org/exists@v9", endpoint=hub_server.endpoint, cache_dir=cache)


def _fill_cache(cache: Path, repo_id: str, folder: Path, sha: str = "a" * 40) -> None:
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(sha)
    shutil.copytree(folder, storage / "snapshots" / sha)


def test_offline_from_prefilled_cache(tmp_path, cache, monkeypatch):
    model = tiny_model(seed=4)
    model.save_pretrained(tmp_path / "m")
    _fill_cache(cache, "org/cached", tmp_path / "m")
    nowhere = closed_port_endpoint()  # nothing listens: any network access would fail
    loaded = dynamic_atss.create("hf-hub:org/cached", local_files_only=True, endpoint=nowhere)
    assert_same_outputs(model, loaded)
    assert loaded.pretrained_info["commit"] == "a" * 40
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_same_outputs(model, DynamicATSS.from_pretrained("org/cached", endpoint=nowhere, cache_dir=cache))
    with pytest.raises(HubUnreachableError, match=r"(?s)offline mode is on \(HF_HUB_OFFLINE=1\).*local-dir:"):
        dynamic_atss.create("hf-hub:org/not-cached", endpoint=nowhere)


def test_unreachable_hub_gives_one_clear_error(cache, monkeypatch):
    # huggingface_hub retries a failed connection with backoff (1 + 2 + 4 + 8 + 8 s): skip the waiting
    monkeypatch.setattr(huggingface_hub.utils._http.time, "sleep", lambda seconds: None)
    nowhere = closed_port_endpoint()
    with pytest.raises(HubUnreachableError) as caught:
        dynamic_atss.create("hf-hub:org/name@v2", endpoint=nowhere, cache_dir=cache)
    message = str(caught.value)
    assert isinstance(caught.value, RuntimeError)
    for expected in ("'org/name'", "revision 'v2'", nowhere, "could not be reached", str(cache),
                     'dynamic_atss.create("local-dir:/path/to/folder")'):
        assert expected in message, expected
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # one error, not a chain


def test_unpublished_weights_fail_clearly():
    with pytest.raises(RuntimeError, match=r"dynamic_atss_r50\.coco_1x has no published weights yet"):
        dynamic_atss.create("r50", pretrained=True)
    assert all(entry.get("hf_hub_id") is None or entry["revision"]
               for entry in json.loads(registry.INDEX_FILE.read_text())["weights"]), "published weights must be pinned"
