"""Tests of dynamic_atss.ops.dcn."""

import torch

from dynamic_atss.ops.dcn import ModulatedDeformConv2d, patch_resnet_dcn


def test_dcn_bottleneck_reproduces_plain_resnet():
    import timm

    trunk = timm.create_model("resnet18", features_only=True, out_indices=(2, 3, 4)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference = trunk(x)
        patched = patch_resnet_dcn(trunk)
        assert patched == 6  # two blocks in each of stages 2-4
        for module in trunk.modules():
            if isinstance(module, ModulatedDeformConv2d):
                module.conv_offset.bias[18:] = 40.0  # offsets 0, mask sigmoid(40) = 1
        out = trunk(x)
    for a, b in zip(out, reference, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # The default initialisation is DCNv2's: offsets 0 and mask 0.5, i.e. half the plain conv.
    dcn = ModulatedDeformConv2d(4, 4, bias=False)
    conv = torch.nn.Conv2d(4, 4, 3, padding=1, bias=False)
    conv.weight.data.copy_(dcn.weight.data)
    y = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(dcn(y), 0.5 * conv(y), atol=1e-5, rtol=1e-5)
