"""A synthetic mmdetection GFL / GFLV2 state dict, shared by the GFL head and GFL converter tests."""

from __future__ import annotations

import math

import torch

from helpers_mmdet import mmdet_atss_state_dict


# ---------------------------------------------------------------------------------------------- mmdetection converter
def mmdet_gfl_state_dict(num_classes=3, head=32, reg_max=16, dgqp=False, topk=4, hidden=64, seed=0, device="cpu",
                         **kwargs):
    """An mmdetection GFL state dict (GFocalV2 GFLV2 with `dgqp`): the ATSS layout of helpers_mmdet with the
    GFLHead outputs instead of the ATSSHead ones, distinct random values."""
    state = mmdet_atss_state_dict(num_classes=num_classes, head=head, seed=seed, device=device, **kwargs)
    for key in [k for k in state if k.startswith(("bbox_head.atss_",))]:
        del state[key]
    gen = torch.Generator().manual_seed(seed + 100)

    def new(*shape):
        if device == "meta":
            return torch.empty(shape, device="meta")
        return torch.randn(shape, generator=gen) * (0.1 if len(shape) == 1 else math.sqrt(1 / math.prod(shape[1:])))

    state["bbox_head.gfl_cls.weight"], state["bbox_head.gfl_cls.bias"] = new(num_classes, head, 3, 3), new(num_classes)
    state["bbox_head.gfl_reg.weight"] = new(4 * (reg_max + 1), head, 3, 3)
    state["bbox_head.gfl_reg.bias"] = new(4 * (reg_max + 1))
    state["bbox_head.integral.project"] = torch.linspace(0, reg_max, reg_max + 1)
    if dgqp:
        state["bbox_head.reg_conf.0.weight"], state["bbox_head.reg_conf.0.bias"] = new(hidden, 4 * (topk + 1), 1, 1), new(hidden)
        state["bbox_head.reg_conf.2.weight"], state["bbox_head.reg_conf.2.bias"] = new(1, hidden, 1, 1), new(1)
    return state
