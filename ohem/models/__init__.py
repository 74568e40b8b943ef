"""Detectors: a small CPU-friendly Faster R-CNN and torchvision's two-stage family, with a sampler.

Every model is a torchvision ``FasterRCNN``/``MaskRCNN``; the sampler (OHEM or Fast R-CNN's
heuristic) is swapped into its ``roi_heads`` by ``ohem.mining``, the same way a user would.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torchvision.models import detection
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from ohem.config import ModelConfig, SamplerConfig
from ohem.mining import enable_heuristic_sampling, enable_ohem
from ohem.mining.rpn import enable_rpn_ohem
from ohem.models import vgg
from ohem.models.fast_rcnn import FastRCNN

TORCHVISION_MODELS = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "maskrcnn_resnet50_fpn",
)


def build_detector(model_cfg: ModelConfig, sampler_cfg: SamplerConfig, num_classes: int) -> nn.Module:
    """The configured detector for ``num_classes`` object classes (background excluded)."""
    model = build_model(model_cfg, num_classes)
    apply_sampler(model, sampler_cfg)
    # Test-time options, read by ohem.engine.detect (plain attributes: not part of the weights).
    sizes = model_cfg.test_min_size
    model.test_min_sizes = None if sizes is None else list(sizes) if isinstance(sizes, list) else [sizes]
    model.box_voting = model_cfg.box_voting
    return model


VGG_MODELS = ("fast_rcnn_vgg16", "fast_rcnn_vgg_cnn_m_1024", "faster_rcnn_vgg16", "faster_rcnn_vgg_cnn_m_1024")
PROPOSAL_MODELS = ("fast_rcnn_vgg16", "fast_rcnn_vgg_cnn_m_1024", "fast_rcnn_small")  # need data.proposals


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    model = _build_model(cfg, num_classes)
    if cfg.rpn_ohem:
        if cfg.name in PROPOSAL_MODELS:
            raise ValueError(f"model.rpn_ohem: {cfg.name} has no RPN (it reads its proposals from a file)")
        enable_rpn_ohem(model, nms_iou=cfg.rpn_ohem_nms_iou)
    return model


def _build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    box_kwargs = dict(
        box_score_thresh=cfg.box_score_thresh,
        box_detections_per_img=cfg.box_detections_per_img,
        min_size=cfg.min_size,
        max_size=cfg.max_size,
    )
    if cfg.box_nms_thresh is not None:
        box_kwargs["box_nms_thresh"] = cfg.box_nms_thresh
    if cfg.name in ("fast_rcnn_vgg16", "fast_rcnn_vgg_cnn_m_1024"):
        return getattr(vgg, cfg.name)(num_classes, weights=_vgg_weights(cfg), **box_kwargs)
    if cfg.name == "fast_rcnn_small":
        return _small(small_fast_rcnn, cfg, num_classes, box_kwargs)
    rpn_kwargs = dict(
        rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        **box_kwargs,
    )
    if cfg.name in ("faster_rcnn_vgg16", "faster_rcnn_vgg_cnn_m_1024"):
        return getattr(vgg, cfg.name)(num_classes, weights=_vgg_weights(cfg), **rpn_kwargs)
    if cfg.name == "small":
        return _small(small_faster_rcnn, cfg, num_classes, rpn_kwargs)
    if cfg.name not in TORCHVISION_MODELS:
        known = ", ".join(("small", "fast_rcnn_small", *TORCHVISION_MODELS, *VGG_MODELS))
        raise ValueError(f"model.name: unknown model {cfg.name!r}; choose one of {known}")
    builder = getattr(detection, cfg.name)
    weights_backbone = "DEFAULT" if cfg.backbone_weights == "imagenet" else None
    # +1: torchvision counts the background class.
    model = builder(
        weights=None,
        weights_backbone=weights_backbone,
        num_classes=num_classes + 1,
        trainable_backbone_layers=cfg.trainable_backbone_layers,
        **rpn_kwargs,
    )
    if cfg.backbone_weights not in (None, "imagenet"):
        load_backbone_weights(model.backbone.body, cfg.backbone_weights)
    return model


def _small(builder, cfg: ModelConfig, num_classes: int, kwargs: dict) -> nn.Module:  # noqa: ANN001
    if cfg.backbone_weights == "imagenet":
        raise ValueError("model.backbone_weights: the small model has no ImageNet weights; use a file or null")
    model = builder(num_classes, **kwargs)
    if cfg.backbone_weights:
        load_backbone_weights(model.backbone, cfg.backbone_weights)
    return model


def _vgg_weights(cfg: ModelConfig) -> str | None:
    if cfg.trainable_backbone_layers is not None:
        raise ValueError("model.trainable_backbone_layers: the VGG models freeze conv1-2 (VGG16) / conv1 as the paper")
    if cfg.backbone_weights == "imagenet" and "vgg_cnn_m_1024" in cfg.name:
        raise ValueError(
            "model.backbone_weights: no maintained package ships VGG_CNN_M_1024's ImageNet weights; "
            "give the path of a converted state dict (README: 'VGG_CNN_M_1024 weights')"
        )
    return cfg.backbone_weights


def load_backbone_weights(module: nn.Module, path: str | Path) -> None:
    """Load a state dict file (tensors only; pickled code is refused) into ``module``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"backbone weights {path}: no such file") from None
    except Exception as e:  # noqa: BLE001 - torch raises several types for a bad file
        raise ValueError(
            f"backbone weights {path}: not a loadable tensors-only state dict ({type(e).__name__})"
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    missing, unexpected = module.load_state_dict(state, strict=False)
    if not set(module.state_dict()) - set(missing):
        raise ValueError(f"backbone weights {path}: no key matches the backbone (e.g. expected {missing[0]!r})")
    if unexpected:
        raise ValueError(f"backbone weights {path}: keys not in the backbone, e.g. {unexpected[0]!r}")


def apply_sampler(model: nn.Module, cfg: SamplerConfig) -> nn.Module:
    if cfg.method == "ohem":
        return enable_ohem(
            model,
            batch_size_per_image=cfg.batch_size_per_image,
            nms_iou=cfg.nms_iou,
            mining_loss=cfg.mining_loss,
            bg_iou_low=0.0 if cfg.bg_iou_low is None else cfg.bg_iou_low,
            max_rois_per_chunk=cfg.max_rois_per_chunk,
            nms_per_label=cfg.nms_per_label,
            readonly_dropout=cfg.readonly_dropout,
            implementation=cfg.implementation,
            readonly_dtype=_dtype(cfg.readonly_dtype),
        )
    if cfg.method == "heuristic":
        return enable_heuristic_sampling(
            model,
            batch_size_per_image=cfg.batch_size_per_image,
            positive_fraction=cfg.fg_fraction,
            bg_iou_low=0.1 if cfg.bg_iou_low is None else cfg.bg_iou_low,
        )
    raise ValueError(f"sampler.method: unknown method {cfg.method!r}; choose ohem or heuristic")


def _dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    if name not in ("bfloat16", "float16"):
        raise ValueError(f"sampler.readonly_dtype: expected bfloat16, float16 or null, got {name!r}")
    return getattr(torch, name)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    # GroupNorm: batches of 1-2 images make BatchNorm statistics useless when training from scratch.
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.GroupNorm(8, cout), nn.ReLU(inplace=True)
    )


class SmallBackbone(nn.Sequential):
    """Six 3x3 convolutions, stride 8, 96 channels: a 160 px image gives a 20 x 20 feature map."""

    out_channels = 96

    def __init__(self) -> None:
        super().__init__(
            OrderedDict(
                stem=_conv(3, 32, 2),
                conv1=_conv(32, 32),
                down2=_conv(32, 64, 2),
                conv2=_conv(64, 64),
                down3=_conv(64, 96, 2),
                conv3=_conv(96, 96),
            )
        )


def small_fast_rcnn(num_classes: int, **kwargs) -> FastRCNN:
    """The small model's backbone and heads as a Fast R-CNN on external proposals (CPU tests, demos)."""
    backbone = SmallBackbone()
    return FastRCNN(
        backbone,
        box_roi_pool=MultiScaleRoIAlign(featmap_names=["0"], output_size=6, sampling_ratio=2),
        box_head=TwoMLPHead(backbone.out_channels * 6 * 6, 256),
        box_predictor=FastRCNNPredictor(256, num_classes + 1),
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.25, 0.25, 0.25],
        **kwargs,
    )


def small_faster_rcnn(num_classes: int, **kwargs) -> detection.FasterRCNN:
    """A Faster R-CNN from torchvision parts that trains on 2 CPU cores: small objects, one level."""
    backbone = SmallBackbone()
    anchors = AnchorGenerator(sizes=((12, 24, 48, 96),), aspect_ratios=((0.5, 1.0, 2.0),))
    pooler = MultiScaleRoIAlign(featmap_names=["0"], output_size=6, sampling_ratio=2)
    box_head = TwoMLPHead(backbone.out_channels * 6 * 6, 256)
    return detection.FasterRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchors,
        box_roi_pool=pooler,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(256, num_classes + 1),
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.25, 0.25, 0.25],
        **kwargs,
    )
