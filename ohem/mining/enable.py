"""Swap a sampler into any torchvision two-stage detector, in place, keeping every module and weight; and
``build_detector``: the configured detector with its configured sampler."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from torch import nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork

from ohem.config import ConfigError
from ohem.mining.roi_heads import SamplingRoIHeads
from ohem.mining.rpn import OHEMRegionProposalNetwork
from ohem.mining.sampler import SamplerBase, sampler_class
from ohem.models import PROPOSAL_MODELS, build_model

if TYPE_CHECKING:
    from ohem.config import ModelConfig

DEFAULT_BOX_LOSS_BETA = 1 / 9  # torchvision's (model.box_loss_beta's default)
RPN_NMS_IOU = 0.7  # model.rpn_nms_iou's default


def build_detector(
    model_cfg: ModelConfig, sampler: SamplerBase, num_classes: int, load_weights: bool = True
) -> GeneralizedRCNN:
    """The configured detector for ``num_classes`` object classes (background excluded), with ``sampler``
    (and, with ``model_cfg.rpn_ohem``, OHEM in the RPN). ``load_weights=False``: no backbone weights read
    or downloaded (``ohem.models.build_model``)."""
    model = build_model(model_cfg, num_classes, load_weights)
    if model_cfg.rpn_ohem and getattr(model, "rpn", None) is None:
        raise ValueError(f"model.rpn_ohem: {model_cfg.name} has no RPN (it reads its proposals from a file)")
    enable_sampler(model, sampler, box_loss_beta=model_cfg.box_loss_beta)
    if model_cfg.rpn_ohem:
        enable_rpn_ohem(model, model_cfg.rpn_nms_iou)
    if model_cfg.box_target_norm == "empirical":
        if model_cfg.name not in PROPOSAL_MODELS:
            raise ValueError(
                f"model.box_target_norm: empirical is measured on proposal files; {model_cfg.name} has an RPN "
                "whose proposals change as it trains (use fixed)"
            )
        model.roi_heads.use_empirical_box_targets()
    return model


def enable_sampler(model: nn.Module, sampler: SamplerBase, box_loss_beta: float | None = None) -> nn.Module:
    """A ``SamplingRoIHeads`` training on what ``sampler`` picks in ``model.roi_heads``; returns ``model``.
    It installs a copy of ``sampler`` (a config's instance is not shared state) and calls its
    ``initialise(heads)`` once (should it fail, the model is left as it was). ``box_loss_beta``: the box
    loss's smooth-L1 beta (torchvision's 1/9; Fast R-CNN's 1); None keeps the one of a
    ``SamplingRoIHeads`` already there (a sampler installed again keeps its box loss and its box-target
    normalisation), else 1/9."""
    if not isinstance(sampler, SamplerBase):
        raise TypeError(f"enable_sampler: expected an ohem.SamplerBase, got {type(sampler).__name__}")
    heads = _roi_heads_of(model)
    head_bg_iou = heads.proposal_matcher.low_threshold
    if sampler.bg_iou_low >= head_bg_iou:  # your head's own threshold
        raise ConfigError(
            f"sampler.bg_iou_low = {sampler.bg_iou_low} must be below the RoI head's background/foreground IoU "
            f"threshold {head_bg_iou} (background is IoU in [bg_iou_low, {head_bg_iou}): none would be left "
            "to train on)"
        )
    chosen = dataclasses.replace(sampler)
    installed = heads if isinstance(heads, SamplingRoIHeads) else None
    if box_loss_beta is None:
        box_loss_beta = installed.box_loss_beta if installed else DEFAULT_BOX_LOSS_BETA
    if not (isinstance(box_loss_beta, int | float) and 0 <= box_loss_beta <= 100):  # model.box_loss_beta's range
        raise ConfigError(f"box_loss_beta must be a finite number in [0, 100], got {box_loss_beta!r}")
    new = rebuild_roi_heads(SamplingRoIHeads, heads, sampler=chosen, box_loss_beta=box_loss_beta)
    if installed is not None:  # the box coder (weights 1 under empirical targets) is rebuilt from its weights
        new.box_target_norm = installed.box_target_norm  # the same module: its measured mean and std
    if type(chosen).initialise is not SamplerBase.initialise:  # a copy of the weights only when it can change them
        before = {k: v.detach().to("cpu", copy=True) for k, v in heads.state_dict().items()}
        try:  # once, on install: a checkpoint loaded afterwards overwrites it
            chosen.initialise(new)
        except BaseException:
            heads.load_state_dict(before)  # the modules are shared: undo what it changed before failing
            raise
    model.roi_heads = new
    return model


def enable_ohem(
    model: nn.Module, sampler: SamplerBase | None = None, box_loss_beta: float | None = None, **settings: Any
) -> nn.Module:
    """OHEM in ``model.roi_heads``; returns ``model``. ``settings`` are the ``ohem`` sampler's fields
    (``batch_size_per_image=64, nms_iou=0.7, mining_loss="cls+box", start=0, ...``), over ``sampler``'s
    when given (a sampler of another method: its shared fields)."""
    return enable_sampler(model, _built("ohem", sampler, settings), box_loss_beta)


def enable_heuristic_sampling(
    model: nn.Module, sampler: SamplerBase | None = None, box_loss_beta: float | None = None, **settings: Any
) -> nn.Module:
    """Fast R-CNN's sampler in ``model.roi_heads``: ``fg_fraction`` foreground, background from IoU in
    [``bg_iou_low`` (default 0.1), 0.5); ``settings`` are the ``heuristic`` sampler's fields."""
    return enable_sampler(model, _built("heuristic", sampler, settings), box_loss_beta)


def _built(method: str, sampler: SamplerBase | None, settings: dict[str, Any]) -> SamplerBase:
    """The ``method`` sampler of ``settings`` over ``sampler``'s fields of the same name."""
    cls = sampler_class(method)
    shared = {}
    if sampler is not None:
        names = {f.name for f in dataclasses.fields(cls)}
        shared = {k: v for k, v in dataclasses.asdict(sampler).items() if k in names}
    try:
        return cls(**{**shared, **settings})
    except ValidationError as e:  # one line, as a config's error: pydantic's runs over several
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"sampler.{where}: {first['msg']}, got {first.get('input')!r}") from None


def installed_sampler(model: nn.Module) -> SamplerBase | None:
    """The sampler ``model``'s RoI heads train with (None: not a ``SamplingRoIHeads``)."""
    heads = getattr(model, "roi_heads", None)
    return heads.sampler if isinstance(heads, SamplingRoIHeads) else None


def enable_rpn_ohem(
    model: nn.Module, nms_iou: float | None = RPN_NMS_IOU, batch_size_per_image: int | None = None
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
