"""Online hard example mining: the selection rule, the RoI heads and the RPN that use it."""

from ohem.mining.enable import enable_heuristic_sampling, enable_ohem, enable_rpn_ohem, rebuild_roi_heads
from ohem.mining.heuristic import HeuristicRoIHeads
from ohem.mining.loss_zeroing import LossZeroingRoIHeads
from ohem.mining.roi_heads import LabelledRoIs, OHEMRoIHeads, label_rois, per_roi_loss_terms, readonly_losses
from ohem.mining.rpn import OHEMRegionProposalNetwork, per_anchor_loss, selected_anchor_loss
from ohem.mining.select import select_hard_examples

__all__ = [
    "HeuristicRoIHeads",
    "LabelledRoIs",
    "LossZeroingRoIHeads",
    "OHEMRegionProposalNetwork",
    "OHEMRoIHeads",
    "enable_heuristic_sampling",
    "enable_ohem",
    "enable_rpn_ohem",
    "label_rois",
    "per_anchor_loss",
    "per_roi_loss_terms",
    "readonly_losses",
    "rebuild_roi_heads",
    "select_hard_examples",
    "selected_anchor_loss",
]
