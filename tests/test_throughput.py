"""The benchmark scripts: throughput (--quick, JSON), COCO val / test-dev end to end, and their input errors."""

import json
import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from dynamic_atss.benchmark import coco as coco_bench
from dynamic_atss.benchmark import main as benchmark_main
from dynamic_atss.benchmark import throughput

REPO = Path(__file__).resolve().parents[1]
TINY_ARGS = json.dumps({"backbone": "test_resnet", "fpn_channels": 32, "head.channels": 32, "head.num_groups": 8,
                        "min_size": 96, "max_size": 128, "test.score_thresh": 0.0})  # fmt: skip


# ----------------------------------------------------------------------------------------------- throughput
def test_throughput_quick_end_to_end_writes_json(tmp_path, capsys):
    path = tmp_path / "speed.json"
    code = throughput.main(["--quick", "--models", "r50", "r50+bf16", "--iters", "2", "--warmup", "0",
                            "--json", str(path), "--markdown", str(tmp_path / "speed.md"), "-q"])
    assert code == 0
    out = capsys.readouterr().out
    assert "| model | mode |" in out and "xfcos" in out

    report = json.loads(path.read_text())
    assert set(report) >= {"config", "environment", "noise", "results", "ratios", "markdown"}
    assert report["config"]["quick"] is True and report["config"]["peers"] == ["fcos", "retinanet"]
    rows = {(r["model"], r["mode"]) for r in report["results"]}
    expected = {(m, mode) for m in ("r50", "r50+bf16", "fcos", "retinanet") for mode in ("inference", "raw")}
    expected |= {(m, "train") for m in ("r50", "fcos", "retinanet")}  # an inference variant trains as its base
    assert rows == expected
    for row in report["results"]:
        assert row["images_per_s"] > 0 and row["images_per_s_p50"] > 0
        assert set(row["latency_ms"]) == {"p50", "p90", "mean", "min", "max"}
        assert row["latency_ms"]["p50"] <= row["latency_ms"]["p90"] <= row["latency_ms"]["max"]
        assert len(row["latencies_ms"]) == row["iters"] == 2
        assert row["peak_mem_mb"] is not None and row["peak_mem_mb"] >= 0 and row["mem_kind"]
        assert row["cpu_s_per_iter"] > 0
        assert (row["height"], row["width"]) == (128, 128)
        assert row["batch_size"] == (2 if row["mode"] == "train" else 1)
    ratios = {(r["model"], r["peer"], r["mode"]) for r in report["ratios"]}
    assert ("r50+bf16", "fcos", "inference") in ratios and ("r50", "retinanet", "train") in ratios
    # the assigner's share of our training step is reported (and only there)
    shares = {(r["model"], r["mode"]): r["assigner_share"] for r in report["results"]}
    assert 0 < shares[("r50", "train")] < 1 and shares[("fcos", "train")] is None
    assert shares[("r50", "inference")] is None
    assert all(r["speedup"] > 0 for r in report["ratios"])
    assert (tmp_path / "speed.md").read_text().startswith("| model |")


def test_throughput_without_peers_and_only_raw(tmp_path):
    path = tmp_path / "speed.json"
    args = ["--quick", "--no-peers", "--modes", "raw", "--iters", "1", "--warmup", "0", "--no-memory",
            "--sizes", "96x160", "--batch-sizes", "2", "--json", str(path), "-q"]
    assert throughput.main(args) == 0
    report = json.loads(path.read_text())
    assert [(r["model"], r["mode"], r["height"], r["width"], r["batch_size"]) for r in report["results"]] == [
        ("r50", "raw", 96, 160, 2)]
    assert report["ratios"] == [] and report["results"][0]["peak_mem_mb"] is None


def test_throughput_snapshot_rows_and_default_models(tmp_path):
    """'+opt' / '+opt-bf16' are optimize_for_inference snapshots (float32 / bfloat16): inference rows of their own,
    the training row is their base model's; on CPU the default --models are the default path and both snapshots."""
    path = tmp_path / "speed.json"
    args = ["--quick", "--no-peers", "--models", "r50", "r50+opt", "r50+opt-bf16", "--modes", "inference", "raw",
            "train", "--iters", "1", "--warmup", "0", "--no-memory", "--json", str(path), "-q"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a CPU without native bfloat16 warns
        assert throughput.main(args) == 0
    rows = {(r["model"], r["mode"]) for r in json.loads(path.read_text())["results"]}
    assert rows == {(m, mode) for m in ("r50", "r50+opt", "r50+opt-bf16") for mode in ("inference", "raw")} | {
        ("r50", "train")}
    assert throughput.parse_args(["--device", "cpu"]).models == ["r50", "r50+opt", "r50+opt-bf16"]
    with pytest.raises(ValueError, match="one at a time"):
        throughput._split_spec("r50+opt+bf16")
    with pytest.raises(ValueError, match="suffixes"):
        throughput._split_spec("r50+direct")


def test_parse_size_and_bad_options():
    assert throughput.parse_size("800x1216") == (800, 1216)
    assert throughput.parse_size("512") == (512, 512)
    with pytest.raises(Exception, match="HEIGHTxWIDTH"):
        throughput.parse_size("big")
    with pytest.raises(SystemExit):
        throughput.parse_args(["--iters", "0"])
    with pytest.raises(SystemExit):
        throughput.parse_args(["--cls-prior", "1.5"])


def test_peer_is_configured_as_torchvision_users_run_it():
    """FrozenBatchNorm2d + frozen stem/layer1, as torchvision builds FCOS from ImageNet weights; same tensors as
    torchvision's own builder; score_thresh 0.05."""
    from torchvision.models.detection import fcos_resnet50_fpn

    peer = throughput.build_peer("fcos", num_classes=80, min_size=800, max_size=1333)
    body = peer.backbone.body
    assert not any(type(m) is nn.BatchNorm2d for m in peer.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in body.modules()) == 53
    for name, param in body.named_parameters():
        assert param.requires_grad == name.startswith(("layer2", "layer3", "layer4")), name
    assert peer.score_thresh == 0.05 and peer.transform.min_size == (800,) and peer.transform.max_size == 1333

    # torchvision's builder without backbone weights trains BatchNorm2d everywhere: the reason for build_peer
    with pytest.warns(UserWarning, match="trainable_backbone_layers"):
        theirs = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=80, trainable_backbone_layers=3)
    assert any(type(m) is nn.BatchNorm2d for m in theirs.modules())
    ours_shapes = {k: v.shape for k, v in peer.state_dict().items() if "num_batches_tracked" not in k}
    theirs_shapes = {k: v.shape for k, v in theirs.state_dict().items() if "num_batches_tracked" not in k}
    assert ours_shapes == theirs_shapes

    retina = throughput.build_peer("retinanet", backbone="resnet18")
    assert retina.score_thresh == 0.05
    with pytest.raises(ValueError, match="unknown peer"):
        throughput.build_peer("yolo")


def test_cli_entry_points_dispatch(capsys):
    assert benchmark_main([]) == 0
    assert "coco" in capsys.readouterr().out
    assert benchmark_main(["nonsense"]) == 2
    from dynamic_atss.__main__ import main as package_main

    with pytest.raises(SystemExit) as exit_info:  # argparse --help exits 0
        package_main(["benchmark", "coco", "--help"])
    assert exit_info.value.code == 0 and "--split" in capsys.readouterr().out
    # the thin script runs as a file
    result = subprocess.run([sys.executable, "benchmarks/throughput.py", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and "+onnx" in result.stdout


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
    assert coco_bench.main(_coco_args(root, "--split", "val2017", "--out", str(out), "--batch-size", "3")) == 0
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
    assert coco_bench.main(_coco_args(root, "--split", "test-dev2017", "--out", str(out), "--name", "tiny")) == 0
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
        assert coco_bench.main(argv) == 0
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
        coco_bench.run(coco_bench.parse_args(_coco_args(empty, "--split", "val2017")))
    assert "val2017/" in str(error.value)
    assert coco_bench.main(_coco_args(empty)) == 1
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
        coco_bench.run(coco_bench.parse_args(argv))
    # a submission needs every image
    with pytest.raises(SystemExit):
        coco_bench.parse_args(_coco_args(root, "--split", "test-dev2017", "--limit", "2"))


def test_coco_limit_evaluates_a_subset(coco_root, tmp_path):
    root, _ = coco_root
    out = tmp_path / "lim"
    assert coco_bench.main(_coco_args(root, "--limit", "2", "--out", str(out))) == 0
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
    assert coco_bench.main(argv) == 0
    assert "| AP |" in capsys.readouterr().out
    assert json.loads((out / "metrics_validation.json").read_text())["num_images"] == 3
    with pytest.raises(ValueError, match="split 'test' not in .*validation"):
        coco_bench.run(coco_bench.parse_args(["--model", "r50", "--random-weights", "--model-args", TINY_ARGS,
                                              "--data", str(folder), "--split", "test", "--cpu"]))
