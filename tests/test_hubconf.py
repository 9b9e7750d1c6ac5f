"""`torch.hub.load(repo_dir, name, source="local")`: hubconf.py's entry points are the registry's constructors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

import dynamic_atss

ROOT = Path(__file__).resolve().parents[1]
TINY = {"backbone": "test_resnet", "fpn_channels": 32, "head.channels": 32, "head.num_groups": 8, "min_size": 64,
        "max_size": 96, "backbone_pretrained": False}


def test_entry_points_are_the_registered_constructors():
    """What `torch.hub.list` reports for a GitHub checkout: the public callables of hubconf.py (it takes no local
    folder, so the module is read here as it does)."""
    spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entry_points = [name for name in dir(hubconf) if callable(getattr(hubconf, name)) and not name.startswith("_")]
    assert sorted(entry_points) == sorted(dynamic_atss.list_models())
    assert all(importlib.util.find_spec(name) for name in hubconf.dependencies)


def test_torch_hub_load_builds_and_loads_like_create(tmp_path):
    model = torch.hub.load(str(ROOT), "dynamic_atss_r50", source="local", num_classes=3, **TINY)
    assert isinstance(model, dynamic_atss.DynamicATSS) and model.config.num_classes == 3
    assert model.config.assigner.pred_weight == 1.0  # Dynamic ATSS: combined IoUs
    model.save_pretrained(tmp_path / "saved")
    loaded = torch.hub.load(str(ROOT), "dynamic_atss_r50", source="local", pretrained=f"local-dir:{tmp_path / 'saved'}")
    expected = dynamic_atss.create(f"local-dir:{tmp_path / 'saved'}")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(loaded.forward_raw(x), expected.forward_raw(x)):
            assert all(torch.equal(u, v) for u, v in zip(a, b))
