"""The demo (`dynamic-atss demo`, `dynamic_atss/cli/demo.py`): train a small Dynamic ATSS on the embedded synthetic
dataset (CPU, minutes), evaluate COCO AP on held-out generated images, save the model, draw predictions, plot the
losses; optionally the anchor-IoU baseline next to it (the paper's Figures 2-4) and the AP of the inference
snapshots. The demo replaces what an earlier demo left in its output folder.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from .engine.config import DataConfig, OptimConfig, TrainConfig, config_from_dict, config_to_dict, load_config
from .evaluation import format_table
from .plots import plot_dynamics, read_run_log
from .visualize import draw_detections, plot_losses, save_grid

# The embedded default (the packaged recipe `demo_cpu` holds the same, for `dynamic-atss train --config demo_cpu`).
DEMO_CONFIG = TrainConfig(
    model="r50",
    model_overrides={
        "backbone.name": "resnet10t",
        "backbone.norm": "bn",  # trained from scratch: BatchNorm must learn, nothing frozen
        "backbone.frozen_stages": -1,
        "fpn_channels": 64,
        "head.channels": 64,
        "head.num_groups": 16,
        "head.num_convs": 2,
        "min_size": 192,
        "max_size": 192,
    },
    backbone_pretrained=False,
    data=DataConfig(kind="synthetic", num_train=6000, num_val=100, image_size=(192, 192), num_workers=0),
    optim=OptimConfig(name="adamw", lr=0.003, base_batch_size=8, weight_decay=1e-4, warmup_iters=50,
                      max_iters=600, steps=(480, 560), grad_clip=10.0),
    batch_size=8,
    log_every=10,
    checkpoint_every=200,
    keep_checkpoints=2,
    output_dir="outputs/demo",
    tracker="none",
)


# --head: (model, None = the recipe's own; label with combined IoUs, label of the anchor-IoU baseline, plotted
# losses); the demo's model_overrides (sizes) apply to every head.
HEADS = {
    "atss": (None, "Dynamic ATSS (combined IoUs)", "ATSS (anchor IoUs only)", ("loss_box", "loss_cls", "loss_quality")),
    "gfl": ("dynamic_gfl_r50", "GFL + CIoUs (combined IoUs)", "GFL (anchor IoUs only)", ("loss_box", "loss_dfl", "loss_cls")),
    "gflv2": ("dynamic_gflv2_r50", "GFLV2 + CIoUs (combined IoUs)", "GFLV2 (anchor IoUs only)",
              ("loss_box", "loss_dfl", "loss_cls")),
    "vfnet": ("dynamic_vfnet_r50", "VFNet + CIoUs (combined IoUs)", "VFNet (anchor IoUs only)",
              ("loss_box", "loss_box_init", "loss_cls")),
}


def draw_predictions(model_dir: Path, config: TrainConfig, out_path: Path, count: int = 8) -> None:
    from .data import SyntheticShapes  # noqa: PLC0415
    from .factory import create  # noqa: PLC0415

    model = create(f"local-dir:{model_dir}").eval()
    data = SyntheticShapes(count, config.data.image_size, seed=config.seed, split="val")
    images = [data[i][0] for i in range(count)]
    with torch.no_grad():
        detections = model(images)
    save_grid([draw_detections(img, det, model.config.class_names, 0.5) for img, det in zip(images, detections)], out_path)


def snapshot_ap(model_dir: Path, config: TrainConfig) -> dict[str, float]:
    """COCO AP (0..1) of the saved model on the demo's held-out images: the default path and the float32 / bfloat16
    snapshots of `optimize_for_inference`, evaluated as training evaluates (`engine.trainer.evaluate`)."""
    from accelerate import Accelerator  # noqa: PLC0415

    from .engine.trainer import build_datasets, evaluate  # noqa: PLC0415
    from .inference import optimize_for_inference  # noqa: PLC0415
    from .factory import create  # noqa: PLC0415

    model = create(f"local-dir:{model_dir}").eval()
    _, val_set = build_datasets(config.data, config.seed)
    variants = {"default fp32": model, "snapshot fp32": optimize_for_inference(model),
                "snapshot bf16": optimize_for_inference(model, torch.bfloat16)}
    accelerator = Accelerator(cpu=True)
    return {label: evaluate(m, val_set, accelerator, config.batch_size, config.eval_limit)["AP"]
            for label, m in variants.items()}


def demo_config(config_file: str | None, overrides: list[str], out: str | None = None, iters: int | None = None,
                head: str = "atss") -> TrainConfig:
    """The demo's training config: a recipe file or the embedded default, with `--section.key value` overrides, the
    output folder, the iterations (milestones scaled along) and the head family's model."""
    if config_file:
        config = load_config(config_file, overrides)
    else:
        config = config_from_dict(config_to_dict(DEMO_CONFIG), overrides, where="embedded demo config")
    if out:
        config.output_dir = out
    if iters:
        config.optim = dataclasses.replace(config.optim, max_iters=iters,
                                           steps=tuple(int(s * iters / config.optim.max_iters) for s in config.optim.steps))
    model_name = HEADS[head][0]
    if model_name:
        config.model = model_name
    return config


def run_demo(config: TrainConfig, head: str = "atss", compare: bool = False, with_snapshot_ap: bool = False
             ) -> dict[str, Any]:
    """Train (and with `compare` the anchor-IoU baseline), report, draw and plot; returns the summary it writes to
    `OUTPUT_DIR/demo_summary.json`."""
    from .engine.trainer import final_report, train  # noqa: PLC0415  (imports accelerate)

    _, main_label, baseline_label, plotted_losses = HEADS[head]
    out = Path(config.output_dir)
    start = time.perf_counter()
    runs = {main_label: config}
    if compare:
        baseline = dataclasses.replace(
            config, output_dir=str(out / f"{head}_baseline"),
            model_overrides={**config.model_overrides, "assigner.pred_weight": 0.0},
        )
        runs[baseline_label] = baseline
    summaries = {}
    for label, run_config in runs.items():
        print(f"\n=== training {label}: {run_config.optim.max_iters} iterations -> {run_config.output_dir}")
        summaries[label] = train(run_config, overwrite=True)
    wall = time.perf_counter() - start

    main_summary = summaries[main_label]
    print("\n" + final_report(main_summary, f"COCO AP on held-out generated images ({main_label})", per_class=True))
    for label, summary in summaries.items():
        if label != main_label:
            print(f"\n{label}:\n{format_table(summary['metrics'])}")
    if with_snapshot_ap:
        ap = snapshot_ap(Path(main_summary["model_dir"]), config)
        report_ap = ", ".join(f"{label} {100 * value:.2f}" for label, value in ap.items())
        print(f"\nAP of the saved model: {report_ap} (bf16 - fp32: "
              f"{100 * (ap['snapshot bf16'] - ap['default fp32']):+.2f})")
    draw_predictions(Path(main_summary["model_dir"]), config, out / "predictions.png")
    plotted = plot_losses({label: s["log"] for label, s in summaries.items()}, out / "losses.png", plotted_losses)
    if plotted and compare:  # both runs' assignment dynamics in one figure (dynamic_atss.plots)
        plot_dynamics({label: read_run_log(Path(s["log"]).parent) for label, s in summaries.items()}, out / "assignment.png")
    report = {
        "wall_seconds": round(wall, 1),
        "train_seconds": {label: round(s["train_seconds"], 1) for label, s in summaries.items()},
        "AP": {label: s["metrics"].get("AP") for label, s in summaries.items()},
        "model_dir": main_summary["model_dir"],
    }
    if with_snapshot_ap:
        report["snapshot_AP"] = ap
    (out / "demo_summary.json").write_text(json.dumps(report, indent=2))
    print(f"\npredictions: {out / 'predictions.png'}")
    print(f"loss plot: {out / 'losses.png'}" if plotted else "loss plot skipped (pip install matplotlib)")
    print(f"wall time: {wall:.0f} s")
    return report
