"""The training engine: the run folder, the loop and its hooks, the run's logs."""

from ohem.engine.hooks import Hook
from ohem.engine.trainer import NonFiniteLossError, train

__all__ = ["Hook", "NonFiniteLossError", "train"]
