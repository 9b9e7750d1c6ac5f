"""A tiny mmdetection checkpoint served on loopback and a registry tag pointed at it, shared by the URL-weights,
factory, registry and converter-CLI tests."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import torch

from dynamic_atss import registry

from helpers_mmdet import TINY, mmdet_atss_state_dict

TAG = "atss_r50.mmdet_coco_1x"


def tiny_checkpoint_bytes(tmp_path: Path, seed: int = 0) -> bytes:
    """A tiny checkpoint in mmdetection's layout: {"state_dict": ..., "meta": {"CLASSES": ...}} saved by torch."""
    source = mmdet_atss_state_dict(**TINY, seed=seed)
    source["bbox_head.atss_cls.bias"].fill_(-1.0)  # detections above the 0.05 threshold
    path = tmp_path / f"tiny-{seed}.pth"
    meta = {"CLASSES": ("cat", "dog", "bird"), "epoch": 12, "mmdet_version": "2.0.0", "config": "model = dict(...)"}
    # the legacy (pre-zip) format: mmdetection v2.0's 2020 checkpoints were written by torch < 1.6
    torch.save({"state_dict": source, "meta": meta}, path, _use_new_zipfile_serialization=False)
    return path.read_bytes()


def serve_tiny(server, tmp_path: Path, seed: int = 0) -> tuple[str, bytes, str]:
    """Serve a tiny checkpoint under an mmdetection-style name ending in its SHA-256 prefix; -> (url, bytes, hash)."""
    data = tiny_checkpoint_bytes(tmp_path, seed)
    prefix = hashlib.sha256(data).hexdigest()[:8]
    path = f"/mmdetection/v2.0/atss/atss_tiny_fpn_1x_coco/atss_tiny_fpn_1x_coco_2020-{prefix}.pth"
    server.files[path] = data
    return server.url(path), data, prefix


def point_tag_at(url: str, prefix: str, tag: str = TAG) -> None:
    """The test override: the real entry, with the loopback URL and that file's hash (scratch registry only)."""
    real = registry.get_pretrained_cfg(tag)
    registry.register_pretrained(dataclasses.replace(real, url=url, hash_prefix=prefix), default=True)


def assert_same_raw_outputs(a, b) -> None:
    x = torch.randn(1, 3, 128, 192, generator=torch.Generator().manual_seed(0))
    for model in (a, b):  # small inputs keep the test fast (the resize happens inside the model)
        model.config.min_size, model.config.max_size = 128, 192
    with torch.no_grad():
        for level_a, level_b in zip(a.forward_raw(x), b.forward_raw(x)):
            assert all(torch.equal(u, v) for u, v in zip(level_a, level_b))
        image = [torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(1))]
        det_a, det_b = a.eval()(image)[0], b.eval()(image)[0]
    assert len(det_a["boxes"]) > 0
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(det_a[key], det_b[key])


def cache_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# ---------------------------------------------------------------------------------------------- the index
def without_family(monkeypatch, family: str) -> None:
    """This version as if `family` had no mmdetection head mapping, hence no converter (every family in the index
    has one now)."""
    from dynamic_atss import registry
    from dynamic_atss.convert import mmdet

    monkeypatch.setattr(mmdet, "MMDET_HEADS", {k: v for k, v in mmdet.MMDET_HEADS.items() if v[0] != family})
    monkeypatch.setattr(registry, "_CONVERTERS", {k: v for k, v in registry._CONVERTERS.items() if k != f"mmdet_{family}"})
