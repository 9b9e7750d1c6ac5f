"""benchmark/report.py: results, our speed over each peer's, the Markdown table."""

import pytest

from dynamic_atss.benchmark.report import Result, compute_ratios, format_markdown


def _result(model, kind, latencies, mode="inference"):
    return Result(model, kind, mode, 64, 96, 1, len(latencies), latencies, [t / 2 for t in latencies])


def test_ratios_compare_median_latencies_of_the_same_mode_size_and_batch():
    ours, peer = _result("r50", "ours", [0.1, 0.2, 0.3]), _result("fcos", "peer", [0.4, 0.4, 0.5])
    other_mode = _result("fcos", "peer", [1.0], mode="raw")
    ratios = compute_ratios([ours, peer, other_mode])
    assert len(ratios) == 1
    assert ratios[0]["speedup"] == pytest.approx(0.4 / 0.2) and ratios[0]["peer"] == "fcos"
    assert ours.percentile(90) == pytest.approx(0.28)
    table = format_markdown([ours, peer], ratios, ["fcos"])
    lines = table.splitlines()
    assert lines[0].startswith("| model | mode | input |") and lines[0].endswith("| xfcos |")
    assert "| r50 | inference | 64x96 | 1 |" in lines[2] and lines[2].endswith("| 2.00 |")
