"""A tiny training recipe, its writer and a free loopback port, shared by the trainer, train-command, config,
output, data-check, typed-config and demo tests."""

import json
import socket
from pathlib import Path

import yaml


ROOT = Path(__file__).resolve().parents[1]

TINY_RECIPE = {
    "model": "r50",
    "model_overrides": {
        "backbone.name": "test_resnet", "backbone.norm": "bn", "backbone.frozen_stages": -1,
        "fpn_channels": 32, "head.channels": 32, "head.num_groups": 8, "head.num_convs": 2,
        "min_size": 128, "max_size": 128,
    },
    "backbone_pretrained": False,
    "data": {"kind": "synthetic", "num_train": 24, "num_val": 4, "image_size": [128, 128], "num_workers": 0},
    "optim": {"name": "sgd", "lr": 0.01, "base_batch_size": 2, "warmup_iters": 3, "max_iters": 10, "steps": [8]},
    "batch_size": 2,
    "log_every": 1,
    "checkpoint_every": 5,
    "keep_checkpoints": 2,
    "tracker": "none",
}


NO_VAL_DATA = {**TINY_RECIPE["data"], "num_val": 0}


def write_recipe(path: Path, **changes) -> Path:
    recipe = json.loads(json.dumps(TINY_RECIPE))
    for key, value in changes.items():
        recipe[key] = value
    path.write_text(yaml.safe_dump(recipe))
    return path


def free_port() -> int:
    """A free TCP port on the loopback interface (for a rendezvous or a server of a test)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
