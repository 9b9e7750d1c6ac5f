"""engine/checkpoint.py: finding the checkpoint to resume from."""

import pytest

from dynamic_atss.engine.checkpoint import CheckpointError, list_checkpoints, resolve_resume


def test_resume_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resolve_resume("latest", tmp_path)
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_resume(str(tmp_path), tmp_path)


def test_only_complete_checkpoints_are_listed(tmp_path):
    assert list_checkpoints(tmp_path / "missing") == []
    (tmp_path / ".tmp-checkpoint-00000010").mkdir()  # a save that crashed half-way
    assert list_checkpoints(tmp_path) == []


def test_a_checkpoint_of_a_release_before_ema_resumes_unless_ema_is_switched_on(tmp_path):
    from dynamic_atss.engine.checkpoint import check_same_run
    from dynamic_atss.engine.config import TrainConfig, config_to_dict

    current = config_to_dict(TrainConfig())
    saved = {k: v for k, v in current.items() if k not in ("ema", "save_best", "push_best")}  # an older release
    check_same_run(tmp_path, {"config": saved}, current, 16)
    with pytest.raises(CheckpointError, match=r"ema.enabled: '<unset>' -> True"):
        check_same_run(tmp_path, {"config": saved}, {**current, "ema": {**current["ema"], "enabled": True}}, 16)
