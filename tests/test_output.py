"""Tests of dynamic_atss.engine.output."""

import json

import pytest

from dynamic_atss.engine import load_config, train
from dynamic_atss.engine.checkpoint import CheckpointError, list_checkpoints
from dynamic_atss.engine.output import OutputDirError

import train as train_script  # noqa: E402  (the root train.py)
from helpers_trainer import NO_VAL_DATA, TINY_RECIPE, write_recipe


# ---------------------------------------------------------------------------------------------- output folders
def test_output_folder_of_another_run_is_refused_unless_resume_or_overwrite(tmp_path):
    short = {"optim": {**TINY_RECIPE["optim"], "max_iters": 2}, "checkpoint_every": 1, "data": NO_VAL_DATA}
    recipe = write_recipe(tmp_path / "tiny.yaml", output_dir=str(tmp_path / "run"), **short)
    train(load_config(recipe, ["optim.max_iters=4"]))  # an earlier run: checkpoints 3 and 4 survive
    with pytest.raises(OutputDirError, match=r"different configuration \(optim\.lr: 0\.01 -> 0\.02\)"):
        train(load_config(recipe, ["optim.lr=0.02"]))
    with pytest.raises(OutputDirError, match="earlier run of this configuration.*--resume latest"):
        train(load_config(recipe, ["optim.max_iters=4"]))
    with pytest.raises(CheckpointError, match=r"different configuration \(optim\.lr: 0\.01 -> 0\.02\)"):
        train(load_config(recipe, ["optim.lr=0.02"]), resume="latest")
    # --overwrite: the new run's checkpoints are not rotated away by the old run's higher step numbers.
    train(load_config(recipe), overwrite=True)
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["checkpoint-00000001",
                                                                                   "checkpoint-00000002"]
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    unrelated = tmp_path / "notes"
    unrelated.mkdir()
    (unrelated / "todo.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="not empty"):
        train(load_config(recipe, [f"output_dir={unrelated}"]))


def test_a_second_concurrent_run_is_stopped_by_the_lock(tmp_path):
    from filelock import FileLock

    recipe = write_recipe(tmp_path / "tiny.yaml", output_dir=str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    with FileLock(tmp_path / "run" / ".lock"):  # the first run, still training
        with pytest.raises(OutputDirError, match="another training run is writing to"):
            train(load_config(recipe))
    assert not (tmp_path / "run" / "log.jsonl").exists()


def test_an_unwritable_output_folder_is_one_clear_line(tmp_path, capsys):
    """Issue 18, item 17 (train): an output_dir that cannot be made is refused before any work."""
    (tmp_path / "a_file").write_text("")
    recipe = write_recipe(tmp_path / "tiny.yaml", output_dir=str(tmp_path / "a_file" / "run"))
    assert train_script.main(["--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "cannot write to the output folder" in err and "Traceback" not in err
