"""Which RoIs (and anchors) a detector learns from: the samplers, the RoI head that runs them, OHEM's
selection rule and the RPN that mines its anchors."""

from ohem.mining.enable import (
    build_detector,
    enable_heuristic_sampling,
    enable_ohem,
    enable_rpn_ohem,
    enable_sampler,
    rebuild_roi_heads,
)
from ohem.mining.hard_examples import OHEMSampler
from ohem.mining.heuristic import HeuristicSampler
from ohem.mining.importance import ISMixSampler
from ohem.mining.libra import LibraSampler
from ohem.mining.pisa import PISASampler
from ohem.mining.presample import PresampledOHEMSampler
from ohem.mining.prior import OHEMPriorSampler
from ohem.mining.readonly import ReadOnlySettings, RoILosses, readonly_losses
from ohem.mining.roi_heads import SamplingRoIHeads
from ohem.mining.rois import LabelledRoIs, label_rois, per_roi_loss_terms
from ohem.mining.rpn import OHEMRegionProposalNetwork, per_anchor_loss, selected_anchor_loss
from ohem.mining.sampler import Sample, Sampler, TrainedRows
from ohem.mining.select import select_hard_examples
from ohem.mining.stratified import StratifiedOHEMSampler
from ohem.mining.table import SAMPLERS, build_sampler

__all__ = [
    "SAMPLERS",
    "HeuristicSampler",
    "ISMixSampler",
    "LabelledRoIs",
    "LibraSampler",
    "OHEMRegionProposalNetwork",
    "OHEMPriorSampler",
    "OHEMSampler",
    "PISASampler",
    "PresampledOHEMSampler",
    "ReadOnlySettings",
    "RoILosses",
    "Sample",
    "Sampler",
    "SamplingRoIHeads",
    "StratifiedOHEMSampler",
    "TrainedRows",
    "build_detector",
    "build_sampler",
    "enable_heuristic_sampling",
    "enable_ohem",
    "enable_rpn_ohem",
    "enable_sampler",
    "label_rois",
    "per_anchor_loss",
    "per_roi_loss_terms",
    "readonly_losses",
    "rebuild_roi_heads",
    "select_hard_examples",
    "selected_anchor_loss",
]
