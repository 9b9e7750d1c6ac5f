"""Tests of dynamic_atss.inference.runtime."""

from __future__ import annotations

import pytest
import torch

from helpers_export import FAMILIES, _tiny


@pytest.mark.parametrize("kind", FAMILIES)
def test_onnx_runtime_equals_the_default_path(onnx_deps, tiny_kwargs, tmp_path, kind, assert_same_detections):
    """ONNX Runtime gives the default path's detections (same labels, boxes within 1e-3 relative)
    on real-sized images of different sizes in one batch, and the raw outputs at another batch / size."""
    from dynamic_atss.inference import onnx_runtime

    model = _tiny(tiny_kwargs, kind, min_size=480, max_size=640)
    fast = onnx_runtime(model, tmp_path / "raw.onnx")
    images = [torch.rand(3, 480, 640), torch.rand(3, 375, 500)]
    with torch.no_grad():
        expected = model(images)
    assert_same_detections(expected, fast(images))
    x = torch.randn(3, 3, 256, 288)
    with torch.no_grad():
        raw = model.forward_raw(x)
    for e_list, g_list in zip(raw, fast.run_raw(x), strict=True):
        for e, g in zip(e_list, g_list, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
