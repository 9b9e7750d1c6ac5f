"""Tests of dynamic_atss.benchmark.coco."""

import json
import os
import zipfile
from pathlib import Path

import pytest
import torch

from dynamic_atss.benchmark import coco as coco_bench
from dynamic_atss.cli.benchmark import main as benchmark_main, parse_coco_args
TINY_ARGS = json.dumps({"backbone": "test_resnet", "fpn_channels": 32, "head.channels": 32, "head.num_groups": 8,
                        "min_size": 96, "max_size": 128, "test.score_thresh": 0.0})  # fmt: skip


# ----------------------------------------------------------------------------------------------- COCO
def _write_coco(root: Path, split_dir: str, ann_name: str, num_images: int, seed: int, annotated: bool = True):
    """A tiny COCO folder (PNG images + json), via the data package's synthetic shapes."""
    from dynamic_atss.data import SyntheticShapes

    dataset = SyntheticShapes(num_images, image_size=(96, 128), seed=seed, split=split_dir)
    _, ann_file = dataset.write_coco(root, split_dir)
    data = json.loads(Path(ann_file).read_text())
    if not annotated:
        data.pop("annotations")
        os.remove(ann_file)
    (root / "annotations" / ann_name).write_text(json.dumps(data))
    return data


@pytest.fixture
def coco_root(tmp_path):
    root = tmp_path / "coco"
    _write_coco(root, "val2017", "instances_val2017.json", 4, seed=0)
    info = _write_coco(root, "test2017", "image_info_test-dev2017.json", 5, seed=1, annotated=False)
    return root, info


def _coco_args(root, *extra):
    return ["--model", "r50", "--random-weights", "--model-args", TINY_ARGS, "--data", str(root), "--workers", "0",
            "--no-progress", "--cpu", *extra]


def test_coco_val_prints_ap_and_writes_json(coco_root, tmp_path, capsys):
    root, _ = coco_root
    out = tmp_path / "out"
    assert benchmark_main(command="coco", argv=_coco_args(root, "--split", "val2017", "--out", str(out), "--batch-size", "3")) == 0
    printed = capsys.readouterr().out
    assert "| AP | AP50 | AP75 | APs | APm | APl |" in printed
    metrics = json.loads((out / "metrics_val2017.json").read_text())
    assert metrics["num_images"] == 4 and metrics["split"] == "val2017"
    assert set(metrics["metrics"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert metrics["metrics"]["AP50"] > 0  # score_thresh 0: some random boxes hit the large shapes
    detections = json.loads(next(out.glob("detections_val2017_*_results.json")).read_text())
    assert {d["image_id"] for d in detections} == {1, 2, 3, 4}
    assert all(d["category_id"] in (1, 3, 5, 7, 9, 11) for d in detections)  # contiguous labels -> COCO ids


def test_coco_test_dev_writes_complete_submission_zip(coco_root, tmp_path):
    root, info = coco_root
    out = tmp_path / "sub"
    assert benchmark_main(command="coco", argv=_coco_args(root, "--split", "test-dev2017", "--out", str(out), "--name", "tiny")) == 0
    zip_path = out / "detections_test-dev2017_tiny_results.zip"
    with zipfile.ZipFile(zip_path) as zf:
        assert zf.namelist() == ["detections_test-dev2017_tiny_results.json"]
        rows = json.loads(zf.read("detections_test-dev2017_tiny_results.json"))
    assert {r["image_id"] for r in rows} == {img["id"] for img in info["images"]}
    assert all(len(r["bbox"]) == 4 and 0 <= r["score"] <= 1 for r in rows)


def test_coco_model_folder_and_onnx(coco_root, tmp_path, capsys):
    """A saved model folder is loaded by path; --onnx (ONNX Runtime) gives the same AP."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import dynamic_atss as da
    from dynamic_atss.hub import save_model_dir

    root, _ = coco_root
    torch.manual_seed(0)
    model = da.create("r50", num_classes=6, **json.loads(TINY_ARGS))
    folder = save_model_dir(model, tmp_path / "tiny_model")
    results = []
    for fuse in ([], ["--onnx"]):
        out = tmp_path / f"out{len(fuse)}"
        argv = ["--model", str(folder), "--data", str(root), "--workers", "0", "--no-progress", "--cpu",
                "--out", str(out), *fuse]
        assert benchmark_main(command="coco", argv=argv) == 0
        results.append(json.loads((out / "metrics_val2017.json").read_text())["metrics"])
    assert results[0]["AP50"] > 0
    for key in ("AP", "AP50", "AP75"):
        assert abs(results[0][key] - results[1][key]) < 1e-3


def test_coco_bad_inputs_name_what_is_missing(coco_root, tmp_path, capsys):
    root, _ = coco_root
    # a folder that is not a COCO root
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"annotations/instances_val2017\.json") as error:
        coco_bench.run(parse_coco_args(_coco_args(empty, "--split", "val2017")))
    assert "val2017/" in str(error.value)
    assert benchmark_main(command="coco", argv=_coco_args(empty)) == 2
    assert "error:" in capsys.readouterr().err

    # a split that does not exist: the message lists the splits that do
    with pytest.raises(FileNotFoundError, match="split 'val2014'") as error:
        coco_bench.resolve_coco_split(root, "val2014")
    assert "test-dev2017" in str(error.value) and "val2017" in str(error.value)

    # a model folder without weights
    folder = tmp_path / "no_weights"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        coco_bench.load_model(str(folder))
    with pytest.raises(FileNotFoundError, match="not found"):
        coco_bench.load_model(str(tmp_path / "missing_model"))
    # a registered model without published weights
    with pytest.raises(coco_bench.BenchmarkInputError, match="no published weights"):
        coco_bench.load_model("r50")
    with pytest.raises(ValueError, match="unknown model"):
        coco_bench.load_model("r51")
    # a model for another label set
    bad_classes = json.dumps({**json.loads(TINY_ARGS), "num_classes": 80})
    argv = ["--model", "r50", "--random-weights", "--model-args", bad_classes, "--data", str(root), "--cpu",
            "--workers", "0", "--no-progress"]
    with pytest.raises(ValueError, match="80 classes but .* 6 categories"):
        coco_bench.run(parse_coco_args(argv))
    # a submission needs every image
    with pytest.raises(SystemExit):
        parse_coco_args(_coco_args(root, "--split", "test-dev2017", "--limit", "2"))


def test_coco_limit_evaluates_a_subset(coco_root, tmp_path):
    root, _ = coco_root
    out = tmp_path / "lim"
    assert benchmark_main(command="coco", argv=_coco_args(root, "--limit", "2", "--out", str(out))) == 0
    assert json.loads((out / "metrics_val2017.json").read_text())["num_images"] == 2


def test_coco_on_a_hugging_face_dataset(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    import PIL.Image

    from dynamic_atss.data import SyntheticShapes

    syn = SyntheticShapes(3, image_size=(96, 128), seed=2, split="val")
    rows = {"image": [], "image_id": [], "objects": []}
    for i in range(len(syn)):
        arr, objects = syn.render(i)
        rows["image"].append(PIL.Image.fromarray(arr))
        rows["image_id"].append(100 + i)
        rows["objects"].append({"bbox": [[o.box[0], o.box[1], o.box[2] - o.box[0], o.box[3] - o.box[1]] for o in objects],
                                "category": [o.label for o in objects]})
    box = datasets.List(datasets.Value("float32"), length=4)
    features = datasets.Features({
        "image": datasets.Image(), "image_id": datasets.Value("int64"),
        "objects": {"bbox": datasets.List(box), "category": datasets.List(datasets.ClassLabel(names=syn.class_names))},
    })  # fmt: skip
    folder = tmp_path / "hf"
    datasets.DatasetDict(validation=datasets.Dataset.from_dict(rows, features=features)).save_to_disk(str(folder))

    out = tmp_path / "hf_out"
    argv = ["--model", "r50", "--random-weights", "--model-args", TINY_ARGS, "--data", str(folder), "--split",
            "validation", "--workers", "0", "--no-progress", "--cpu", "--out", str(out)]
    assert benchmark_main(command="coco", argv=argv) == 0
    assert "| AP |" in capsys.readouterr().out
    assert json.loads((out / "metrics_validation.json").read_text())["num_images"] == 3
    with pytest.raises(ValueError, match="split 'test' not in .*validation"):
        coco_bench.run(parse_coco_args(["--model", "r50", "--random-weights", "--model-args", TINY_ARGS,
                                              "--data", str(folder), "--split", "test", "--cpu"]))


# ----------------------------------------------------------------------------------------------- issue 25
def test_missing_data_and_missing_image_files_are_one_line_before_the_run(coco_root, tmp_path, capsys, monkeypatch):
    """`--data missing/` was one line with exit status 1; missing image files were a DataLoader worker's traceback."""
    from helpers_cli import one_line_error, run_installed

    result = run_installed("benchmark", "coco", "--model", "r50", "--random_weights", "--data", str(tmp_path / "missing"))
    one_line_error(result, "benchmark coco", "--data: no such folder")
    root, _ = coco_root
    images = sorted((root / "val2017").iterdir())
    images[1].unlink()
    loaded = []
    monkeypatch.setattr(coco_bench, "load_model", lambda *a, **k: loaded.append(a))
    assert benchmark_main(command="coco", argv=_coco_args(root, "--workers", "2")) == 2
    err = capsys.readouterr().err
    assert "1 of the 4 images" in err and images[1].name in err and "Traceback" not in err
    assert loaded == []  # checked before the model is loaded or a worker starts


def test_coco_plots_draws_the_evaluation_figures(coco_root, tmp_path):
    root, _ = coco_root
    out = tmp_path / "out"
    assert benchmark_main(command="coco", argv=_coco_args(root, "--split", "val2017", "--out", str(out), "--limit", "2", "--plots")) == 0
    assert {p.name for p in (out / "plots").iterdir()} == {"pr.png", "per_class_ap.png", "confusion.png"}
