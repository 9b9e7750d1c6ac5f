"""engine/checkpoint.py: finding the checkpoint to resume from."""

import pytest

from dynamic_atss.engine.checkpoint import list_checkpoints, resolve_resume


def test_resume_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resolve_resume("latest", tmp_path)
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_resume(str(tmp_path), tmp_path)


def test_only_complete_checkpoints_are_listed(tmp_path):
    assert list_checkpoints(tmp_path / "missing") == []
    (tmp_path / ".tmp-checkpoint-00000010").mkdir()  # a save that crashed half-way
    assert list_checkpoints(tmp_path) == []
