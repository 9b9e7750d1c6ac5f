"""Tiny models of every head family with many detections, shared by the export and ONNX Runtime tests."""

from __future__ import annotations

import torch

import dynamic_atss as da
from dynamic_atss.detection import heads

# A tiny model whose random weights give many detections (prior 0.3: most anchors pass the 0.05 threshold), so
# the comparisons below exercise top-k, NMS and the per-image cap rather than empty outputs.
EXPORT_TINY = {"head.prior_prob": 0.3}


def _tiny(tiny_kwargs, kind="atss", **overrides):
    """A tiny model of head family `kind` (its registered `dynamic_<kind>_r50` variant)."""
    name = f"dynamic_{kind}_r50"
    assert name in da.list_models(), f"register {name} (or teach this test the family's model name)"
    torch.manual_seed(0)
    return da.create(name, num_classes=4, **{**tiny_kwargs, **EXPORT_TINY, **overrides}).eval()


FAMILIES = sorted(heads.FAMILIES)
