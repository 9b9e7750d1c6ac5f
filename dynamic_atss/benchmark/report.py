"""The report of `dynamic-atss benchmark speed`: one `Result` per (model, mode, size, batch), our speed as a ratio
to each peer's, and the Markdown table."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from typing import Any

__all__ = ["Result", "compute_ratios", "format_markdown"]


# ----------------------------------------------------------------------------------------------- results
@dataclasses.dataclass
class Result:
    model: str
    kind: str
    mode: str
    height: int
    width: int
    batch_size: int
    iters: int
    latencies_s: list[float]
    cpu_s: list[float]
    peak_mem_mb: float | None = None
    mem_kind: str | None = None
    assign_s: list[float] = dataclasses.field(default_factory=list)  # train: the assigner's seconds per step

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_s)

    def percentile(self, q: float) -> float:
        data = sorted(self.latencies_s)
        if len(data) == 1:
            return data[0]
        position = (len(data) - 1) * q / 100
        low, high = math.floor(position), math.ceil(position)
        return data[low] + (data[high] - data[low]) * (position - low)

    def to_dict(self) -> dict[str, Any]:
        mean = statistics.fmean(self.latencies_s)
        return {
            "model": self.model, "kind": self.kind, "mode": self.mode, "height": self.height, "width": self.width,
            "batch_size": self.batch_size, "iters": self.iters,
            "images_per_s": self.batch_size / mean,
            "images_per_s_p50": self.batch_size / self.p50,
            "latency_ms": {
                "p50": 1e3 * self.p50, "p90": 1e3 * self.percentile(90), "mean": 1e3 * mean,
                "min": 1e3 * min(self.latencies_s), "max": 1e3 * max(self.latencies_s),
            },
            "cv": statistics.pstdev(self.latencies_s) / mean if mean > 0 else 0.0,
            "cpu_s_per_iter": statistics.median(self.cpu_s) if self.cpu_s else None,
            "peak_mem_mb": self.peak_mem_mb,
            "mem_kind": self.mem_kind,
            "assigner_share": statistics.median(self.assign_s) / self.p50 if self.assign_s else None,
            "latencies_ms": [1e3 * t for t in self.latencies_s],
        }  # fmt: skip


def compute_ratios(results: list[Result]) -> list[dict[str, Any]]:
    """Our speed / each peer's, per (mode, size, batch): images/s from median latencies (> 1: we are faster)."""
    ratios = []
    for ours in (r for r in results if r.kind == "ours"):
        for peer in (r for r in results if r.kind == "peer"):
            if (peer.mode, peer.height, peer.width, peer.batch_size) != (ours.mode, ours.height, ours.width, ours.batch_size):
                continue
            ratios.append({
                "model": ours.model, "peer": peer.model, "mode": ours.mode, "height": ours.height,
                "width": ours.width, "batch_size": ours.batch_size, "speedup": peer.p50 / ours.p50,
                "speedup_min": min(peer.latencies_s) / min(ours.latencies_s),
                "cpu_time_ratio": (statistics.median(peer.cpu_s) / statistics.median(ours.cpu_s))
                if ours.cpu_s and peer.cpu_s and statistics.median(ours.cpu_s) > 0 else None,
            })  # fmt: skip
    return ratios


def format_markdown(results: list[Result], ratios: list[dict[str, Any]], peers: Sequence[str]) -> str:
    """One row per (model, mode, size, batch); `×fcos` etc.: our images/s over the peer's (median latencies)."""
    header = ["model", "mode", "input", "batch", "img/s", "p50 ms", "p90 ms", "CPU s/it", "peak MiB", "assigner"]
    header += [f"x{peer}" for peer in peers]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    index = {(r["model"], r["peer"], r["mode"], r["height"], r["width"], r["batch_size"]): r["speedup"] for r in ratios}
    for result in results:
        row = result.to_dict()
        cells = [
            result.model, result.mode, f"{result.height}x{result.width}", str(result.batch_size),
            f"{row['images_per_s_p50']:.3g}", f"{row['latency_ms']['p50']:.1f}", f"{row['latency_ms']['p90']:.1f}",
            "-" if row["cpu_s_per_iter"] is None else f"{row['cpu_s_per_iter']:.2f}",
            "-" if row["peak_mem_mb"] is None else f"{row['peak_mem_mb']:.0f}",
            "" if row["assigner_share"] is None else f"{100 * row['assigner_share']:.1f}%",
        ]
        for peer in peers:
            key = (result.model, peer, result.mode, result.height, result.width, result.batch_size)
            cells.append(f"{index[key]:.2f}" if key in index else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


