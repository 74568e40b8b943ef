"""Detectors: torchvision's two-stage family, the paper's VGG networks, a small CPU model, and
Fast R-CNN on proposal files; ``build_model`` makes the configured one (``ohem.mining.build_detector``
adds its sampler)."""

from ohem.models.build import BUILDERS, PROPOSAL_MODELS, build_model, load_backbone_weights
from ohem.models.fast_rcnn import FastRCNN, backbone_features
from ohem.models.small import SmallBackbone, small_fast_rcnn, small_faster_rcnn

__all__ = [
    "BUILDERS",
    "PROPOSAL_MODELS",
    "FastRCNN",
    "SmallBackbone",
    "backbone_features",
    "build_model",
    "load_backbone_weights",
    "small_fast_rcnn",
    "small_faster_rcnn",
]
