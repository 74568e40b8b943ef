"""A small detector that trains on 2 CPU cores: six 3x3 convolutions (stride 8, 96 channels) and
torchvision's heads, as a Faster R-CNN (with an RPN) or a Fast R-CNN (on proposal files)."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn
from torchvision.models import detection
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from ohem.models.fast_rcnn import FastRCNN


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


def _small_parts(num_classes: int, pool_size: int = 6, fc_width: int = 256) -> dict:
    backbone = SmallBackbone()
    return dict(
        backbone=backbone,
        box_roi_pool=MultiScaleRoIAlign(featmap_names=["0"], output_size=pool_size, sampling_ratio=2),
        box_head=TwoMLPHead(backbone.out_channels * pool_size * pool_size, fc_width),
        box_predictor=FastRCNNPredictor(fc_width, num_classes + 1),  # +1: torchvision counts the background
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.25, 0.25, 0.25],
    )


def small_fast_rcnn(num_classes: int, **kwargs) -> FastRCNN:
    """The small model as a Fast R-CNN on external proposals (CPU tests, demos)."""
    return FastRCNN(**_small_parts(num_classes), **kwargs)


def small_fast_rcnn_wide(num_classes: int, **kwargs) -> FastRCNN:
    """The small backbone under a VGG16-shaped head (7 x 7 RoIs, two 4096-wide fc layers): the head's
    width as in the paper, 36 M multiply-adds per RoI (VGG16's head: 120 M; the small head's: 0.95 M)."""
    return FastRCNN(**_small_parts(num_classes, pool_size=7, fc_width=4096), **kwargs)


def small_faster_rcnn(num_classes: int, **kwargs) -> detection.FasterRCNN:
    """The small model as a Faster R-CNN: one feature level, anchors 12-96 px for small objects."""
    anchors = AnchorGenerator(sizes=((12, 24, 48, 96),), aspect_ratios=((0.5, 1.0, 2.0),))
    return detection.FasterRCNN(num_classes=None, rpn_anchor_generator=anchors, **_small_parts(num_classes), **kwargs)
