"""Tests of dynamic_atss.engine.schedule."""

import pytest

from dynamic_atss.engine.config import OptimConfig
from dynamic_atss.engine.schedule import lr_factor


def test_warmup_and_step_schedule():
    config = OptimConfig(warmup_iters=500, warmup_factor=1 / 3, steps=(60_000, 80_000))
    assert lr_factor(0, config) == pytest.approx(1 / 3)
    assert lr_factor(250, config) == pytest.approx(2 / 3)
    assert lr_factor(500, config) == 1.0
    assert lr_factor(60_000, config) == pytest.approx(0.1)
    assert lr_factor(85_000, config) == pytest.approx(0.01)
