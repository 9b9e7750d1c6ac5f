from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dynamic_atss.__main__ import main as cli
from dynamic_atss.visualize import save_png
from dynamic_atss.inference import optimize

from helpers_optimize import _confident


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


def test_predict_reports_unreadable_files_without_aborting(tmp_path, saved_tiny_model, capsys):
    good = tmp_path / "good.png"
    save_png((torch.rand(3, 60, 80) * 255).to(torch.uint8), good)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    out = tmp_path / "out"
    assert cli(["predict", str(broken), str(good), str(tmp_path / "missing.jpg"), "--model", str(saved_tiny_model),
                "--out", str(out), "--threshold", "0.1", "--batch-size", "1"]) == 1
    err = capsys.readouterr().err
    assert "2 input(s) failed" in err and "broken.jpg" in err and "missing.jpg" in err
    assert (out / "good.png").is_file()  # the readable image was still predicted
    assert [r["image"] for r in json.loads((out / "detections.json").read_text())] == [str(good)]
    # nothing readable at all: an error before the model is even loaded
    assert cli(["predict", str(tmp_path / "nothing*.jpg"), "--model", "r50", "--out", str(out)]) == 2


def test_predict_folders_globs_and_same_names(tmp_path, saved_tiny_model, capsys):
    for folder in ("a", "b", "b/deeper"):
        (tmp_path / "in" / folder).mkdir(parents=True)
        save_png((torch.rand(3, 50, 70) * 255).to(torch.uint8), tmp_path / "in" / folder / "photo.png")
    save_png((torch.rand(3, 50, 70) * 255).to(torch.uint8), tmp_path / "in" / "a" / "photo.jpg.png")
    (tmp_path / "in" / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "in" / "a" / "labels.json").write_text("{}")
    out = tmp_path / "out"
    assert cli(["predict", str(tmp_path / "in" / "a"), str(tmp_path / "in" / "b" / "**" / "*.png"),
                "--model", str(saved_tiny_model), "--out", str(out), "--threshold", "0.1"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: skipped 2 file(s) that are not images") == 1 and "notes.txt" in err
    results = json.loads((out / "detections.json").read_text())
    drawings = [Path(r["drawing"]) for r in results]
    assert len(results) == 4 and len(set(drawings)) == 4  # three photo.png + photo.jpg.png: none overwritten
    assert all(d.is_file() and out in d.parents for d in drawings)
    assert {str(d.relative_to(out)) for d in drawings} == {"a/photo.png", "a/photo.jpg.png", "b/photo.png",
                                                          "b/deeper/photo.png"}


def test_predict_refuses_a_model_without_weights(tmp_path, capsys, tiny_kwargs, monkeypatch):
    from dynamic_atss.convert import mmdet

    # the ATSS weights only (other families' weights are suggested too where their backbone is nearer)
    for marker in [k for k, (family, _) in mmdet.MMDET_HEADS.items() if family != "atss"]:
        monkeypatch.delitem(mmdet.MMDET_HEADS, marker)
    image = tmp_path / "street.png"
    save_png((torch.rand(3, 60, 80) * 255).to(torch.uint8), image)
    assert cli(["predict", str(image), "--model", "r50", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no published weights" in err and "atss_r50.mmdet_coco_1x" in err and "--random_weights" in err
    assert not (tmp_path / "out" / "street.png").exists()
    from dynamic_atss.cli import load_model_arg

    with pytest.warns(UserWarning, match="random weights"):  # the escape hatch
        model = load_model_arg("r50", random_weights=True)
    assert not model.training and model.pretrained_info is None


# ---------------------------------------------------------------------------------------------- issue 18
def test_predict_never_writes_over_an_input(tmp_path, saved_tiny_model, capsys):
    """Issue 18, item 7: `predict DIR --out DIR` would have drawn over DIR/a.png: refused, the input untouched."""
    folder = tmp_path / "photos"
    folder.mkdir()
    save_png((torch.rand(3, 50, 70) * 255).to(torch.uint8), folder / "a.png")
    before = (folder / "a.png").read_bytes()
    assert cli(["predict", str(folder), "--model", str(saved_tiny_model), "--out", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "would overwrite the input image" in err and "a.png" in err and "Traceback" not in err
    assert (folder / "a.png").read_bytes() == before and not (folder / "detections.json").exists()


# ------------------------------------------------------------------------------------------------ predict
def test_predict_runs_the_snapshot(tmp_path, tiny_kwargs, monkeypatch):
    from dynamic_atss.__main__ import main as cli

    model = _confident("r50", tiny_kwargs)
    model.config.class_names = ["a", "b", "c"]
    model.save_pretrained(tmp_path / "model")
    image = tmp_path / "street.png"
    save_png((torch.rand(3, 90, 120) * 255).to(torch.uint8), image)
    made = []
    real = optimize.optimize_for_inference
    monkeypatch.setattr("dynamic_atss.inference.optimize.optimize_for_inference",
                        lambda m, dtype=None: made.append(dtype) or real(m, dtype))

    def detections(*flags):
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        assert cli(["predict", str(image), "--model", str(tmp_path / "model"), "--out", str(out),
                    "--threshold", "0.1", *flags]) == 0
        return json.loads((out / "detections.json").read_text())[0]["detections"]

    snapshot, plain = detections(), detections("--plain")
    assert made == [None]
    assert [d["label"] for d in snapshot] == [d["label"] for d in plain] and snapshot
    for s, p in zip(snapshot, plain):
        assert s["score"] == pytest.approx(p["score"], abs=2e-4)
        assert s["box_xyxy"] == pytest.approx(p["box_xyxy"], abs=0.02)
    assert detections("--dtype", "bfloat16") and made == [None, torch.bfloat16]
    with pytest.raises(SystemExit) as exit_info:
        cli(["predict", str(image), "--model", str(tmp_path / "model"), "--plain", "--dtype", "bfloat16"])
    assert exit_info.value.code == 2
