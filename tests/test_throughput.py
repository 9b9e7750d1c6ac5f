"""benchmark/throughput.py through `dynamic-atss benchmark speed` (--quick, JSON, peers, snapshot rows); the peers
are in test_peers.py, the command's options and dispatch in test_cli_benchmark.py."""

import json
import warnings

import pytest

from dynamic_atss.cli.benchmark import main as benchmark_main, parse_speed_args
from dynamic_atss.benchmark import peers


# ----------------------------------------------------------------------------------------------- throughput
def test_throughput_quick_end_to_end_writes_json(tmp_path, capsys):
    path = tmp_path / "speed.json"
    code = benchmark_main(["speed", "--quick", "--models", "r50", "r50+bf16", "--iters", "2", "--warmup", "0",
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
    assert benchmark_main(["speed", *args]) == 0
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
        assert benchmark_main(["speed", *args]) == 0
    rows = {(r["model"], r["mode"]) for r in json.loads(path.read_text())["results"]}
    assert rows == {(m, mode) for m in ("r50", "r50+opt", "r50+opt-bf16") for mode in ("inference", "raw")} | {
        ("r50", "train")}
    assert parse_speed_args(["--device", "cpu"]).models == ["r50", "r50+opt", "r50+opt-bf16"]
    with pytest.raises(ValueError, match="one at a time"):
        peers.split_spec("r50+opt+bf16")
    with pytest.raises(ValueError, match="suffixes"):
        peers.split_spec("r50+direct")
