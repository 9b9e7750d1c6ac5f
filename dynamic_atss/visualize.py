"""Drawing detections and plotting training curves."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import PIL.Image
import torch
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, make_grid


# A fixed palette (matplotlib's tab10), so a class has the same colour in every drawing and every run.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


# torchvision >= 0.22 draws each label on a filled box of its colour (legible where boxes and labels crowd);
# older releases draw the text only.
_FILLED_LABELS = "fill_labels" in inspect.signature(draw_bounding_boxes).parameters


def class_colour(label: int) -> str:
    """The palette colour of class `label` (the palette repeats after 10 classes)."""
    return PALETTE[int(label) % len(PALETTE)]


def draw_detections(image: Tensor, detections: dict[str, Tensor], class_names: list[str] | None = None,
                    score_thresh: float = 0.3) -> Tensor:
    """(3, H, W) float image in [0, 1] + one image's detections -> (3, H, W) uint8 with boxes coloured by class and
    labelled "class score"."""
    keep = detections["scores"] >= score_thresh
    boxes = detections["boxes"][keep].detach().cpu()
    labels = [
        f"{class_names[int(l)] if class_names else int(l)} {float(s):.2f}"
        for l, s in zip(detections["labels"][keep], detections["scores"][keep])
    ]
    canvas = (image.detach().cpu().clamp(0, 1) * 255).to(torch.uint8)
    if len(boxes) == 0:
        return canvas
    colours = [class_colour(l) for l in detections["labels"][keep].tolist()]
    if _FILLED_LABELS:  # white text on the class colour
        return draw_bounding_boxes(canvas, boxes, labels=labels, colors=colours, width=2, fill_labels=True,
                                   label_colors="white", label_background_colors=colours)
    return draw_bounding_boxes(canvas, boxes, labels=labels, colors=colours, width=2)  # text in the box's colour


def save_png(image: Tensor, path: str | Path) -> None:
    """Write a (3, H, W) uint8 tensor as PNG."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(path)


def save_grid(images: list[Tensor], path: str | Path, columns: int = 4) -> None:
    """Tile same-sized (3, H, W) uint8 images into one PNG."""
    save_png(make_grid(torch.stack(images), nrow=columns, padding=4, pad_value=255), path)


def read_log(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def logged_loss_parts(runs: dict[str, str | Path]) -> tuple[str, ...]:
    """The loss parts (`loss_*`) that the runs' log.jsonl files hold, box losses first, else ("loss",)."""
    logged = {key for log in runs.values() for record in read_log(log) for key in record if key.startswith("loss_")}
    return tuple(sorted(logged, key=lambda key: (not key.startswith("loss_box"), key))) or ("loss",)


def plot_losses(runs: dict[str, str | Path], path: str | Path, keys: tuple[str, ...] | None = None) -> bool:
    """Plot training losses over iterations for one or more runs' log.jsonl (the paper's Figures 2-4 compare the box
    losses with and without the combined IoUs). `keys`: the loss parts to plot, by default every part the logs hold
    (box losses first; a head family names its own parts, e.g. VFNet's `loss_box_init`). Returns False when
    matplotlib is not installed."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    keys = keys or logged_loss_parts(runs)
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
    for axis, key in zip(axes[0], keys):
        for label, log in runs.items():
            records = [r for r in read_log(log) if key in r]
            axis.plot([r["step"] for r in records], [r[key] for r in records], label=label)
        axis.set_title(key)
        axis.set_xlabel("iteration")
        axis.grid(alpha=0.3)
        axis.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
