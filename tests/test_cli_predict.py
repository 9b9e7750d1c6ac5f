"""cli/predict.py: `dynamic-atss predict` options (numbers in range, devices, outputs never overwritten), its COCO
results and its drawings; run as the installed command where the exit status and the absence of a traceback matter."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dynamic_atss.__main__ import main as cli
from dynamic_atss.visualize import save_png

from helpers_cli import one_line_error, run_installed, save_tiny_model

@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "img.png"
    save_png((torch.rand(3, 60, 80) * 255).to(torch.uint8), path)
    return path


@pytest.mark.parametrize(("flags", "fragment"), [
    (["--batch_size", "0"], "--batch_size: must be >= 1"),
    (["--batch-size", "0"], "--batch_size: must be >= 1"),  # the kebab-case spelling is the same option
    (["--threshold", "2"], "--threshold: scores are in [0, 1]"),
    (["--threshold", "-1"], "--threshold: scores are in [0, 1]"),
    (["--max_detections", "0"], "--max_detections: must be >= 1"),
])
def test_numbers_out_of_range_are_refused(image, flags, fragment, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(["predict", str(image), "--model", "r50", *flags])
    assert exit_info.value.code == 2 and fragment in capsys.readouterr().err


# ------------------------------------------------------------------- issue 25: every mistake is one line, status 2
@pytest.fixture(scope="module")
def broken_models(tmp_path_factory) -> Path:
    """good/ and the ways a model folder breaks: bad JSON, no weights, a newer format, an extra tensor."""
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("models")
    save_tiny_model(root / "good")
    for name in ("badjson", "noweights", "newer", "extra"):
        shutil.copytree(root / "good", root / name)
    (root / "badjson" / "config.json").write_text("{")
    (root / "noweights" / "model.safetensors").unlink()
    config = json.loads((root / "newer" / "config.json").read_text())
    (root / "newer" / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    state = load_file(root / "extra" / "model.safetensors")
    save_file({**state, "extra.weight": torch.zeros(2)}, root / "extra" / "model.safetensors")
    return root


@pytest.mark.parametrize(("model", "fragments"), [
    ("./nope", ["--model ./nope", "not found"]),
    ("hf-hub:nobody/nothing", ["--model hf-hub:nobody/nothing", "could not load"]),
    ("hf-hub:nobody/nothing@nope", ["revision 'nope'"]),
    ("MODELS/badjson", ["badjson", "not valid JSON"]),
    ("MODELS/noweights", ["missing model.safetensors"]),
    ("MODELS/newer", ["format_version 99", "Upgrade"]),
    ("MODELS/extra", ["extra.weight"]),
    ("atss_r50.foo", ["atss_r50.foo"]),
])
def test_a_model_that_cannot_be_loaded_is_one_line(image, broken_models, model, fragments):
    """Issue 25: each of these was a 26-67 line traceback (the useful line last)."""
    result = run_installed("predict", str(image), "--model", model.replace("MODELS", str(broken_models)),
                           "--out", str(image.parent / "out"))
    one_line_error(result, "predict", *fragments)
    assert not (image.parent / "out").exists()


def test_weights_that_cannot_be_downloaded_are_one_line(image, tmp_path):
    result = run_installed("predict", "--model", "atss_r50.mmdet_coco_1x", str(image),
                           env={"TORCH_HOME": str(tmp_path / "torch_home")})
    one_line_error(result, "predict", "--model atss_r50.mmdet_coco_1x", "offline")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_a_device_the_machine_lacks_is_one_line(image):
    result = run_installed("predict", str(image), "--model", "r50", "--device", "cuda")
    one_line_error(result, "predict", "--device cuda", "no usable CUDA GPU")


def test_numbers_out_of_range_are_refused_by_the_installed_command(image):
    result = run_installed("predict", str(image), "--model", "r50", "--batch-size", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--batch_size: must be >= 1" in result.stderr


# ----------------------------------------------------------------------- issue 25: nothing overwritten, nothing lost
def test_a_file_this_run_did_not_create_is_never_replaced(tmp_path, saved_tiny_model, capsys):
    """`predict a/0.jpg --out a` replaced the user's a/0.png (the drawing's name) with rc 0."""
    folder = tmp_path / "a"
    folder.mkdir()
    save_png((torch.rand(3, 50, 70) * 255).to(torch.uint8), folder / "0.jpg")
    (folder / "0.png").write_bytes(b"the user's own file")
    assert cli(["predict", str(folder / "0.jpg"), "--model", str(saved_tiny_model), "--out", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "0.png exists already" in err and "--overwrite" in err and "Traceback" not in err
    assert (folder / "0.png").read_bytes() == b"the user's own file" and not (folder / "detections.json").exists()
    # an earlier run's files are replaced only when asked
    out = tmp_path / "out"
    assert cli(["predict", str(folder / "0.jpg"), "--model", str(saved_tiny_model), "--out", str(out)]) == 0
    assert cli(["predict", str(folder / "0.jpg"), "--model", str(saved_tiny_model), "--out", str(out)]) == 2
    assert cli(["predict", str(folder / "0.jpg"), "--model", str(saved_tiny_model), "--out", str(out),
                "--overwrite", "--no_progress"]) == 0


def test_an_out_that_is_a_file_is_one_line(image, tmp_path):
    (tmp_path / "taken").write_text("x")
    result = run_installed("predict", str(image), "--model", "r50", "--random_weights", "--out",
                           str(tmp_path / "taken"))
    one_line_error(result, "predict", "is an existing file, not a folder")
    assert (tmp_path / "taken").read_text() == "x"


def test_inputs_that_are_all_missing_are_one_line(tmp_path):
    """A mistyped image name as the only input gave two `error:` lines without the command's name."""
    out = tmp_path / "out"
    result = run_installed("predict", str(tmp_path / "nope.jpg"), str(tmp_path / "empty*.png"), "--model", "r50",
                           "--random_weights", "--out", str(out))
    one_line_error(result, "predict", "nope.jpg: no such file or folder")
    assert "empty*.png: the pattern holds no image files" in result.stderr and not out.exists()


# -------------------------------------------------------------------------------- issue 24, item 6: predict's output
def test_coco_results_max_detections_and_old_flag_names(tmp_path, saved_tiny_model, capsys):
    images = tmp_path / "val"
    for image_id in (397133, 7):
        save_png((torch.rand(3, 50, 70) * 255).to(torch.uint8), images / f"{image_id:012d}.jpg")
    out = tmp_path / "out"
    assert cli(["predict", str(images), "--model", str(saved_tiny_model), "--out", str(out), "--format", "coco",
                "--threshold", "0", "--max-detections", "3", "--batch-size", "2", "--dtype", "float32"]) == 0
    rows = json.loads((out / "coco_results.json").read_text())
    assert {row["image_id"] for row in rows} == {397133, 7}
    assert all(sum(r["image_id"] == i for r in rows) == 3 for i in (397133, 7))  # --max_detections
    assert all(row["category_id"] in (1, 2, 3) and len(row["bbox"]) == 4 and row["bbox"][2] >= 0 for row in rows)
    per_image = json.loads((out / "detections.json").read_text())
    scores = [d["score"] for d in per_image[0]["detections"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 3
    # ids from an annotation file, matched by file name
    annotations = tmp_path / "ann.json"
    annotations.write_text(json.dumps({"images": [{"id": 1, "file_name": "000000397133.jpg"},
                                                  {"id": 2, "file_name": "000000000007.jpg"}]}))
    assert cli(["predict", str(images), "--model", str(saved_tiny_model), "--out", str(tmp_path / "out2"),
                "--format", "coco", "--annotations", str(annotations), "--threshold", "0"]) == 0
    assert {row["image_id"] for row in json.loads((tmp_path / "out2" / "coco_results.json").read_text())} == {1, 2}
    # a file name that is no id, without --annotations: one line naming the file
    save_png((torch.rand(3, 50, 70) * 255).to(torch.uint8), images / "street.jpg")
    capsys.readouterr()
    assert cli(["predict", str(images), "--model", str(saved_tiny_model), "--out", str(tmp_path / "out3"),
                "--format", "coco"]) == 2
    assert "street.jpg: --format coco needs an image id" in capsys.readouterr().err


def test_boxes_are_coloured_by_class():
    from dynamic_atss.visualize import PALETTE, draw_detections

    image = torch.zeros(3, 60, 80)
    detections = {"boxes": torch.tensor([[5.0, 5, 30, 30], [40, 20, 70, 50]]), "scores": torch.tensor([0.9, 0.8]),
                  "labels": torch.tensor([0, 1])}
    drawn = draw_detections(image, detections, ["cat", "dog"], 0.5)
    colour = {tuple(int(PALETTE[i][k:k + 2], 16) for k in (1, 3, 5)) for i in (0, 1)}
    left, right = tuple(drawn[:, 29, 5].tolist()), tuple(drawn[:, 49, 40].tolist())  # a pixel of each box's edge
    assert {left, right} == colour


@pytest.mark.parametrize("filled", [True, False])
def test_labels_are_white_on_their_class_colour_where_torchvision_can(monkeypatch, filled):
    """The demo's labels overlapped in the box colour on busy images; now each sits on a filled box of its colour
    (torchvision >= 0.22), and older torchvision still draws the plain labels."""
    from dynamic_atss import visualize

    monkeypatch.setattr(visualize, "_FILLED_LABELS", filled)
    image = torch.zeros(3, 60, 80)
    detections = {"boxes": torch.tensor([[5.0, 20, 70, 55]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([2])}
    drawn = visualize.draw_detections(image, detections, ["a", "b", "cat"], 0.5)
    label_area = drawn[:, 22:30, 7:40].reshape(3, -1).T.tolist()  # inside the box, where the label is written
    colour = [int(visualize.PALETTE[2][k:k + 2], 16) for k in (1, 3, 5)]
    background = sum(pixel == colour for pixel in label_area)
    white_text = sum(min(pixel) > 180 for pixel in label_area)  # the black image has no bright pixel of its own
    assert (background > len(label_area) / 3) is filled and (white_text > 0) is filled


def test_predict_draws_and_reports_in_the_frame_viewers_show(tmp_path, saved_tiny_model):
    """Issue 25: a phone photo stored 160x96 with EXIF orientation 6 was drawn and reported in the stored frame."""
    import PIL.Image
    import numpy as np

    photo = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 160, 3), dtype=np.uint8))
    exif = photo.getexif()
    exif[0x0112] = 6
    photo.save(tmp_path / "phone.jpg", exif=exif)
    out = tmp_path / "out"
    assert cli(["predict", str(tmp_path / "phone.jpg"), "--model", str(saved_tiny_model), "--out", str(out),
                "--threshold", "0"]) == 0
    with PIL.Image.open(out / "phone.png") as drawing:
        assert drawing.size == (96, 160)
    boxes = [d["box_xyxy"] for d in json.loads((out / "detections.json").read_text())[0]["detections"]]
    assert boxes and all(x1 <= 96 and y1 <= 160 for _, _, x1, y1 in boxes) and any(y1 > 96 for *_, y1 in boxes)
