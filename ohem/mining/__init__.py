"""Which RoIs (and anchors) a detector learns from: the sampler base and its built-in samplers (one
file each in ``ohem.mining.samplers``), the RoI head that runs them, OHEM's selection rule and the
RPN that mines its anchors."""

from ohem.mining.enable import (
    build_detector,
    enable_heuristic_sampling,
    enable_ohem,
    enable_rpn_ohem,
    enable_sampler,
    installed_sampler,
    rebuild_roi_heads,
)
from ohem.mining.readonly import PerRoILoss, ReadOnlySettings, readonly_pass
from ohem.mining.roi_heads import SamplingRoIHeads
from ohem.mining.rois import LabelledRoIs, label_rois, unreduced_loss_terms, weighted_roi_loss
from ohem.mining.rpn import OHEMRegionProposalNetwork, per_anchor_loss, selected_anchor_loss
from ohem.mining.sampler import (
    SAMPLERS,
    ReadOnlyPassSampler,
    Sample,
    SamplerBase,
    TrainedRows,
    each_image,
    load_builtin_samplers,
    random_fg_bg,
    random_subset,
    register_sampler,
    rows_per_image,
    sampler_class,
)
from ohem.mining.samplers.heuristic import HeuristicSampler
from ohem.mining.samplers.is_mix import ISMixSampler
from ohem.mining.samplers.libra import LibraSampler
from ohem.mining.samplers.ohem import OHEMSampler
from ohem.mining.samplers.ohem_presample import PresampledOHEMSampler
from ohem.mining.samplers.ohem_prior import OHEMPriorSampler
from ohem.mining.samplers.ohem_stratified import StratifiedOHEMSampler
from ohem.mining.samplers.pisa import PISASampler
from ohem.mining.select import select_hard_examples

load_builtin_samplers()  # every built-in in SAMPLERS, the ones not re-exported above included

__all__ = [
    "SAMPLERS",
    "HeuristicSampler",
    "ISMixSampler",
    "LabelledRoIs",
    "LibraSampler",
    "OHEMPriorSampler",
    "OHEMRegionProposalNetwork",
    "OHEMSampler",
    "PISASampler",
    "PerRoILoss",
    "PresampledOHEMSampler",
    "ReadOnlyPassSampler",
    "ReadOnlySettings",
    "Sample",
    "SamplerBase",
    "SamplingRoIHeads",
    "StratifiedOHEMSampler",
    "TrainedRows",
    "build_detector",
    "each_image",
    "enable_heuristic_sampling",
    "enable_ohem",
    "enable_rpn_ohem",
    "enable_sampler",
    "installed_sampler",
    "label_rois",
    "load_builtin_samplers",
    "per_anchor_loss",
    "random_fg_bg",
    "random_subset",
    "readonly_pass",
    "rebuild_roi_heads",
    "register_sampler",
    "rows_per_image",
    "sampler_class",
    "select_hard_examples",
    "selected_anchor_loss",
    "unreduced_loss_terms",
    "weighted_roi_loss",
]
