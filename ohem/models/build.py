"""The configured detector: ``BUILDERS[model.name]`` builds a torchvision two-stage detector with its
own sampler (``ohem.mining.build_detector`` then swaps in the configured one)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models import detection
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FrozenBatchNorm2d

from ohem.checkpoint import load_state_dict_file
from ohem.config import ModelConfig
from ohem.models import vgg
from ohem.models.small import small_fast_rcnn, small_fast_rcnn_wide, small_faster_rcnn
from ohem.util import one_line


def set_input_normalisation(model: GeneralizedRCNN, cfg: ModelConfig) -> None:
    """``model.transform`` as ``cfg`` says: pixels x ``pixel_scale``, ``channel_order``, then
    (x - ``image_mean``) / ``image_std`` (a Caffe-converted net: BGR, 255, Caffe's pixel means, std 1)."""
    scale = cfg.pixel_scale
    if cfg.image_mean is None and cfg.image_std is None and scale == 1 and cfg.channel_order == "RGB":
        return  # the model's own
    t = model.transform
    mean = cfg.image_mean if cfg.image_mean is not None else [m * scale for m in t.image_mean]
    std = cfg.image_std if cfg.image_std is not None else [s * scale for s in t.image_std]
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0 or scale <= 0:
        raise ValueError(f"model.image_mean/image_std: 3 values each, std and pixel_scale > 0; got {mean}, {std}")
    # On images in [0, 1]: (x * scale - mean) / std == (x - mean / scale) / (std / scale).
    model.transform = InputTransform(
        t.min_size,
        t.max_size,
        [m / scale for m in mean],
        [s / scale for s in std],
        size_divisible=t.size_divisible,
        fixed_size=t.fixed_size,
        bgr=cfg.channel_order == "BGR",
    )


class InputTransform(GeneralizedRCNNTransform):
    """torchvision's transform, with the channels reversed before normalising when ``bgr``."""

    def __init__(self, *args, bgr: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.bgr = bgr

    def normalize(self, image: Tensor) -> Tensor:
        return super().normalize(image.flip(0) if self.bgr else image)


def build_model(cfg: ModelConfig, num_classes: int, load_weights: bool = True) -> GeneralizedRCNN:
    """The detector of ``cfg.name`` with torchvision's own sampler (what ``build_detector`` replaces).

    ``load_weights=False``: the architecture ``cfg.backbone_weights`` implies, with no weights read
    or downloaded: for a checkpoint, whose state dict holds every weight (the file it was trained
    from may be gone; ImageNet weights would be downloaded only to be overwritten)."""
    uses_rpn = cfg.name not in PROPOSAL_MODELS
    try:
        model = BUILDERS[cfg.name](cfg, num_classes, detector_kwargs(cfg, uses_rpn), load_weights)
    except OSError as e:  # urllib's URLError (offline, no DNS, a proxy) and socket errors are OSErrors
        if cfg.backbone_weights != "imagenet" or not load_weights:
            raise
        raise OSError(download_failure(e)) from None
    set_input_normalisation(model, cfg)
    return model


def download_failure(error: OSError) -> str:
    """The one line for ImageNet weights torchvision could not fetch: which key asked for them, and
    the two ways to train without the network."""
    reason = one_line(str(getattr(error, "reason", "") or error)) or type(error).__name__
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    return (
        f"model.backbone_weights: imagenet: torchvision could not download the ImageNet weights ({reason}); "
        f"offline, put the file it names on its 'Downloading:' line into {cache}/ (it looks there first), "
        "or set model.backbone_weights to a local state-dict file (tensors only), or to null (random weights)"
    )


def detector_kwargs(cfg: ModelConfig, uses_rpn: bool) -> dict[str, Any]:
    """torchvision's constructor arguments that the config sets."""
    kwargs: dict[str, Any] = dict(
        box_score_thresh=cfg.box_score_thresh,
        box_detections_per_img=cfg.box_detections_per_img,
        min_size=cfg.min_size,
        max_size=cfg.max_size,
    )
    if cfg.box_nms_thresh is not None:
        kwargs["box_nms_thresh"] = cfg.box_nms_thresh
    if uses_rpn:
        kwargs.update(
            rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
            rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
            rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
            rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
            rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        )
    return kwargs


def _small(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    def build(cfg: ModelConfig, num_classes: int, kwargs: dict[str, Any], load_weights: bool) -> nn.Module:
        if cfg.backbone_weights == "imagenet":
            raise ValueError("model.backbone_weights: the small model has no ImageNet weights; use a file or null")
        model: GeneralizedRCNN = builder(num_classes, **kwargs)
        if cfg.backbone_weights and load_weights:
            load_backbone_weights(model.backbone, cfg.backbone_weights)
        return model

    return build


def _vgg(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    def build(cfg: ModelConfig, num_classes: int, kwargs: dict[str, Any], load_weights: bool) -> nn.Module:
        if cfg.trainable_backbone_layers is not None:
            raise ValueError(
                "model.trainable_backbone_layers: the VGG models freeze conv1-2 (VGG16) / conv1 as the paper"
            )
        if cfg.backbone_weights == "imagenet" and "vgg_cnn_m_1024" in cfg.name:
            raise ValueError(
                "model.backbone_weights: no maintained package ships VGG_CNN_M_1024's ImageNet weights; "
                "give the path of a converted state dict (docs/TRAINING.md: 'VGG_CNN_M_1024 weights')"
            )
        # the VGG layers are the same with or without weights: unloaded, they keep their random init
        return builder(num_classes, weights=cfg.backbone_weights if load_weights else None, **kwargs)

    return build


def _torchvision(name: str) -> Callable[..., nn.Module]:
    def build(cfg: ModelConfig, num_classes: int, kwargs: dict[str, Any], load_weights: bool) -> nn.Module:
        imagenet = cfg.backbone_weights == "imagenet"
        download = imagenet and load_weights
        model = getattr(detection, name)(
            weights=None,
            weights_backbone="DEFAULT" if download else None,
            num_classes=num_classes + 1,  # torchvision counts the background class
            # without weights torchvision warns that the count has no effect (it only freezes layers)
            trainable_backbone_layers=cfg.trainable_backbone_layers if download or not imagenet else None,
            **kwargs,
        )
        if imagenet and not load_weights and name in _FROZEN_BN_WHEN_PRETRAINED:
            freeze_batch_norms(model.backbone.body)
        if cfg.backbone_weights not in (None, "imagenet") and load_weights:
            load_backbone_weights(model.backbone.body, cfg.backbone_weights)
        return model

    return build


# torchvision builds these backbones with FrozenBatchNorm2d when it loads pretrained weights, else with
# BatchNorm2d (whose state dict has num_batches_tracked); the v2 model uses BatchNorm2d either way.
_FROZEN_BN_WHEN_PRETRAINED = ("fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn", "maskrcnn_resnet50_fpn")


def freeze_batch_norms(module: nn.Module) -> None:
    """Every ``BatchNorm2d`` under ``module`` replaced by torchvision's ``FrozenBatchNorm2d`` (eps
    1e-5, as torchvision passes it for pretrained backbones): the layers of a model built with
    ImageNet weights, built without them."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d(child.num_features))
        else:
            freeze_batch_norms(child)


# One builder per name of ohem.config.ModelName (tests/test_models.py keeps the two equal).
BUILDERS: dict[str, Callable[[ModelConfig, int, dict[str, Any], bool], nn.Module]] = {
    "small": _small(small_faster_rcnn),
    "fast_rcnn_small": _small(small_fast_rcnn),
    "fast_rcnn_small_wide": _small(small_fast_rcnn_wide),
    "fasterrcnn_resnet50_fpn": _torchvision("fasterrcnn_resnet50_fpn"),
    "fasterrcnn_resnet50_fpn_v2": _torchvision("fasterrcnn_resnet50_fpn_v2"),
    "fasterrcnn_mobilenet_v3_large_fpn": _torchvision("fasterrcnn_mobilenet_v3_large_fpn"),
    "maskrcnn_resnet50_fpn": _torchvision("maskrcnn_resnet50_fpn"),
    "fast_rcnn_vgg16": _vgg(vgg.fast_rcnn_vgg16),
    "fast_rcnn_vgg_cnn_m_1024": _vgg(vgg.fast_rcnn_vgg_cnn_m_1024),
    "faster_rcnn_vgg16": _vgg(vgg.faster_rcnn_vgg16),
    "faster_rcnn_vgg_cnn_m_1024": _vgg(vgg.faster_rcnn_vgg_cnn_m_1024),
}
# these need data.proposals
PROPOSAL_MODELS = ("fast_rcnn_small", "fast_rcnn_small_wide", "fast_rcnn_vgg16", "fast_rcnn_vgg_cnn_m_1024")


def load_backbone_weights(module: nn.Module, path: str | Path) -> None:
    """Load a state-dict file (tensors only) into ``module``; every key must belong to it."""
    state = load_state_dict_file(path, "backbone weights")
    missing, unexpected = module.load_state_dict(state, strict=False)
    if not set(module.state_dict()) - set(missing):
        raise ValueError(f"backbone weights {path}: no key matches the backbone (e.g. expected {missing[0]!r})")
    if unexpected:
        raise ValueError(f"backbone weights {path}: keys not in the backbone, e.g. {unexpected[0]!r}")
