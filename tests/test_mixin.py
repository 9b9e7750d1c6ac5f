"""Tests of dynamic_atss.hub.mixin."""

from __future__ import annotations

import json

import timm

import dynamic_atss
from dynamic_atss import DynamicATSS
from dynamic_atss.hub import load_pretrained

from helpers_hub import METRICS, assert_same_outputs, tiny_model


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
    assert document["architecture"] == "DynamicATSS" and document["format_version"] == 2
    assert document["library_version"] == dynamic_atss.__version__
    assert document["model"] == json.loads(json.dumps(model.config.to_dict()))
    assert document["recipe"] == {"name": "tiny", "iterations": 10} and document["metrics"] == METRICS
    assert document["model"]["class_names"] == ["class0", "class1", "class2"]

    created = [dynamic_atss.create(f"local-dir:{tmp_path / 'm'}"), dynamic_atss.create(str(tmp_path / "m"))]
    for loaded in (*created, load_pretrained(str(tmp_path / "m"))):  # a plain folder too
        # create: train mode, as timm's; load_pretrained / from_pretrained: eval mode, as Hugging Face's
        assert loaded.training == any(loaded is c for c in created)
        assert loaded.config == model.config
        assert_same_outputs(model, loaded)
    loaded = DynamicATSS.from_pretrained(tmp_path / "m")
    assert_same_outputs(model, loaded)
    assert loaded.pretrained_info["source"] == "local-dir" and loaded.pretrained_info["metrics"] == METRICS
    assert calls == [False] * 4  # rebuilt four times, never downloading ImageNet weights
