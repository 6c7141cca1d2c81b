"""The shared trainer, its configuration and schedules."""

from softsae_lib.training.checkpoint import CheckpointError
from softsae_lib.training.config import TrainConfig
from softsae_lib.training.trainer import TrainingError, TrainResult, train_sae

__all__ = ["TrainConfig", "train_sae", "TrainResult", "TrainingError", "CheckpointError"]
