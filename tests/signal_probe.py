"""Run by test_trainer.py, alone or under `accelerate launch`: the root train.py's `main`, where process RANK sends
SIGNAL to its whole process group (the launcher and every rank, as SLURM and a terminal's Ctrl-C do) right after
optimizer step STEP; each rank writes its world size and the step it ended at into OUT/rank<r>.json."""

import json
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train as train_script  # noqa: E402  (the root train.py)
from dynamic_atss.engine import trainer  # noqa: E402

if __name__ == "__main__":
    out, signal_name, at_step, sender, argv = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]
    rank = int(os.environ.get("RANK", "0"))
    original_after_step, original_train = trainer._after_optimizer_step, trainer._train

    def after_step_then_signal(accelerator, config, run, *args, **kwargs):
        original_after_step(accelerator, config, run, *args, **kwargs)
        if run.step == at_step and rank == sender:
            os.killpg(os.getpgid(0), getattr(signal, signal_name))

    def recording_train(accelerator, *args, **kwargs):
        summary = original_train(accelerator, *args, **kwargs)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"rank{rank}.json").write_text(json.dumps({
            "rank": rank, "world_size": accelerator.num_processes, "step": summary["step"],
            "exit_status": summary.get("exit_status")}))
        return summary

    trainer._after_optimizer_step, trainer._train = after_step_then_signal, recording_train
    sys.exit(train_script.main(argv))
