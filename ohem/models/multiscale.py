"""+M at test time, as Fast R-CNN does it: the image at several scales (an image pyramid), each RoI
pooled from the one scale at which its area is closest to 224 x 224 pixels (the networks' ImageNet
input size), one head pass over all RoIs, then the usual per-class NMS.

Everything is in original image pixels: a box's regression deltas are relative to its own size, so
they decode the same at any scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import batched_nms, clip_boxes_to_image, remove_small_boxes

from ohem.models.box_targets import raw_box_deltas
from ohem.models.fast_rcnn import FastRCNN, backbone_features

TARGET_AREA = 224 * 224


class ImagePyramid:
    """The backbone features of a batch of images at each shorter side of ``scales``."""

    def __init__(self, model: GeneralizedRCNN, images: list[torch.Tensor], scales: list[int]) -> None:
        self.heads = model.roi_heads
        self.original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        self.levels = []
        transform, saved = model.transform, model.transform.min_size
        try:
            for scale in scales:
                transform.min_size = (scale,)
                image_list, _, features = backbone_features(model, images)
                self.levels.append((image_list, features))
        finally:
            transform.min_size = saved

    def scale_of(self, boxes: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per image, the pyramid level of each box: the one where its area is nearest 224^2."""
        choices = []
        for i, b in enumerate(boxes):
            h, w = self.original_sizes[i]
            growth = [lvl.image_sizes[i][0] * lvl.image_sizes[i][1] / (h * w) for lvl, _ in self.levels]
            area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
            choices.append((area[:, None] * b.new_tensor(growth)[None, :] - TARGET_AREA).abs().argmin(dim=1))
        return choices

    def score_and_regress(self, boxes: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per image: class probabilities (n, C) and per-class regressed boxes (n, C, 4) in original
        pixels, clipped to the image, for ``boxes`` given in original pixels."""
        heads = self.heads
        counts = [b.shape[0] for b in boxes]
        offsets = torch.tensor([0, *counts]).cumsum(0).tolist()
        choices = self.scale_of(boxes)
        pooled, rows = [], []
        for level, (image_list, features) in enumerate(self.levels):
            subsets = [b[c == level] for b, c in zip(boxes, choices)]
            if not sum(s.shape[0] for s in subsets):
                continue
            resized = FastRCNN.resize_proposals(subsets, self.original_sizes, image_list)
            pooled.append(heads.box_roi_pool(features, resized, image_list.image_sizes))
            rows += [torch.nonzero(c == level).squeeze(1) + offsets[i] for i, c in enumerate(choices)]
        if not pooled:
            num_classes = heads.box_predictor.cls_score.out_features
            empty = [b.new_zeros((0, num_classes)) for b in boxes]
            return empty, [b.new_zeros((0, num_classes, 4)) for b in boxes]
        x = torch.cat(pooled)
        in_order = torch.empty_like(x)
        in_order[torch.cat(rows).to(x.device)] = x  # back to the boxes' own order
        return classify_and_regress(heads, in_order, boxes, self.original_sizes)


def classify_and_regress(
    heads: RoIHeads, pooled: torch.Tensor, boxes: list[torch.Tensor], sizes: list[tuple[int, int]]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per image: class probabilities (n, C) and per-class boxes (n, C, 4) regressed from ``boxes``
    and clipped to ``sizes``, from the RoI features ``pooled`` (rows in the order of ``boxes``)."""
    logits, deltas = heads.box_predictor(heads.box_head(pooled))
    n, num_classes = logits.shape
    rois = torch.cat(boxes).to(deltas.dtype) if boxes else deltas.new_zeros((0, 4))
    # decode_single + an explicit class count: BoxCoder.decode cannot reshape an empty batch.
    regressed = heads.box_coder.decode_single(raw_box_deltas(heads, deltas), rois).reshape(n, num_classes, 4)
    counts = [b.shape[0] for b in boxes]
    probs = F.softmax(logits, -1).split(counts)
    return list(probs), [clip_boxes_to_image(r, size) for r, size in zip(regressed.split(counts), sizes)]


@torch.no_grad()
def pyramid_detect(
    model: GeneralizedRCNN, images: list[torch.Tensor], proposals: list[torch.Tensor], scales: list[int]
) -> list[dict[str, torch.Tensor]]:
    """Fast R-CNN's multi-scale detections (torchvision dicts, original pixels) for proposals in
    original pixels; score threshold, NMS and detections per image are the model's."""
    heads = model.roi_heads
    probs, regressed = ImagePyramid(model, images, scales).score_and_regress(proposals)
    detections = []
    for p, r in zip(probs, regressed):
        boxes, scores, labels = candidates(p, r, heads.score_thresh)
        keep = batched_nms(boxes, scores, labels, heads.nms_thresh)[: heads.detections_per_img]
        detections.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return detections


def candidates(
    scores: torch.Tensor, boxes: torch.Tensor, score_thresh: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(boxes, scores, labels) of the foreground (box, class) pairs scoring above ``score_thresh``,
    minus near-empty boxes, as torchvision's ``postprocess_detections`` filters them."""
    num_classes = scores.shape[1]
    labels = torch.arange(num_classes, device=scores.device).expand_as(scores)
    boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
    keep = torch.nonzero(scores > score_thresh).squeeze(1)
    keep = keep[big_enough(boxes[keep])]
    return boxes[keep], scores[keep], labels[keep]


def big_enough(boxes: torch.Tensor) -> torch.Tensor:
    """Mask of boxes at least 0.01 px wide and high (torchvision's rule for detections)."""
    return torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device).index_fill_(
        0, remove_small_boxes(boxes, 1e-2), True
    )
