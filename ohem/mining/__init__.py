"""Online hard example mining: the selection rule and the RoI heads that use it."""

from ohem.mining.roi_heads import (
    FastRCNNRoIHeads,
    OHEMRoIHeads,
    enable_heuristic_sampling,
    enable_ohem,
    per_roi_loss,
)
from ohem.mining.select import select_hard_examples

__all__ = [
    "FastRCNNRoIHeads",
    "OHEMRoIHeads",
    "enable_heuristic_sampling",
    "enable_ohem",
    "per_roi_loss",
    "select_hard_examples",
]
