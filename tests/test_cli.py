import json

import pytest
import torch
import yaml

import dynamic_atss as da
from dynamic_atss.__main__ import main as cli
from dynamic_atss.visualize import save_png
from test_train import TINY_RECIPE


@pytest.fixture
def saved_tiny_model(tmp_path, tiny_kwargs):
    model = da.create("r50", num_classes=3, class_names=["a", "b", "c"], **tiny_kwargs)
    with torch.no_grad():
        model.head.cls_logits.bias.fill_(2.0)  # confident random model: plenty of boxes to draw
    model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_predict_writes_pngs_and_json(tmp_path, saved_tiny_model):
    image_path = tmp_path / "street.png"
    save_png((torch.rand(3, 90, 120) * 255).to(torch.uint8), image_path)
    assert cli(["predict", str(image_path), "--model", str(saved_tiny_model), "--out", str(tmp_path / "out"),
                "--threshold", "0.1"]) == 0
    assert (tmp_path / "out" / "street.png").is_file()
    results = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert results[0]["image"] == str(image_path) and results[0]["detections"]
    first = results[0]["detections"][0]
    assert first["class_name"] in {"a", "b", "c"} and first["score"] >= 0.1
    x1, y1, x2, y2 = first["box_xyxy"]
    assert 0 <= x1 < x2 <= 120 and 0 <= y1 < y2 <= 90


def test_predict_names_a_bad_image_file(tmp_path, saved_tiny_model):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.jpg"):
        cli(["predict", str(broken), "--model", str(saved_tiny_model), "--out", str(tmp_path / "out")])
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        cli(["predict", str(tmp_path / "missing.jpg"), "--model", str(saved_tiny_model)])


def test_demo_with_comparison_writes_its_outputs(tmp_path):
    recipe = dict(TINY_RECIPE, output_dir=str(tmp_path / "demo"), checkpoint_every=0)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    assert cli(["demo", "--config", str(tmp_path / "tiny.yaml"), "--iters", "4", "--compare"]) == 0
    summary = json.loads((tmp_path / "demo" / "demo_summary.json").read_text())
    assert set(summary["AP"]) == {"Dynamic ATSS (combined IoUs)", "ATSS (anchor IoUs only)"}
    assert (tmp_path / "demo" / "predictions.png").is_file()
    assert (tmp_path / "demo" / "losses.png").is_file()  # matplotlib is in the dev set-up (plot extra)
    baseline = json.loads((tmp_path / "demo" / "atss_baseline" / "model" / "config.json").read_text())
    assert baseline["model"]["assigner"]["pred_weight"] == 0.0


def test_cli_help_and_unknown_command(capsys):
    assert cli([]) == 0
    assert "predict" in capsys.readouterr().out
    assert cli(["bogus"]) == 2
