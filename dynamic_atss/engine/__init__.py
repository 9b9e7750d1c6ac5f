"""Training with Hugging Face Accelerate."""

from .config import DataConfig, OptimConfig, TrainConfig, load_config
from .trainer import NonFiniteLossError, evaluate, train

__all__ = ["DataConfig", "NonFiniteLossError", "OptimConfig", "TrainConfig", "evaluate", "load_config", "train"]
