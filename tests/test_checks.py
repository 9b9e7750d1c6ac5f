"""The up-front data scan (dynamic_atss.data.checks) and what the trainer does with it."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest

from dynamic_atss.data import CocoDetection, HFDetection
from dynamic_atss.data.checks import scan_dataset
from dynamic_atss.engine import load_config, train
from dynamic_atss.engine import trainer
from dynamic_atss.engine.trainer import DataCheckError
from helpers_trainer import TINY_RECIPE, write_recipe


def write_coco(folder, num_images=6, crowd=False, truncate=(), wrong_size=(), fmt="JPEG"):
    """A small COCO folder of noise images, one box each; `truncate` / `wrong_size`: indices to spoil."""
    images_dir = folder / "images"
    images_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i in range(num_images):
        name = f"img{i}.{'jpg' if fmt == 'JPEG' else 'png'}"
        pixels = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        PIL.Image.fromarray(pixels).save(buffer, format=fmt)
        data = buffer.getvalue()
        if i in truncate:
            data = data[: len(data) // 2]  # a download cut short: the header is intact
        (images_dir / name).write_bytes(data)
        height, width = (64, 80) if i not in wrong_size else (80, 64)
        images.append({"id": i + 1, "file_name": name, "height": height, "width": width})
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [10, 10, 30, 25],
                            "iscrowd": int(crowd), "area": 750})
    ann_file = folder / "instances.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations,
                                    "categories": [{"id": 1, "name": "thing"}]}))
    return images_dir, ann_file


def coco_recipe(tmp_path, images_dir, ann_file, **data):
    return write_recipe(
        tmp_path / "coco.yaml", output_dir=str(tmp_path / "run"), checkpoint_every=0,
        model_overrides={**TINY_RECIPE["model_overrides"], "min_size": 64, "max_size": 96},
        optim={**TINY_RECIPE["optim"], "max_iters": 2},
        data={"kind": "coco", "train_images": str(images_dir), "train_annotations": str(ann_file), "num_workers": 0,
              **data},
    )


@pytest.fixture
def no_model(refuse):
    """Fails the test if the trainer gets as far as building a model."""
    refuse(trainer, "build_model")


def test_scan_finds_truncated_and_mis_sized_images(tmp_path):
    images_dir, ann_file = write_coco(tmp_path, truncate=(2,), wrong_size=(4,))
    report = scan_dataset(CocoDetection(images_dir, ann_file), "train")
    problems = dict(report.bad)
    assert sorted(problems) == [2, 4]
    assert "img2.jpg" in problems[2] and "unreadable" in problems[2]
    assert "img4.jpg" in problems[4] and "80x64 (as viewers show it" in problems[4]
    assert "annotations say 64x80" in problems[4]
    assert report.summary() == ("data check (train): 6 images, 6 boxes, 0 without a box (0 with only crowd regions), "
                                "2 unreadable or mis-sized")


def test_scan_of_png_and_hf_rows(tmp_path):
    images_dir, ann_file = write_coco(tmp_path, truncate=(1,), fmt="PNG")
    assert [i for i, _ in scan_dataset(CocoDetection(images_dir, ann_file), "train").bad] == [1]
    rows = {"image": [{"bytes": p.read_bytes(), "path": None} for p in sorted(images_dir.iterdir())],
            "objects": [{"bbox": [[1, 1, 5, 5]], "category": [0]} for _ in range(6)]}
    features = datasets.Features({"image": datasets.Image(), "objects": {
        "bbox": datasets.Sequence(datasets.Sequence(datasets.Value("float32"), length=4)),
        "category": datasets.Sequence(datasets.ClassLabel(names=["thing"]))}})
    hf = HFDetection(datasets.Dataset.from_dict(rows, features=features))
    report = scan_dataset(hf, "train")
    assert [i for i, _ in report.bad] == [1] and "row 1" in report.bad[0][1] and report.num_boxes == 6


def test_a_truncated_image_stops_training_up_front_naming_the_file(tmp_path, no_model):
    images_dir, ann_file = write_coco(tmp_path, truncate=(3,))
    with pytest.raises(DataCheckError, match=r"1 image\(s\) of the train set cannot be used:\n  image id 4 \(.*img3\.jpg\)"):
        train(load_config(coco_recipe(tmp_path, images_dir, ann_file)))


def test_skip_unreadable_trains_without_them_and_warns_once(tmp_path):
    images_dir, ann_file = write_coco(tmp_path, truncate=(0, 3))
    recipe = coco_recipe(tmp_path, images_dir, ann_file, skip_unreadable=True)
    with pytest.warns(UserWarning, match=r"leaving out 2 image\(s\) of the train set:\n  .*img0\.jpg.*\n  .*img3\.jpg"):
        summary = train(load_config(recipe))
    assert summary["step"] == 2  # 4 readable images, batch 2: every batch decodes


def test_an_all_crowd_dataset_is_refused_before_training(tmp_path, no_model, capsys):
    images_dir, ann_file = write_coco(tmp_path, crowd=True)
    with pytest.raises(DataCheckError, match=r"no box to learn from: 6 images, 6 without a box \(6 with only crowd"):
        train(load_config(coco_recipe(tmp_path, images_dir, ann_file)))
    assert "data check (train): 6 images, 0 boxes, 6 without a box (6 with only crowd regions)" in capsys.readouterr().out


def corrupt_png_data(path):
    """Spoil the pixel data of a PNG inside its IDAT chunk; the header, the chunk lengths and IEND stay valid, so
    the fast scan (headers and end markers) cannot see it and only decoding fails."""
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 4
    data[start + 20 : start + 60] = bytes(range(40))  # garbage in the middle of the zlib stream
    path.write_bytes(bytes(data))


def test_an_image_that_fails_to_decode_at_load_time_is_skipped_and_reported(tmp_path, capsys):
    """Issue 18, item 2: a PNG with a corrupt data chunk passes the scan; under data.skip_unreadable the trainer
    replaces it by the next readable image (same batches on every process and on resume) and reports it."""
    images_dir, ann_file = write_coco(tmp_path, fmt="PNG")
    corrupt_png_data(images_dir / "img1.png")
    assert scan_dataset(CocoDetection(images_dir, ann_file), "train").bad == []  # the scan cannot see it
    recipe = coco_recipe(tmp_path, images_dir, ann_file, skip_unreadable=True)
    with pytest.warns(UserWarning, match=r"data.skip_unreadable: cannot read image file for image id 2: .*img1\.png"):
        summary = train(load_config(recipe, ["optim.max_iters=4"]))  # 4 steps of 2 = every image at least once
    assert summary["step"] == 4 and (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert len(summary["unreadable_images"]) == 1 and "img1.png" in summary["unreadable_images"][0]
    report = trainer.final_report(summary)
    assert "data.skip_unreadable: 1 image(s) failed to load" in report and "img1.png" in report

    # Without skip_unreadable: exit status 2 and one line naming the file and the option (also when a loader
    # worker process met the file).
    from dynamic_atss.cli.train import main as train_main

    assert train_main(["--config", str(coco_recipe(tmp_path, images_dir, ann_file)), "--output_dir",
                       str(tmp_path / "strict"), "--optim.max_iters", "4", "--data.num_workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "img1.png" in err and "data.skip_unreadable: true" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1


def test_a_category_missing_from_categories_stops_before_the_folder_is_claimed(tmp_path, capsys, no_model):
    """Issue 18, item 14: exit 2 with one line naming the annotation, and the corrected rerun is not refused."""
    from dynamic_atss.cli.train import main as train_main

    images_dir, ann_file = write_coco(tmp_path)
    data = json.loads(ann_file.read_text())
    data["annotations"][3]["category_id"] = 7
    ann_file.write_text(json.dumps(data))
    assert train_main(["--config", str(coco_recipe(tmp_path, images_dir, ann_file))]) == 2
    err = capsys.readouterr().err
    assert "annotation id 4" in err and "7" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "train_config.json").exists()  # nothing of a run: a rerun is accepted


@pytest.mark.skipif(shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None,
                    reason="accelerate CLI missing")
def test_two_processes_skip_an_image_that_fails_to_decode_in_step(tmp_path):
    """Issue 18, item 2 with a real 2-process CPU launch: both processes replace the image alike (no hang, no
    crash) and the final report names the file."""
    from helpers_trainer import ROOT, free_port

    images_dir, ann_file = write_coco(tmp_path, num_images=8, fmt="PNG")
    corrupt_png_data(images_dir / "img1.png")
    recipe = coco_recipe(tmp_path, images_dir, ann_file, skip_unreadable=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
         str(free_port()), str(ROOT / "train.py"), "--config", str(recipe), "--optim.max_iters", "4",
         "--batch_size", "1"],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["effective"]["num_processes"] == 2
    assert "data.skip_unreadable: 1 image(s) failed to load" in result.stdout and "img1.png" in result.stdout
