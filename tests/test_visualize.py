"""Tests of dynamic_atss.visualize."""

from __future__ import annotations

import pytest


def test_loss_plot_shows_every_logged_part(tmp_path):
    from dynamic_atss.visualize import logged_loss_parts, plot_losses

    logs = {}
    for name in ("vfnet", "dynamic_vfnet"):
        logs[name] = tmp_path / f"{name}.jsonl"
        logs[name].write_text("\n".join(
            '{"step": %d, "loss": 3.0, "loss_cls": 1.0, "loss_box": 1.2, "loss_box_init": 0.8, "lr": 0.01}' % step
            for step in (10, 20)))
    assert logged_loss_parts(logs) == ("loss_box", "loss_box_init", "loss_cls")
    pytest.importorskip("matplotlib")
    assert plot_losses(logs, tmp_path / "losses.png") and (tmp_path / "losses.png").stat().st_size > 0
