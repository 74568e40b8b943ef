"""Swap a sampler into any torchvision two-stage detector, in place, keeping every module and weight; and
``build_detector``: the configured detector with its configured sampler."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork

from ohem.config import ConfigError, ModelConfig, Range, SamplerConfig, bg_floor_message
from ohem.mining.roi_heads import SamplingRoIHeads
from ohem.mining.rpn import OHEMRegionProposalNetwork
from ohem.mining.sampler import Sampler
from ohem.mining.table import build_sampler
from ohem.models import PROPOSAL_MODELS, build_model


def build_detector(
    model_cfg: ModelConfig, sampler_cfg: SamplerConfig, num_classes: int, load_weights: bool = True
) -> GeneralizedRCNN:
    """The configured detector for ``num_classes`` object classes (background excluded), with its sampler.
    ``load_weights=False``: no backbone weights read or downloaded (``ohem.models.build_model``)."""
    model = build_model(model_cfg, num_classes, load_weights)
    if sampler_cfg.rpn_ohem and getattr(model, "rpn", None) is None:
        raise ValueError(f"sampler.rpn_ohem: {model_cfg.name} has no RPN (it reads its proposals from a file)")
    enable_sampler(model, sampler_cfg, box_loss_beta=model_cfg.box_loss_beta)
    if model_cfg.box_target_norm == "empirical":
        if model_cfg.name not in PROPOSAL_MODELS:
            raise ValueError(
                f"model.box_target_norm: empirical is measured on proposal files; {model_cfg.name} has an RPN "
                "whose proposals change as it trains (use fixed)"
            )
        model.roi_heads.use_empirical_box_targets()
    return model


def enable_sampler(model: nn.Module, sampler: SamplerConfig | Sampler, box_loss_beta: float | None = None) -> nn.Module:
    """A ``SamplingRoIHeads`` training on what ``sampler`` picks in ``model.roi_heads`` (and, with
    ``rpn_ohem`` in a ``SamplerConfig``, OHEM in the RPN too); returns ``model``. ``sampler``: a
    ``SamplerConfig`` (its ``method`` names the sampler in ``ohem.mining.SAMPLERS``) or a sampler
    object; a sampler with an ``initialise(heads)`` method has it called here, once (should it fail, the
    model is left as it was). ``box_loss_beta``: the box loss's smooth-L1 beta (torchvision's 1/9; Fast
    R-CNN's 1); None keeps the one of a ``SamplingRoIHeads`` already there (a sampler installed again keeps
    its box loss and its box-target normalisation), else 1/9."""
    config = sampler if isinstance(sampler, SamplerConfig) else None
    heads = _roi_heads_of(model)
    head_bg_iou = heads.proposal_matcher.low_threshold
    if config and config.bg_iou_low is not None and config.bg_iou_low >= head_bg_iou:
        raise ConfigError(bg_floor_message(config.bg_iou_low, head_bg_iou))  # your head's own threshold
    chosen = build_sampler(config) if config else sampler
    installed = heads if isinstance(heads, SamplingRoIHeads) else None
    if box_loss_beta is None:
        box_loss_beta = installed.box_loss_beta if installed else ModelConfig.box_loss_beta
    Range(0, 100).check("box_loss_beta", box_loss_beta)  # model.box_loss_beta's range
    new = rebuild_roi_heads(SamplingRoIHeads, heads, sampler=chosen, box_loss_beta=box_loss_beta)
    if installed is not None:  # the box coder (weights 1 under empirical targets) is rebuilt from its weights
        new.box_target_norm = installed.box_target_norm  # the same module: its measured mean and std
    initialise = getattr(chosen, "initialise", None)
    if initialise is not None:  # once, on install: a checkpoint loaded afterwards overwrites it
        before = {k: v.detach().to("cpu", copy=True) for k, v in heads.state_dict().items()}
        try:
            initialise(new)
        except BaseException:
            heads.load_state_dict(before)  # the modules are shared: undo what it changed before failing
            raise
    model.roi_heads = new
    return enable_rpn_ohem(model, config.rpn_nms_iou) if config and config.rpn_ohem else model


def enable_ohem(
    model: nn.Module,
    sampler: SamplerConfig | None = None,
    box_loss_beta: float | None = None,
    **settings: Any,
) -> nn.Module:
    """OHEM in ``model.roi_heads``; returns ``model``. ``settings`` are ``SamplerConfig`` fields
    (``batch_size_per_image=64, nms_iou=0.7, mining_loss="cls+box", ...``) over ``sampler``.
    With ``rpn_ohem=True`` the RPN mines its anchors too."""
    return enable_sampler(
        model, dataclasses.replace(sampler or SamplerConfig(), method="ohem", **settings), box_loss_beta
    )


def enable_heuristic_sampling(
    model: nn.Module,
    sampler: SamplerConfig | None = None,
    box_loss_beta: float | None = None,
    **settings: Any,
) -> nn.Module:
    """Fast R-CNN's sampler in ``model.roi_heads``: ``fg_fraction`` foreground, background from IoU
    in [``bg_iou_low`` (default 0.1), 0.5); ``settings`` are ``SamplerConfig`` fields over ``sampler``."""
    return enable_sampler(
        model, dataclasses.replace(sampler or SamplerConfig(), method="heuristic", **settings), box_loss_beta
    )


def enable_rpn_ohem(
    model: nn.Module, nms_iou: float | None = SamplerConfig.rpn_nms_iou, batch_size_per_image: int | None = None
) -> nn.Module:
    """``OHEMRegionProposalNetwork`` in ``model.rpn`` (beyond the paper); ``batch_size_per_image=None``
    keeps the RPN's own anchors per image (torchvision: 256)."""
    rpn = getattr(model, "rpn", None)
    if not isinstance(rpn, RegionProposalNetwork):
        raise TypeError(
            f"expected a torchvision detector with a RegionProposalNetwork at .rpn, got {type(model).__name__}"
        )
    model.rpn = OHEMRegionProposalNetwork.from_rpn(rpn, nms_iou=nms_iou, batch_size_per_image=batch_size_per_image)
    return model


def rebuild_roi_heads(cls: type[RoIHeads], heads: RoIHeads, **changes: Any) -> RoIHeads:
    """A ``cls`` holding the same modules (so the same weights) and settings as ``heads``, but ``changes``."""
    sampler = heads.fg_bg_sampler
    settings = dict(
        fg_iou_thresh=heads.proposal_matcher.high_threshold,
        bg_iou_thresh=heads.proposal_matcher.low_threshold,
        batch_size_per_image=sampler.batch_size_per_image,
        positive_fraction=sampler.positive_fraction,
        bbox_reg_weights=heads.box_coder.weights,
        score_thresh=heads.score_thresh,
        nms_thresh=heads.nms_thresh,
        detections_per_img=heads.detections_per_img,
        mask_roi_pool=heads.mask_roi_pool,
        mask_head=heads.mask_head,
        mask_predictor=heads.mask_predictor,
        keypoint_roi_pool=heads.keypoint_roi_pool,
        keypoint_head=heads.keypoint_head,
        keypoint_predictor=heads.keypoint_predictor,
    )
    new = cls(heads.box_roi_pool, heads.box_head, heads.box_predictor, **{**settings, **changes})
    return new.train(heads.training)


def _roi_heads_of(model: nn.Module) -> RoIHeads:
    heads = getattr(model, "roi_heads", None)
    if not isinstance(heads, RoIHeads):
        raise TypeError(
            f"expected a torchvision two-stage detector with a RoIHeads at .roi_heads, got {type(model).__name__}"
        )
    return heads
