"""benchmark/throughput.py (--quick, JSON, peers, snapshot rows) and the benchmark command dispatch; COCO val / test-dev
is in test_benchmark_coco.py."""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from dynamic_atss.benchmark import main as benchmark_main
from dynamic_atss.benchmark import throughput

REPO = Path(__file__).resolve().parents[1]


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
