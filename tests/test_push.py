"""Tests of dynamic_atss.hub.push."""

from __future__ import annotations

import pytest
import torch

import dynamic_atss
from dynamic_atss import DynamicATSS
from dynamic_atss.hub import HubFilesMissingError, push_model_dir
from dynamic_atss.registry import PretrainedCfg, register_pretrained

from hub_server import hub_server  # noqa: F401  (pytest fixture)
from helpers_hub import METRICS, assert_same_outputs, tiny_model


# ---------------------------------------------------------------------------------------------- the Hub
def test_push_then_load_from_hub(hub_server, cache, scratch_registry, monkeypatch):  # noqa: F811
    def no_torch_load(*args, **kwargs):
        raise AssertionError("torch.load must never be used for Hub weights")

    monkeypatch.setattr(torch, "load", no_torch_load)
    model = tiny_model(seed=1)
    info = model.push_to_hub("org/tiny-atss", endpoint=hub_server.endpoint, token="hf_test_token", metrics=METRICS)
    posts = [path for method, path in hub_server.requests if method == "POST"]
    assert posts == ["/api/repos/create", "/api/validate-yaml", "/api/models/org/tiny-atss/preupload/main",
                     "/api/models/org/tiny-atss/commit/main"]
    assert set(hub_server.authorization) == {"Bearer hf_test_token"}
    repo = hub_server.repos["org/tiny-atss"]
    assert repo.branches["main"] == info.oid
    assert sorted(repo.commits[info.oid].files) == [".gitattributes", "README.md", "config.json", "model.safetensors",
                                                    "preprocessor_config.json"]
    assert b'dynamic_atss.create("hf-hub:org/tiny-atss")' in repo.commits[info.oid].files["README.md"]

    hub_server.requests.clear()
    loaded = dynamic_atss.create("hf-hub:org/tiny-atss", endpoint=hub_server.endpoint, cache_dir=cache)
    assert_same_outputs(model, loaded)
    # one snapshot: the revision is resolved once, then both files are fetched at that commit
    resolves = [path for method, path in hub_server.requests if "/resolve/" in path]
    assert resolves and all(f"/resolve/{info.oid}/" in path for path in resolves), hub_server.requests
    assert sum("/revision/main" in path for _, path in hub_server.requests) == 1
    hub_server.requests.clear()
    dynamic_atss.create("hf-hub:org/tiny-atss", endpoint=hub_server.endpoint, cache_dir=cache, force_download=True)
    assert sum(method == "GET" and path.endswith("/model.safetensors") for method, path in hub_server.requests) == 1
    assert loaded.pretrained_info["commit"] == info.oid and loaded.pretrained_info["metrics"] == METRICS
    assert (cache / "models--org--tiny-atss" / "snapshots" / info.oid / "model.safetensors").exists()

    # A pinned registry entry keeps loading that commit after main moves on.
    register_pretrained(PretrainedCfg(model="dynamic_atss_r50", tag="unit_test", hf_hub_id="org/tiny-atss",
                                      revision=info.oid))
    other = tiny_model(seed=2)
    other.push_to_hub("org/tiny-atss", endpoint=hub_server.endpoint, token="hf_test_token")
    pinned = dynamic_atss.create("r50.unit_test", pretrained=True, endpoint=hub_server.endpoint, cache_dir=cache)
    assert_same_outputs(model, pinned)
    latest = DynamicATSS.from_pretrained("org/tiny-atss", endpoint=hub_server.endpoint, cache_dir=cache)
    assert_same_outputs(other, latest)

    with pytest.warns(UserWarning, match="cls_logits"):
        tuned = dynamic_atss.create("hf-hub:org/tiny-atss", num_classes=5, endpoint=hub_server.endpoint,
                                    cache_dir=cache)
    assert torch.equal(tuned.state_dict()["head.bbox_pred.weight"], other.state_dict()["head.bbox_pred.weight"])
    assert tuned.config.num_classes == 5


def test_push_model_dir_to_a_branch(hub_server, cache, tmp_path):  # noqa: F811
    model = tiny_model(seed=3)
    model.save_pretrained(tmp_path / "m", recipe="tiny_recipe")
    info = push_model_dir(tmp_path / "m", "org/branchy", revision="v1", endpoint=hub_server.endpoint, token="t",
                          private=True)
    repo = hub_server.repos["org/branchy"]
    assert repo.private and repo.branches["v1"] == info.oid and repo.branches["main"] != info.oid
    # the generated card was regenerated with the repo id
    assert b'"hf-hub:org/branchy"' in repo.commits[info.oid].files["README.md"]
    assert_same_outputs(model, dynamic_atss.create("hf-hub:org/branchy@v1", endpoint=hub_server.endpoint, cache_dir=cache))
    with pytest.raises(HubFilesMissingError, match="has no config.json and no model.safetensors"):  # main: .gitattributes
        dynamic_atss.create("hf-hub:org/branchy", endpoint=hub_server.endpoint, cache_dir=cache)
    # a hand-written card is kept
    (tmp_path / "m" / "README.md").write_text("---\nlicense: mit\n---\n# my own card\n")
    info = push_model_dir(tmp_path / "m", "org/branchy", endpoint=hub_server.endpoint, token="t")
    assert repo.commits[info.oid].files["README.md"] == b"---\nlicense: mit\n---\n# my own card\n"
    # a broken folder is never pushed
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        push_model_dir(tmp_path / "m", "org/branchy", endpoint=hub_server.endpoint, token="t")


def test_push_uploads_the_figures_the_card_shows_and_the_ema_and_best_facts(hub_server, cache, tmp_path):  # noqa: F811
    model = tiny_model(seed=4)
    recipe = {"ema": {"enabled": True, "decay": 0.9998, "tau": 2000.0}}
    metrics = {"dataset": "trees", "split": "val", "AP": 0.4125, "step": 1200, "weights": "ema", "checkpoint": "best"}
    model.save_pretrained(tmp_path / "best", recipe=recipe, metrics=metrics)
    (tmp_path / "best" / "plots").mkdir()
    for name in ("training.png", "assignment.png", "example.png", "not_in_the_card.png"):
        (tmp_path / "best" / "plots" / name).write_bytes(b"\x89PNG " + name.encode())
    info = push_model_dir(tmp_path / "best", "org/figures", endpoint=hub_server.endpoint, token="t")
    files = hub_server.repos["org/figures"].commits[info.oid].files
    assert files["plots/assignment.png"] == b"\x89PNG assignment.png" and "plots/not_in_the_card.png" not in files
    card = files["README.md"].decode()
    assert "](plots/training.png)" in card and "](plots/example.png)" in card and "plots/ap.png" not in card
    assert "exponential moving average of the training weights (decay 0.9998" in card
    assert "best of the evaluations during training, at iteration 1200 (AP 0.4125)" in card
