"""Run by `accelerate launch` in test_trainer.py: the root train.py's `main`, with each rank writing its view of
the process group once its Accelerator exists (so the test can assert that two processes trained together)."""

import json
import sys
from pathlib import Path

import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train as train_script  # noqa: E402  (the root train.py)
from accelerate import Accelerator  # noqa: E402

if __name__ == "__main__":
    out, argv = Path(sys.argv[1]), sys.argv[2:]
    original_init = Accelerator.__init__

    def recording_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        rank = dist.get_rank() if world_size > 1 else 0
        out.mkdir(parents=True, exist_ok=True)
        (out / f"rank{rank}.json").write_text(json.dumps({
            "rank": rank, "world_size": world_size, "num_processes": self.num_processes,
            "distributed_type": str(self.distributed_type.value)}))

    Accelerator.__init__ = recording_init
    sys.exit(train_script.main(argv))
