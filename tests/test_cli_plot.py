"""`dynamic-atss plot RUN_DIR` (dynamic_atss/cli/plot.py)."""

from __future__ import annotations

import json

from dynamic_atss.cli.plot import main as plot_main


def test_plot_draws_what_a_running_run_logged_so_far(tmp_path, capsys):
    rows = [{"step": s, "loss": 1.0 / s, "loss_cls": 0.6 / s, "lr": 0.01, "assign/pos_pred_iou": 0.3,
             "assign/pos_anchor_iou": 0.5, "assign/frac_not_atss": 0.1, "assign/pos_per_gt": 5.0,
             "assign/iou_threshold": 0.4} for s in (1, 2, 3)]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo')  # torn
    assert plot_main([str(tmp_path)]) == 0
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {"training.png", "assignment.png"}
    assert str(tmp_path / "plots" / "training.png") in capsys.readouterr().out


def test_plot_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    from dynamic_atss.__main__ import main

    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no log.jsonl" in err
