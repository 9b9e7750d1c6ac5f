"""Export: ONNX (raw and with NMS in the graph, dynamic batch and size, DCN through DeformConv),
ONNX Runtime detections equal to eager PyTorch, torch.export of forward_raw for every head family, the CLI."""

from __future__ import annotations

import pytest
import torch

from dynamic_atss.inference import export_program, raw_output_names

from helpers_export import FAMILIES, _tiny


# ----------------------------------------------------------------------------------------------- torch.export
@pytest.mark.parametrize("kind", FAMILIES)
def test_torch_export_of_forward_raw_matches_eager_for_every_family(tiny_kwargs, kind):
    model = _tiny(tiny_kwargs, kind)
    program = export_program(model)
    assert isinstance(program, torch.export.ExportedProgram)
    # another batch size and image size than the example (dynamic shapes)
    x = torch.randn(3, 3, 256, 352)
    with torch.no_grad():
        expected = [t for level in model.forward_raw(x) for t in level]
        got = program.module()(x)
    assert len(got) == len(expected) == len(raw_output_names(model))
    for e, g in zip(expected, got, strict=True):
        assert e.shape == g.shape
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


def test_torch_export_of_a_dcn_model(tiny_kwargs):
    model = _tiny(tiny_kwargs, **{"head.dcn_last_conv": True})
    program = export_program(model)
    x = torch.randn(1, 3, 320, 256)
    with torch.no_grad():
        expected = [t for level in model.forward_raw(x) for t in level]
        got = program.module()(x)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", FAMILIES)
def test_onnx_with_postprocess_from_the_cli_matches_eager(onnx_deps, tiny_kwargs, tmp_path, capsys, kind,
                                                          assert_same_detections):
    """`python -m dynamic_atss export --with-postprocess` on a saved model folder: NMS in the graph, dynamic
    batch and size; ONNX Runtime's detections equal eager PyTorch's."""
    from dynamic_atss.__main__ import main
    from dynamic_atss.hub import save_model_dir
    from dynamic_atss.inference import OnnxRuntimeDetector

    model = _tiny(tiny_kwargs, kind, min_size=256, max_size=416)
    model.config.test.max_detections = 30  # the per-image cap is inside the graph too
    folder = save_model_dir(model, tmp_path / "tiny")
    out = tmp_path / "detect.onnx"
    assert main(["export", "--model", str(folder), "--format", "onnx", "--out", str(out), "--with-postprocess"]) == 0
    assert "wrote" in capsys.readouterr().out and out.stat().st_size > 0

    runner = OnnxRuntimeDetector(out, model)
    assert runner.with_postprocess
    images = [torch.rand(3, 256, 400), torch.rand(3, 300, 260), torch.rand(3, 200, 330)]
    with torch.no_grad():
        expected = model(images)
    got = runner(images)
    assert all(len(d["boxes"]) == 30 for d in expected)
    assert_same_detections(expected, got)


def test_onnx_dcn_model_exports_through_deformconv(onnx_deps, tiny_kwargs, tmp_path):
    from dynamic_atss.inference import OnnxRuntimeDetector, export_onnx

    model = _tiny(tiny_kwargs, **{"head.dcn_last_conv": True})
    with torch.no_grad():
        model.head.cls_tower[-3].conv_offset.weight.normal_(0, 0.05)  # real offsets, not the zero init
    with pytest.raises(NotImplementedError, match="opset 19"):
        export_onnx(model, tmp_path / "old.onnx", opset=17)
    path = export_onnx(model, tmp_path / "dcn.onnx")  # checks ONNX Runtime against PyTorch itself
    import onnx

    assert "DeformConv" in {node.op_type for node in onnx.load(str(path)).graph.node}
    x = torch.randn(2, 3, 256, 320)
    runner = OnnxRuntimeDetector(path, model)
    with torch.no_grad():
        expected = model.forward_raw(x)
    for e_list, g_list in zip(expected, runner.run_raw(x), strict=True):
        for e, g in zip(e_list, g_list, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)

