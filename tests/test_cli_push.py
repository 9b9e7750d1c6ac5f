"""Tests of dynamic_atss.hub.cli."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dynamic_atss
from dynamic_atss import registry
from dynamic_atss.registry import PretrainedCfg, register_pretrained
from dynamic_atss.__main__ import main as cli

from hub_server import hub_server  # noqa: F401  (pytest fixture)
from helpers_hub import METRICS, assert_same_outputs, tiny_model


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


def test_push_never_edits_the_installed_index(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # not a checkout: no dynamic_atss/model_index.json here
    assert cli(["push", "--model", str(tmp_path), "--repo", "org/name", "--update-index", "r50.coco_1x"]) == 2
    assert "source checkout" in capsys.readouterr().err


def test_push_mistakes_are_one_line(tmp_path):
    """`push --model nope` was a 23-line traceback from pathlib; a folder with a bad config.json too."""
    from helpers_cli import one_line_error, run_installed

    one_line_error(run_installed("push", "--model", "nope", "--repo", "org/name", cwd=tmp_path), "push",
                   "--model nope: no such folder")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{")
    one_line_error(run_installed("push", "--model", "bad", "--push_to_hub", "org/name", cwd=tmp_path), "push",
                   "--model bad", "not valid JSON")
