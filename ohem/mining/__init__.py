"""Online hard example mining: the selection rule, the RoI heads and the RPN that use it."""

from ohem.mining.roi_heads import (
    FastRCNNRoIHeads,
    OHEMRoIHeads,
    enable_heuristic_sampling,
    enable_ohem,
    per_roi_loss,
)
from ohem.mining.rpn import OHEMRegionProposalNetwork, enable_rpn_ohem, per_anchor_loss, selected_anchor_loss
from ohem.mining.select import select_hard_examples

__all__ = [
    "FastRCNNRoIHeads",
    "OHEMRegionProposalNetwork",
    "OHEMRoIHeads",
    "enable_heuristic_sampling",
    "enable_ohem",
    "enable_rpn_ohem",
    "per_anchor_loss",
    "per_roi_loss",
    "select_hard_examples",
    "selected_anchor_loss",
]
