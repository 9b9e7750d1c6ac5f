"""cli/demo.py: `dynamic-atss demo` takes `train`'s override syntax (the old positional one is gone)."""

from __future__ import annotations

import pytest

from dynamic_atss.cli import demo as demo_cli


def test_demo_takes_trains_override_syntax(monkeypatch, capsys):
    from dynamic_atss import demo

    seen = {}

    def stop(config, overrides, where=""):
        seen["overrides"] = list(overrides)
        raise SystemExit(0)

    monkeypatch.setattr(demo, "config_from_dict", stop)
    with pytest.raises(SystemExit):
        demo_cli.main(["--optim.lr", "0.002", "--data.batch_size=2"])
    assert seen["overrides"] == ["optim.lr=0.002", "data.batch_size=2"]


def test_the_old_positional_overrides_are_refused(capsys):
    """Issue 23, item 7: `demo optim.lr=0.003` was a deprecated spelling; it is gone (argparse names it)."""
    with pytest.raises(SystemExit) as exit_info:
        demo_cli.main(["optim.lr=0.003"])
    assert exit_info.value.code == 2 and "optim.lr=0.003" in capsys.readouterr().err


def test_the_head_choices_are_the_demos_heads():
    from dynamic_atss.demo import HEADS

    assert set(demo_cli.HEADS) == set(HEADS)
