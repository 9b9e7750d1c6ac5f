"""The transformers front door: `import dynamic_atss.integrations.transformers`, then `pipeline("object-detection",
model="org/name")` on a repo this package pushed to the loopback Hub (`hub_server.py`) gives model(images)'s
detections, with the class names. transformers runs in a subprocess whose HF_ENDPOINT is the loopback server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from hub_server import hub_server  # noqa: F401  (pytest fixture)

import dynamic_atss
from dynamic_atss.hub import read_config

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
TINY = {"backbone": "test_resnet", "fpn_channels": 32, "head.channels": 32, "head.num_groups": 8, "min_size": 64,
        "max_size": 96}

SCRIPT = r"""
import json, sys
import dynamic_atss.integrations.transformers  # noqa: F401  (registers the Auto classes)
import dynamic_atss
from transformers import AutoModelForObjectDetection, pipeline

repo, image, out = sys.argv[1:4]
detector = pipeline("object-detection", model=repo)
found = detector(image, threshold=0.3)
model = AutoModelForObjectDetection.from_pretrained(repo)
package = dynamic_atss.create(f"hf-hub:{repo}")
expected, got = package.state_dict(), model.model.state_dict()
same_weights = expected.keys() == got.keys() and all(expected[k].equal(got[k]) for k in expected)
json.dump({"pipeline": found, "same_weights": same_weights, "id2label": model.config.id2label,
           "class": type(model).__name__}, open(out, "w"))
"""


def test_pipeline_runs_a_pushed_repo_with_the_models_detections(tmp_path, hub_server):  # noqa: F811
    torch.manual_seed(0)
    model = dynamic_atss.create("r50", num_classes=2, class_names=["tree", "bush"], **TINY).eval()
    with torch.no_grad():  # scores above the threshold, so that there are detections to compare
        model.head.cls_logits.bias.fill_(0.5)
    model.push_to_hub("org/tiny-detector", endpoint=hub_server.endpoint, token="hf_test_token")
    files = hub_server.repos["org/tiny-detector"].resolve("main").files
    config = json.loads(files["config.json"])
    assert config["model_type"] == "dynamic_atss"
    assert config["id2label"] == {"0": "tree", "1": "bush"} and config["label2id"] == {"tree": 0, "bush": 1}
    assert json.loads(files["preprocessor_config.json"])["image_processor_type"] == "DynamicATSSImageProcessor"

    image_path = tmp_path / "photo.png"
    array = (np.random.default_rng(0).random((60, 80, 3)) * 255).astype(np.uint8)
    PIL.Image.fromarray(array).save(image_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_ENDPOINT": hub_server.endpoint, "HF_HOME": str(tmp_path / "hf-home"), "OMP_NUM_THREADS": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    result = subprocess.run([sys.executable, "-c", SCRIPT, "org/tiny-detector", str(image_path), str(tmp_path / "out.json")],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["same_weights"] and out["class"] == "DynamicATSSForObjectDetection"
    assert out["id2label"] == {"0": "tree", "1": "bush"}

    image = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    torch.set_num_threads(1)
    with torch.no_grad():
        (detections,) = model([image])
    keep = detections["scores"] > 0.3
    expected = [{"score": s, "label": ["tree", "bush"][l], "box": dict(zip(("xmin", "ymin", "xmax", "ymax"), b))}
                for s, l, b in zip(detections["scores"][keep].tolist(), detections["labels"][keep].tolist(),
                                   detections["boxes"][keep].int().tolist())]
    assert len(expected) > 0
    got = out["pipeline"]
    assert [(d["label"], d["box"]) for d in got] == [(d["label"], d["box"]) for d in expected]
    assert [d["score"] for d in got] == pytest.approx([d["score"] for d in expected], rel=1e-5)


def test_post_process_rescales_to_target_sizes():
    from dynamic_atss.integrations.transformers import DynamicATSSImageProcessor  # noqa: PLC0415

    processor = DynamicATSSImageProcessor()
    images = [PIL.Image.new("RGB", (80, 60)), np.zeros((40, 30, 3), dtype=np.uint8)]
    batch = processor(images)
    assert tuple(batch["pixel_values"].shape) == (2, 3, 60, 80) and batch["image_sizes"].tolist() == [[60, 80], [40, 30]]
    from dynamic_atss.integrations.transformers import DynamicATSSObjectDetectionOutput  # noqa: PLC0415

    outputs = DynamicATSSObjectDetectionOutput(
        scores=torch.tensor([[0.9, 0.2], [0.8, 0.0]]), labels=torch.tensor([[1, 0], [0, -1]]),
        pred_boxes=torch.tensor([[[8.0, 6, 16, 12], [0, 0, 1, 1]], [[3.0, 4, 6, 8], [0, 0, 0, 0]]]),
        image_sizes=torch.tensor([[60, 80], [40, 30]]))
    first, second = processor.post_process_object_detection(outputs, threshold=0.5, target_sizes=[(120, 160), (40, 30)])
    assert first["boxes"].tolist() == [[16.0, 12.0, 32.0, 24.0]] and first["labels"].tolist() == [1]
    assert second["boxes"].tolist() == [[3.0, 4.0, 6.0, 8.0]] and second["labels"].tolist() == [0]


def test_older_folders_and_hugging_face_keys_still_load(tmp_path):
    """A config.json without model_type / id2label (written before they existed) loads; so does one with the keys
    transformers' tools add (auto_map, architectures, transformers_version)."""
    torch.manual_seed(0)
    model = dynamic_atss.create("r50", num_classes=2, class_names=["tree", "bush"], **TINY)
    model.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    document = json.loads(path.read_text())
    old = {k: v for k, v in document.items() if k not in ("model_type", "id2label", "label2id")}
    path.write_text(json.dumps(old))
    assert dynamic_atss.create(f"local-dir:{tmp_path / 'm'}").config.class_names == ["tree", "bush"]
    path.write_text(json.dumps({**document, "auto_map": {"AutoConfig": "x.Y"}, "architectures": ["Z"],
                                "transformers_version": "5.0.0"}))
    read_config(path)
    path.write_text(json.dumps({**document, "id2label": {"0": "tree"}}))
    with pytest.raises(ValueError, match="id2label must map each of the model's 2 class indices"):
        read_config(path)


def test_from_pretrained_refuses_options_it_would_ignore(tmp_path):
    from dynamic_atss.integrations.transformers import DynamicATSSForObjectDetection  # noqa: PLC0415

    dynamic_atss.create("r50", num_classes=2, **TINY).save_pretrained(tmp_path / "m")
    loaded = DynamicATSSForObjectDetection.from_pretrained(tmp_path / "m", dtype="auto", subfolder="")
    assert loaded.config.id2label == {0: "LABEL_0", 1: "LABEL_1"} and not loaded.training
    with pytest.raises(TypeError, match="does not support {'dtype': torch.bfloat16}"):
        DynamicATSSForObjectDetection.from_pretrained(tmp_path / "m", dtype=torch.bfloat16)
    loaded.save_pretrained(tmp_path / "again")
    assert torch.equal(dynamic_atss.create(f"local-dir:{tmp_path / 'again'}").head.cls_logits.weight,
                       loaded.model.head.cls_logits.weight)
    with pytest.raises(TypeError, match="push_to_hub"):
        loaded.save_pretrained(tmp_path / "x", push_to_hub=True)
