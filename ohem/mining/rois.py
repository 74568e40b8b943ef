"""The RoIs of a training step, labelled, and the per-RoI loss every sampler ranks or weights by.

``label_rois`` labels every proposal plus the gt boxes of a batch (fg at IoU >= the head's fg
threshold, bg in [``bg_iou_low``, bg threshold), the rest dropped) without sampling; a sampler then
picks rows of the resulting ``LabelledRoIs``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import box_area, box_iou

from ohem.mining.pooling import split_by_image


@dataclass
class LabelledRoIs:
    """RoIs of a batch, concatenated over images (image ``i``'s rows are contiguous)."""

    boxes: Tensor  # (R, 4) in the resized frame
    image_ids: Tensor  # (R,)
    matched_idxs: Tensor  # (R,) index of the best gt box in its image
    labels: Tensor  # (R,) class, 0 = background
    box_targets: Tensor  # (R, 4) encoded by the head's box coder (and normalised, when the head has a norm)
    matched_gt: Tensor  # (R, 4) the best gt box
    num_images: int

    def take(self, rows: Tensor) -> LabelledRoIs:
        """These ``rows`` (in image order) as a ``LabelledRoIs`` of their own, images kept."""
        return LabelledRoIs(
            self.boxes[rows],
            self.image_ids[rows],
            self.matched_idxs[rows],
            self.labels[rows],
            self.box_targets[rows],
            self.matched_gt[rows],
            self.num_images,
        )

    def per_image(self, rows: Tensor) -> tuple[list[Tensor], ...]:
        """``rows`` (in image order) as per-image lists of (boxes, matched idxs, labels, targets)."""
        # rows in image order: the head sorts a sampler's rows first (ohem.mining.contract.image_order)
        parts = split_by_image(rows, self.image_ids[rows], self.num_images)
        fields = (self.boxes, self.matched_idxs, self.labels, self.box_targets)
        return tuple([field[p] for p in parts] for field in fields)


def match_rois(
    heads: RoIHeads, rois: list[Tensor], gt_boxes: list[Tensor], gt_labels: list[Tensor], bg_iou_low: float
) -> tuple[list[Tensor], list[Tensor]]:
    """Per image: best gt index and label of each RoI (class at IoU >= fg, 0 in [bg_iou_low, bg), else -1)."""
    fg_iou, bg_iou_high = heads.proposal_matcher.high_threshold, heads.proposal_matcher.low_threshold
    matched_idxs, labels = [], []
    for boxes, gt, classes in zip(rois, gt_boxes, gt_labels):
        if gt.numel() == 0:
            best_iou = boxes.new_zeros(boxes.shape[0])
            best_gt = torch.zeros(boxes.shape[0], dtype=torch.int64, device=boxes.device)
            label = torch.zeros_like(best_gt)
        else:
            best_iou, best_gt = box_iou(gt, boxes).max(dim=0)
            label = classes[best_gt].to(torch.int64).masked_fill(best_iou < fg_iou, 0)
        # masked_fill, not boolean-mask assignment: that one is a nonzero, a host sync on CUDA
        label = label.masked_fill(((best_iou >= bg_iou_high) & (best_iou < fg_iou)) | (best_iou < bg_iou_low), -1)
        matched_idxs.append(best_gt)
        labels.append(label)
    return matched_idxs, labels


def label_rois(heads: RoIHeads, proposals: list[Tensor], targets: list[dict], bg_iou_low: float) -> LabelledRoIs:
    """All proposals plus the gt boxes, labelled, without sampling; ignored RoIs are dropped."""
    heads.check_targets(targets)
    gt_boxes = [t["boxes"].to(proposals[0].dtype) for t in targets]
    rois = heads.add_gt_proposals(proposals, gt_boxes)
    matched_idxs, roi_labels = match_rois(heads, rois, gt_boxes, [t["labels"] for t in targets], bg_iou_low)
    kept = torch.nonzero(torch.cat(roi_labels) >= 0).squeeze(1)  # one nonzero (a host sync on CUDA) per batch
    gts = [g if g.numel() else g.new_zeros((1, 4)) for g in gt_boxes]  # no objects: matched to a dummy box
    offsets = [sum(len(g) for g in gts[:i]) for i in range(len(gts))]  # image i's gt rows in torch.cat(gts)
    matched_gt = torch.cat(gts)[torch.cat([m + o for m, o in zip(matched_idxs, offsets)])[kept]]
    boxes, labels = torch.cat(rois)[kept], torch.cat(roi_labels)[kept]
    image_ids = torch.cat([torch.full((len(r),), i, device=boxes.device) for i, r in enumerate(rois)])[kept]
    box_targets = heads.box_coder.encode_single(matched_gt, boxes)
    if getattr(heads, "box_target_norm", None) is not None:
        box_targets = heads.box_target_norm.normalise(box_targets, labels)
    # A gt-less image's RoIs (all background) are matched to a dummy empty box, whose encoding is infinite:
    # their targets are 0 instead, so every target is finite (torch.full per image: no host-to-device copy).
    has_gt = [torch.full((len(r),), g.numel() > 0, device=boxes.device) for r, g in zip(rois, gt_boxes)]
    box_targets = torch.where(torch.cat(has_gt)[kept].unsqueeze(1), box_targets, 0.0)
    matched = torch.cat(matched_idxs)[kept]
    return LabelledRoIs(boxes, image_ids, matched, labels, box_targets, matched_gt, len(rois))


def unreduced_loss_terms(
    class_logits: Tensor, box_regression: Tensor, labels: Tensor, box_targets: Tensor, beta: float
) -> tuple[Tensor, Tensor]:
    """Unreduced (cross-entropy, smooth-L1 with ``beta``) of each RoI, the box term 0 on background: the
    terms of torchvision's ``fastrcnn_loss`` (summed over 4 coordinates), so their mean is what training optimises."""
    cls_loss = F.cross_entropy(class_logits, labels, reduction="none")
    # Every RoI's deltas for its own class, the background's term masked to 0 rather than the
    # foreground picked out by index: no nonzero, so no host sync on CUDA. Background targets are
    # masked first (a sampler's own targets need not be finite there).
    fg = labels > 0
    rows = torch.arange(labels.numel(), device=labels.device)
    own = box_regression.reshape(box_regression.shape[0], -1, 4)[rows, labels]
    targets = torch.where(fg.unsqueeze(1), box_targets, 0.0)
    box_loss = F.smooth_l1_loss(own, targets, beta=beta, reduction="none").sum(1)
    return cls_loss, torch.where(fg, box_loss, 0.0)


def weighted_roi_loss(
    class_logits: Tensor,
    box_regression: Tensor,
    labels: Tensor,
    box_targets: Tensor,
    beta: float,
    weights: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """(classification, box) loss of the trainable pass: the ``weights``-weighted sum of the per-RoI
    terms divided by the number of RoIs (not by the sum of the weights), the box term on foreground
    only. ``weights=None`` is weight 1 each, summed in the order of torchvision's ``fastrcnn_loss`` (so
    unweighted samplers train bit for bit as torchvision's sampler did)."""
    count = max(labels.numel(), 1)
    if weights is None:
        fg = torch.where(labels > 0)[0]
        own = box_regression.reshape(box_regression.shape[0], -1, 4)[fg, labels[fg]]
        box = F.smooth_l1_loss(own, box_targets[fg], beta=beta, reduction="sum") / count
        return F.cross_entropy(class_logits, labels), box
    cls_loss, box_loss = unreduced_loss_terms(class_logits, box_regression, labels, box_targets, beta)
    return (cls_loss * weights).sum() / count, (box_loss * weights).sum() / count


def foreground_probability(class_logits: Tensor) -> Tensor:
    """(R,) 1 - P(background) of each RoI: their spread over RoIs tells a head that ranks RoIs from
    a collapsed one (``ohem.mining.stall``)."""
    return 1 - class_logits.detach().float().softmax(1)[:, 0]


def elementwise_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of ``a[i]`` with ``b[i]``."""
    lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    return inter / (box_area(a) + box_area(b) - inter).clamp(min=1e-12)
