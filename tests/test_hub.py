"""save_pretrained / from_pretrained / push_to_hub / load_pretrained (dynamic_atss.hub).

Hub tests use the real huggingface_hub client against the fake Hub of `hub_server.py` on 127.0.0.1, with a
temporary cache per test; nothing leaves the machine.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
from huggingface_hub import ModelCard
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
from hub_server import hub_server  # noqa: F401  (pytest fixture)
from safetensors.torch import load_file, save_file

import dynamic_atss
from dynamic_atss import DynamicATSS, registry
from dynamic_atss.hub import (
    ConfigFormatError,
    HubFilesMissingError,
    HubUnreachableError,
    StateDictMismatchError,
    load_pretrained,
    push_model_dir,
)
from dynamic_atss.registry import PretrainedCfg, register_pretrained

TINY = {"backbone": "test_resnet", "fpn_channels": 32, "head.channels": 32, "head.num_groups": 8, "min_size": 64,
        "max_size": 96}
METRICS = {"dataset": "coco", "split": "val2017", "AP": 40.3, "AP50": 57.9, "AP75": 44.1}


def tiny_model(seed: int = 0, num_classes: int = 3) -> DynamicATSS:
    torch.manual_seed(seed)
    model = dynamic_atss.create("r50", num_classes=num_classes, class_names=[f"class{i}" for i in range(num_classes)],
                                **TINY)
    with torch.no_grad():  # scores well above the 0.05 threshold, so that there are detections to compare
        model.head.cls_logits.bias.fill_(0.5)
        for scale in model.head.scales:
            scale.scale.fill_(0.5 + torch.rand(()).item())
    return model.eval()


def images() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(3, 48, 72, generator=generator), torch.rand(3, 70, 56, generator=generator)]


def assert_same_outputs(a: DynamicATSS, b: DynamicATSS) -> None:
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for level_a, level_b in zip(a.forward_raw(x), b.forward_raw(x)):
            assert all(torch.equal(u, v) for u, v in zip(level_a, level_b))
        det_a, det_b = a.eval()(images()), b.eval()(images())
    assert sum(len(d["boxes"]) for d in det_a) > 0
    for da, db in zip(det_a, det_b):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(da[key], db[key])


def closed_port_endpoint() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty Hub cache; also the default one, so nothing of the user's cache is read."""
    path = tmp_path / "hf-cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return path


@pytest.fixture
def scratch_registry(monkeypatch):
    monkeypatch.setattr(registry, "_PRETRAINED", dict(registry._PRETRAINED))
    monkeypatch.setattr(registry, "_DEFAULT_TAG", dict(registry._DEFAULT_TAG))


# ---------------------------------------------------------------------------------------------- local folders
def test_save_load_round_trip(tmp_path, monkeypatch):
    model = tiny_model()
    create_model = timm.create_model
    calls = []

    def recording_create_model(*args, **kwargs):
        calls.append(kwargs.get("pretrained"))
        return create_model(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", recording_create_model)
    model.save_pretrained(tmp_path / "m", recipe={"name": "tiny", "iterations": 10}, metrics=METRICS)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                                   "preprocessor_config.json"]
    document = json.loads((tmp_path / "m" / "config.json").read_text())
    assert document["architecture"] == "DynamicATSS" and document["format_version"] == 1
    assert document["library_version"] == dynamic_atss.__version__
    assert document["model"] == json.loads(json.dumps(model.config.to_dict()))
    assert document["recipe"] == {"name": "tiny", "iterations": 10} and document["metrics"] == METRICS
    assert document["model"]["class_names"] == ["class0", "class1", "class2"]

    for loaded in (dynamic_atss.create(f"local-dir:{tmp_path / 'm'}"), load_pretrained(str(tmp_path / "m")),
                   dynamic_atss.create(str(tmp_path / "m"))):  # a plain folder too
        assert not loaded.training and loaded.config == model.config
        assert_same_outputs(model, loaded)
    loaded = DynamicATSS.from_pretrained(tmp_path / "m")
    assert_same_outputs(model, loaded)
    assert loaded.pretrained_info["source"] == "local-dir" and loaded.pretrained_info["metrics"] == METRICS
    assert calls == [False] * 4  # rebuilt four times, never downloading ImageNet weights


def test_saved_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        tiny_model().save_pretrained(tmp_path / "m")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "m").iterdir()}
    assert modes == {"config.json": 0o644, "model.safetensors": 0o644, "README.md": 0o644,  # was 0600 for weights
                     "preprocessor_config.json": 0o644}


def test_path_like_names_in_create(tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        dynamic_atss.create(str(tmp_path / "missing"))
    (tmp_path / "weights.pth").write_bytes(b"")
    with pytest.raises(ValueError, match=r"is a file: give the model folder.*dynamic-atss convert"):
        dynamic_atss.create(str(tmp_path / "weights.pth"))


def test_hub_package_does_not_import_the_models():
    """One direction: models -> hub (HubMixin). Nothing in dynamic_atss/hub imports the model code, even lazily."""
    import ast

    package = Path(dynamic_atss.hub.__file__).parent
    offenders = []
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        type_checking = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                         and getattr(block.test, "id", "") == "TYPE_CHECKING" for node in ast.walk(block)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and id(node) not in type_checking and "models" in (node.module or ""):
                offenders.append(f"{path.name}:{node.lineno} from {'.' * node.level}{node.module}")
    assert offenders == []
    assert dynamic_atss.hub.registered_model_class() is DynamicATSS


def test_model_card(tmp_path):
    tiny_model().save_pretrained(tmp_path / "m", metrics=METRICS, repo_id="org/tiny-atss", tags=["tiny"])
    card = ModelCard.load(tmp_path / "m" / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "dynamic-atss" and data["license"] == "apache-2.0"
    assert {"object-detection", "dynamic-atss", "tiny"} <= set(data["tags"])
    assert data["datasets"] == ["coco"]
    results = data["model-index"][0]["results"][0]
    assert results["task"]["type"] == "object-detection" and results["dataset"]["split"] == "val2017"
    assert {m["type"]: m["value"] for m in results["metrics"]} == {"AP": 40.3, "AP50": 57.9, "AP75": 44.1}
    assert 'dynamic_atss.create("hf-hub:org/tiny-atss")' in card.text
    assert "arXiv:2201.09396" in card.text and "Sharda, Ajay" in card.text and "Dynamic Label Assignment" in card.text
    # without metrics: no model-index, no datasets claimed
    tiny_model().save_pretrained(tmp_path / "n")
    data = ModelCard.load(tmp_path / "n" / "README.md").data.to_dict()
    assert "model-index" not in data and "datasets" not in data


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
        ("newer", lambda d: d.update(format_version=2), r"format_version 2 was written by a newer dynamic-atss"),
    ]
    for name, edit, pattern in cases:
        folder = tmp_path / name
        shutil.copytree(tmp_path / "m", folder)
        document = json.loads(json.dumps(original))
        edit(document)
        (folder / "config.json").write_text(json.dumps(document))
        with pytest.raises(ConfigFormatError, match=pattern):
            dynamic_atss.create(f"local-dir:{folder}")


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


# ---------------------------------------------------------------------------------------------- hub/ scripts
def load_script(name: str):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "hub" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"hub_script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_push_script_pins_the_index(hub_server, cache, tmp_path, scratch_registry, capsys):  # noqa: F811
    model = tiny_model(seed=6)
    model.save_pretrained(tmp_path / "m", recipe="dynamic_atss_r50_1x", metrics=METRICS)
    index = tmp_path / "model_index.json"
    shutil.copy(registry.INDEX_FILE, index)
    before = json.loads(index.read_text())["weights"]
    push = load_script("push")
    assert push.main(["--model", str(tmp_path / "m"), "--repo", "org/indexed", "--endpoint", hub_server.endpoint,
                      "--token", "t", "--update-index", "dynamic_atss_r50.coco_1x", "--index-file", str(index)]) == 0
    sha = hub_server.repos["org/indexed"].branches["main"]
    assert sha in capsys.readouterr().out
    after = json.loads(index.read_text())["weights"]
    assert len(after) == len(before) and after[1:] == before[1:]
    entry = after[0]
    assert (entry["model"], entry["tag"], entry["hf_hub_id"], entry["revision"]) == \
        ("dynamic_atss_r50", "coco_1x", "org/indexed", sha)
    assert entry["metrics"] == METRICS and entry["recipe"] == "dynamic_atss_r50_1x"
    register_pretrained(PretrainedCfg(**entry))
    assert_same_outputs(model, dynamic_atss.create("r50", pretrained=True, endpoint=hub_server.endpoint,
                                                   cache_dir=cache))


def test_model_card_describes_the_head_family(tmp_path, tiny_kwargs):
    import dynamic_atss as da

    atss = da.create("r50", **tiny_kwargs)
    vfnet = da.create("dynamic_vfnet_r50", **{**tiny_kwargs, "head.num_convs": 2})
    atss.save_pretrained(tmp_path / "atss")
    vfnet.save_pretrained(tmp_path / "vfnet")
    atss_card = (tmp_path / "atss" / "README.md").read_text()
    vfnet_card = (tmp_path / "vfnet" / "README.md").read_text()
    assert "ATSS head, quality branch `iou`" in atss_card and "Dynamic ATSS](https" in atss_card
    assert "VFNet head" in vfnet_card and "ATSS head" not in vfnet_card
    assert "`vfnet` object detector with the [combined-IoU label assignment]" in vfnet_card
    assert "- vfnet" in vfnet_card  # Hub tag names the family
