"""Tests of dynamic_atss.config: the model configuration, its JSON round trip, overrides and test presets."""

import json

import pytest
import torch

import dynamic_atss as da
from dynamic_atss.config import ModelConfig, apply_overrides


def test_config_json_round_trip_and_overrides():
    config = apply_overrides(ModelConfig(), {"head.quality": "centerness", "min_size": (640, 800), "backbone": "resnet101"})
    data = json.loads(json.dumps(config.to_dict()))
    assert ModelConfig.from_dict(data) == config
    assert config.backbone.name == "resnet101" and config.head.family_options().quality == "centerness"
    with pytest.raises(ValueError, match="unknown field"):
        ModelConfig.from_dict({**data, "bogus": 1})
    with pytest.raises(ValueError, match="unknown config override"):
        apply_overrides(config, {"head.nope": 1})


def test_head_family_is_a_config_field(tiny_kwargs):
    model = da.create("r50", **tiny_kwargs)
    assert model.config.head.kind == "atss" and model.head.kind == "atss"
    assert ModelConfig.from_dict(json.loads(json.dumps(model.config.to_dict()))).head.kind == "atss"
    assert model.head.output_names == ("cls_logits", "box_deltas", "quality_logits")
    assert len(model.forward_raw(torch.zeros(1, 3, 64, 64))) == len(model.head.output_names)
    with pytest.raises(ValueError, match=r"head.kind='yolo' is not a known head family; known: \['atss'"):
        da.create("r50", **{**tiny_kwargs, "head.kind": "yolo"})
    with pytest.raises(ValueError, match="head.dgqp=True has no effect with head.kind='atss': .* the 'gfl' head family"):
        da.create("r50", **{**tiny_kwargs, "head.dgqp": True})


def test_test_presets(tiny_kwargs):
    model = da.create("r50", **tiny_kwargs)
    assert model.config.test.score_thresh == 0.05 and model.config.test.max_detections == 100
    model.set_test_preset("vis")
    assert model.config.test.score_thresh > 0.05
    with pytest.raises(ValueError, match="unknown test preset"):
        model.set_test_preset("fast")
