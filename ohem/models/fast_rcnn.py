"""Fast R-CNN (Girshick, ICCV 2015): a torchvision ``GeneralizedRCNN`` whose RoIs come from outside.

No RPN: the caller gives the proposals of each image (selective search, EdgeBoxes, ...) in original
image pixels. They are resized with the image, then go through torchvision's own ``RoIHeads``, which
in training appends the gt boxes to them as Fast R-CNN did. ``model.roi_heads`` is a plain
``RoIHeads``, so ``ohem.mining.enable_ohem`` swaps in OHEM exactly as for a Faster R-CNN.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import boxes as box_ops

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class FastRCNN(GeneralizedRCNN):
    """Fast R-CNN from torchvision parts; argument names follow torchvision's ``FasterRCNN``.

    ``forward(images, targets=None, proposals=None)``: ``proposals[i]`` is an (n_i, 4) tensor of
    x1, y1, x2, y2 in the pixels of ``images[i]`` as given; without it, ``targets[i]["proposals"]``
    is used. Outputs are torchvision's: a loss dict in training, detection dicts (original pixels)
    in eval. Defaults are Fast R-CNN's: 600/1000 px, 64 RoIs per image with 25 % foreground,
    fg IoU >= 0.5, test NMS 0.3. ``box_predictor`` defaults to ``FastRCNNPredictor(box_head.out_channels,
    num_classes)``, ``num_classes`` counting the background as in torchvision.
    """

    needs_proposals = True  # tells the engine (and ``box_voting``) to pass proposals

    def __init__(
        self,
        backbone: nn.Module,
        box_roi_pool: nn.Module,
        box_head: nn.Module,
        box_predictor: nn.Module | None = None,
        num_classes: int | None = None,
        min_size: int = 600,
        max_size: int = 1000,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        box_score_thresh: float = 0.05,
        box_nms_thresh: float = 0.3,
        box_detections_per_img: int = 100,
        box_fg_iou_thresh: float = 0.5,
        box_bg_iou_thresh: float = 0.5,
        box_batch_size_per_image: int = 64,
        box_positive_fraction: float = 0.25,
        bbox_reg_weights: tuple[float, float, float, float] | None = None,
        **transform_kwargs,
    ) -> None:
        if box_predictor is None:
            if num_classes is None:
                raise ValueError("FastRCNN: give num_classes (background included) or a box_predictor")
            box_predictor = FastRCNNPredictor(box_head.out_channels, num_classes)
        elif num_classes is not None:
            raise ValueError("FastRCNN: num_classes must be None when box_predictor is given")
        roi_heads = RoIHeads(
            box_roi_pool,
            box_head,
            box_predictor,
            box_fg_iou_thresh,
            box_bg_iou_thresh,
            box_batch_size_per_image,
            box_positive_fraction,
            bbox_reg_weights,
            box_score_thresh,
            box_nms_thresh,
            box_detections_per_img,
        )
        transform = GeneralizedRCNNTransform(
            min_size,
            max_size,
            IMAGENET_MEAN if image_mean is None else image_mean,
            IMAGENET_STD if image_std is None else image_std,
            **transform_kwargs,
        )
        super().__init__(backbone, None, roi_heads, transform)

    def forward(
        self,
        images: list[torch.Tensor],
        targets: list[dict[str, torch.Tensor]] | None = None,
        proposals: list[torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        if self.training and targets is None:
            raise ValueError("FastRCNN: targets are required in training mode")
        proposals = _proposals_of(images, targets, proposals)
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        if not self.training and sum(p.shape[0] for p in proposals) == 0:
            # torchvision's box decoder cannot reshape an empty batch; there is nothing to detect.
            empty = images[0].new_zeros((0, 4))
            labels = torch.zeros(0, dtype=torch.int64, device=empty.device)
            return [{"boxes": empty, "labels": labels, "scores": empty[:, 0]} for _ in proposals]
        image_list, targets, features = backbone_features(self, images, targets)
        if targets is not None:
            _check_gt_boxes_have_area(targets)
        proposals = self.resize_proposals(proposals, original_sizes, image_list)
        detections, losses = self.roi_heads(features, proposals, image_list.image_sizes, targets)
        if self.training:
            return losses
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)

    @staticmethod
    def resize_proposals(
        proposals: list[torch.Tensor], original_sizes: list[tuple[int, int]], image_list: ImageList
    ) -> list[torch.Tensor]:
        """Proposals in original pixels -> the resized frame of ``image_list``, clipped to the image.
        x and y scale separately: the resized size is rounded, so the two ratios differ slightly."""
        dtype, device = image_list.tensors.dtype, image_list.tensors.device
        resized = []
        for boxes, original, new in zip(proposals, original_sizes, image_list.image_sizes):
            boxes = boxes.to(device=device, dtype=dtype).reshape(-1, 4)
            resized.append(box_ops.clip_boxes_to_image(resize_boxes(boxes, list(original), list(new)), new))
        return resized


def _proposals_of(
    images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None, proposals: list[torch.Tensor] | None
) -> list[torch.Tensor]:
    if proposals is None:
        if targets is None or any("proposals" not in t for t in targets):
            raise ValueError("FastRCNN needs proposals: pass proposals=[...] or put them in targets[i]['proposals']")
        proposals = [t["proposals"] for t in targets]
    if len(proposals) != len(images):
        raise ValueError(f"FastRCNN: {len(proposals)} proposal sets for {len(images)} images")
    return list(proposals)


def backbone_features(
    model: GeneralizedRCNN, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None
) -> tuple[ImageList, list[dict[str, torch.Tensor]] | None, dict[str, torch.Tensor]]:
    """``model.transform`` (resize, normalise, batch) then ``model.backbone``, features as a dict."""
    image_list, targets = model.transform(images, targets)
    features = model.backbone(image_list.tensors)
    if isinstance(features, torch.Tensor):
        features = OrderedDict([("0", features)])
    return image_list, targets, features


def _check_gt_boxes_have_area(targets: list[dict[str, torch.Tensor]]) -> None:
    # GeneralizedRCNN.forward's check (which Fast R-CNN's own forward replaces): a degenerate gt box
    # would give infinite box targets.
    for i, target in enumerate(targets):
        boxes = target["boxes"]
        if boxes.dim() != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"FastRCNN: target {i} boxes must have shape [N, 4], got {tuple(boxes.shape)}")
        bad = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
        if bad.any():
            raise ValueError(f"FastRCNN: target {i} has a box without positive size: {boxes[bad][0].tolist()}")
