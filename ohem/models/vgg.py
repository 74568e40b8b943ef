"""The paper's two networks, VGG16 and VGG_CNN_M_1024, as Fast R-CNN and Faster R-CNN detectors.

Both are cut as in Fast R-CNN: conv5 (+ReLU) at stride 16 feeds RoI max pooling (7x7 for VGG16, 6x6
for VGG_CNN_M_1024), then fc6 and fc7 with dropout, then a class-score + class-specific box-regression
predictor. Early layers are frozen as Fast R-CNN did: conv1-conv2 for VGG16, conv1 for the small net.

Weights: ``None`` (random), ``"imagenet"`` (VGG16 only, torchvision's ``VGG16_Weights.IMAGENET1K_V1``,
downloaded by torchvision on first use) or the path of a local tensors-only state dict; pickled
objects are refused.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tv_models
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor
from torchvision.ops import RoIPool

from ohem.checkpoint import load_state_dict_file
from ohem.models.fast_rcnn import IMAGENET_MEAN, IMAGENET_STD, FastRCNN

VGG16_FROZEN = 10  # features[0:10]: conv1_1 .. pool2, frozen as in Fast R-CNN
VGG16_CONV5 = 30  # features[0:30]: up to relu5_3; pool5 is replaced by RoI pooling
STRIDE = 16

# Fast R-CNN's RoI-head settings (train: 64 RoIs per image, 25 % fg with IoU >= 0.5; test: NMS 0.3,
# score > 0.05, 100 per image). torchvision's default box-coder weights (10, 10, 5, 5) are the
# inverse of Fast R-CNN's target normalisation std (0.1, 0.1, 0.2, 0.2).
FAST_RCNN_ROI_DEFAULTS = dict(
    box_score_thresh=0.05,
    box_nms_thresh=0.3,
    box_detections_per_img=100,
    box_fg_iou_thresh=0.5,
    box_bg_iou_thresh=0.5,
    box_batch_size_per_image=64,
    box_positive_fraction=0.25,
)


class RoIPoolLevel(nn.Module):
    """``torchvision.ops.RoIPool`` on one feature map, called the way ``RoIHeads`` calls its pooler."""

    def __init__(self, output_size: int, spatial_scale: float = 1.0 / STRIDE, featmap_name: str = "0") -> None:
        super().__init__()
        self.pool = RoIPool((output_size, output_size), spatial_scale)
        self.featmap_name = featmap_name

    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]] | None = None,
    ) -> torch.Tensor:
        return self.pool(features[self.featmap_name], proposals)


class VGGBoxHead(nn.Module):
    """fc6 -> ReLU -> Dropout -> fc7 -> ReLU -> Dropout on flattened pooled features."""

    def __init__(self, in_features: int, fc6_dim: int = 4096, fc7_dim: int = 4096, dropout: float = 0.5) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_features, fc6_dim)
        self.fc7 = nn.Linear(fc6_dim, fc7_dim)
        # nn.Dropout modules (not F.dropout) so OHEM's read-only pass can switch them.
        self.drop6 = nn.Dropout(dropout)
        self.drop7 = nn.Dropout(dropout)
        self.relu = nn.ReLU(inplace=True)
        self.out_channels = fc7_dim
        for fc in (self.fc6, self.fc7):  # torchvision's VGG init, used when no weights are loaded
            nn.init.normal_(fc.weight, 0.0, 0.01)
            nn.init.zeros_(fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop6(self.relu(self.fc6(x.flatten(start_dim=1))))
        return self.drop7(self.relu(self.fc7(x)))


class VGG16Backbone(nn.Sequential):
    """torchvision ``vgg16().features`` up to relu5_3 (pool5 dropped): 512 channels, stride 16.
    Its keys are torchvision's ``features.N.*`` without the ``features.`` prefix."""

    out_channels = 512

    def __init__(self, features: nn.Sequential) -> None:
        super().__init__(*list(features)[:VGG16_CONV5])
        for layer in list(self)[:VGG16_FROZEN]:
            layer.requires_grad_(False)


class VGGCNNM1024Backbone(nn.Sequential):
    """VGG_CNN_M_1024's conv1-conv5 (Chatfield et al., BMVC 2014), layer names as in Caffe.

    conv1 96 7x7/2, LRN, max 3/2; conv2 256 5x5/2, LRN, max 3/2; conv3-5 512 3x3 -> stride 16.
    Pooling rounds up as Caffe does. conv1 is frozen, as Fast R-CNN did for its small networks.
    """

    out_channels = 512

    def __init__(self) -> None:
        super().__init__(
            OrderedDict(
                conv1=nn.Conv2d(3, 96, 7, stride=2),
                relu1=nn.ReLU(inplace=True),
                norm1=_caffe_lrn(),
                pool1=nn.MaxPool2d(3, 2, ceil_mode=True),
                conv2=nn.Conv2d(96, 256, 5, stride=2, padding=1),
                relu2=nn.ReLU(inplace=True),
                norm2=_caffe_lrn(),
                pool2=nn.MaxPool2d(3, 2, ceil_mode=True),
                conv3=nn.Conv2d(256, 512, 3, padding=1),
                relu3=nn.ReLU(inplace=True),
                conv4=nn.Conv2d(512, 512, 3, padding=1),
                relu4=nn.ReLU(inplace=True),
                conv5=nn.Conv2d(512, 512, 3, padding=1),
                relu5=nn.ReLU(inplace=True),
            )
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)  # type: ignore[arg-type]  # every conv here has a bias
        self.conv1.requires_grad_(False)


def _caffe_lrn() -> nn.LocalResponseNorm:
    # Caffe's CNN_M: local_size 5, alpha 5e-4, beta 0.75, k 2 (both divide alpha by the size).
    return nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)


def vgg16_backbone_and_head(weights: str | None = None) -> tuple[VGG16Backbone, VGGBoxHead]:
    """VGG16's conv layers and its fc6/fc7 box head (input 512x7x7), from one set of weights.

    ``weights``: None (random, torchvision's init), ``"imagenet"`` (torchvision's
    ``VGG16_Weights.IMAGENET1K_V1``) or a local state dict file in torchvision's ``vgg16`` key layout:
    ``features.{0,2,5,...,28}.{weight,bias}`` (required) and ``classifier.{0,3}.{weight,bias}`` (fc6,
    fc7; random with a warning if absent); ``classifier.6.*`` (the ImageNet classifier) is ignored.
    """
    vgg = _torchvision_vgg16(weights)
    head = VGGBoxHead(512 * 7 * 7, 4096, 4096)
    head.fc6.load_state_dict(vgg.classifier[0].state_dict())
    head.fc7.load_state_dict(vgg.classifier[3].state_dict())
    return VGG16Backbone(vgg.features), head


def vgg_cnn_m_1024_backbone_and_head(weights: str | None = None) -> tuple[VGGCNNM1024Backbone, VGGBoxHead]:
    """VGG_CNN_M_1024's conv layers and fc6 (512x6x6 -> 4096) / fc7 (4096 -> 1024) box head.

    No maintained package ships its ImageNet weights, so ``weights`` is None (random) or a local
    tensors-only state dict with Caffe's layer names: ``conv{1..5}.{weight,bias}`` (PyTorch shapes,
    e.g. conv1.weight 96x3x7x7) and ``fc6.{weight,bias}`` (4096x18432), ``fc7.{weight,bias}``
    (1024x4096); ``fc8.*`` is ignored. A model converted from Caffe expects BGR 0-255 input: flip
    conv1's input channels to RGB and build the detector with ``image_mean`` = Caffe's pixel mean / 255
    and ``image_std=[1/255] * 3``.
    """
    backbone, head = VGGCNNM1024Backbone(), VGGBoxHead(512 * 6 * 6, 4096, 1024)
    if weights is None:
        return backbone, head
    if weights == "imagenet":
        raise ValueError(
            "VGG_CNN_M_1024 has no ImageNet weights in torchvision or another maintained package; "
            "give a local state dict file (see vgg_cnn_m_1024_backbone_and_head) or None"
        )
    state = load_state_dict_file(weights)
    parts = {"backbone": backbone, "head": head}
    expected = {k: name for name, m in parts.items() for k in m.state_dict()}
    loaded: dict[str, dict[str, torch.Tensor]] = {"backbone": {}, "head": {}}
    for key, value in state.items():
        if key.startswith("fc8."):
            continue
        if key not in expected:
            raise ValueError(f"VGG_CNN_M_1024 weights {weights}: unexpected key {key!r} (expected conv1-5, fc6, fc7)")
        loaded[expected[key]][key] = value
    missing = sorted(set(expected) - {k for d in loaded.values() for k in d})
    if missing:
        raise ValueError(f"VGG_CNN_M_1024 weights {weights}: missing key {missing[0]!r} ({len(missing)} missing)")
    for name, module in parts.items():
        _load(module, loaded[name], weights)
    return backbone, head


def fast_rcnn_predictor(in_features: int, num_classes: int) -> FastRCNNPredictor:
    """torchvision's predictor for ``num_classes`` (background included), initialised as Fast R-CNN:
    scores N(0, 0.01), box deltas N(0, 0.001), biases 0."""
    predictor = FastRCNNPredictor(in_features, num_classes)
    nn.init.normal_(predictor.cls_score.weight, 0.0, 0.01)
    nn.init.normal_(predictor.bbox_pred.weight, 0.0, 0.001)
    nn.init.zeros_(predictor.cls_score.bias)
    nn.init.zeros_(predictor.bbox_pred.bias)
    return predictor


def fast_rcnn_vgg16(
    num_classes: int, weights: str | None = None, min_size: int = 600, max_size: int = 1000, **kwargs
) -> FastRCNN:
    """Fast R-CNN with VGG16 for ``num_classes`` object classes (background excluded), on external
    proposals. ``kwargs`` go to ``FastRCNN`` (``box_*``, ``image_mean``/``image_std``, ...)."""
    backbone, head = vgg16_backbone_and_head(weights)
    return FastRCNN(backbone, RoIPoolLevel(7), head, **_head_kwargs(head, num_classes, min_size, max_size, kwargs))


def fast_rcnn_vgg_cnn_m_1024(
    num_classes: int, weights: str | None = None, min_size: int = 600, max_size: int = 1000, **kwargs
) -> FastRCNN:
    """Fast R-CNN with VGG_CNN_M_1024 (RoI pooling 6x6, fc7 1024); as ``fast_rcnn_vgg16``."""
    backbone, head = vgg_cnn_m_1024_backbone_and_head(weights)
    return FastRCNN(backbone, RoIPoolLevel(6), head, **_head_kwargs(head, num_classes, min_size, max_size, kwargs))


def faster_rcnn_vgg16(
    num_classes: int, weights: str | None = None, min_size: int = 600, max_size: int = 1000, **kwargs
) -> FasterRCNN:
    """torchvision ``FasterRCNN`` (end-to-end, with an RPN) on VGG16 with the same heads as
    ``fast_rcnn_vgg16``; anchors 128/256/512 x ratios 0.5/1/2 as py-faster-rcnn. ``kwargs`` go to
    ``FasterRCNN`` (``rpn_*``, ``box_*``, ...)."""
    backbone, head = vgg16_backbone_and_head(weights)
    return _faster_rcnn(backbone, RoIPoolLevel(7), head, num_classes, min_size, max_size, kwargs)


def faster_rcnn_vgg_cnn_m_1024(
    num_classes: int, weights: str | None = None, min_size: int = 600, max_size: int = 1000, **kwargs
) -> FasterRCNN:
    """As ``faster_rcnn_vgg16`` with VGG_CNN_M_1024."""
    backbone, head = vgg_cnn_m_1024_backbone_and_head(weights)
    return _faster_rcnn(backbone, RoIPoolLevel(6), head, num_classes, min_size, max_size, kwargs)


def _head_kwargs(head: VGGBoxHead, num_classes: int, min_size: int, max_size: int, kwargs: dict) -> dict:
    settings = dict(FAST_RCNN_ROI_DEFAULTS, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    settings.update(kwargs)
    # +1: torchvision counts the background class.
    settings.update(box_predictor=fast_rcnn_predictor(head.out_channels, num_classes + 1))
    return dict(settings, min_size=min_size, max_size=max_size)


def _faster_rcnn(
    backbone: nn.Module, pool: nn.Module, head: VGGBoxHead, num_classes: int, min_size: int, max_size: int, kwargs: dict
) -> FasterRCNN:
    anchors = AnchorGenerator(sizes=((128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))
    model = FasterRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=kwargs.pop("rpn_anchor_generator", anchors),
        box_head=head,
        **_head_kwargs(head, num_classes, min_size, max_size, kwargs),
    )
    # FasterRCNN's constructor accepts only MultiScaleRoIAlign; RoIHeads itself takes any pooler.
    model.roi_heads.box_roi_pool = pool
    return model


def _torchvision_vgg16(weights: str | None) -> tv_models.VGG:
    if weights is None:
        return tv_models.vgg16(weights=None)
    if weights == "imagenet":
        return tv_models.vgg16(weights=tv_models.VGG16_Weights.IMAGENET1K_V1)
    vgg = tv_models.vgg16(weights=None)
    state = load_state_dict_file(weights)
    expected = vgg.state_dict()
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise ValueError(
            f"VGG16 weights {weights}: key {unexpected[0]!r} is not in torchvision's vgg16 layout "
            "(features.N.*, classifier.N.*)"
        )
    missing = [k for k in expected if k.startswith("features.") and k not in state]
    if missing:
        raise ValueError(f"VGG16 weights {weights}: missing key {missing[0]!r} ({len(missing)} conv tensors missing)")
    if any(f"classifier.{i}.{p}" not in state for i in (0, 3) for p in ("weight", "bias")):
        warnings.warn(f"VGG16 weights {weights}: no classifier.0/.3 (fc6/fc7); they stay random", stacklevel=3)
    state = {k: v for k, v in state.items() if not k.startswith("classifier.6.")}
    _load(vgg, state, weights)
    return vgg


def _load(module: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    try:
        module.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatch: keep the first line of torch's long message
        lines = [line.strip() for line in str(e).splitlines() if "size mismatch" in line]
        raise ValueError(f"weights {path}: {lines[0] if lines else str(e).splitlines()[0]}") from None
