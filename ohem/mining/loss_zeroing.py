"""The OHEM variant the paper rejects, kept only to measure its cost (the ``ohem-zeroing`` arm of
``ohem bench``): one forward *with* gradients over all RoIs, the loss zeroed
outside the hard ones. It selects the same RoIs and gives the same gradients as ``OHEMRoIHeads``,
but keeps every RoI's activations and graph."""

from __future__ import annotations

import torch
from torch import Tensor

from ohem.mining.pooling import split_by_image
from ohem.mining.roi_heads import (
    OHEMRoIHeads,
    foreground_probability,
    label_rois,
    mining_loss,
    mining_record,
    mining_stats,
    per_roi_loss_terms,
    poolable,
)
from ohem.mining.select import select_hard_examples


class LossZeroingRoIHeads(OHEMRoIHeads):
    def forward(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:  # fmt: skip
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        if self.has_mask() or self.has_keypoint():
            raise NotImplementedError("sampler.implementation=loss-zeroing supports box heads only")
        features, proposals = poolable(features, proposals)
        s = self.sampler
        rois = label_rois(self, proposals, targets, s.bg_iou_floor)
        pieces = split_by_image(rois.boxes, rois.image_ids, rois.num_images)
        logits, deltas = self.box_predictor(self.box_head(self.box_roi_pool(features, pieces, image_shapes)))
        cls_loss, box_loss = per_roi_loss_terms(logits, deltas, rois.labels, rois.box_targets, self.box_loss_beta)
        losses = mining_loss(cls_loss, box_loss, s.mining_loss).detach()
        per_label = rois.labels if s.nms_per_label else None
        hard = select_hard_examples(losses, rois.boxes, rois.image_ids, s.batch_size_per_image, s.nms_iou, per_label)
        keep = torch.zeros_like(cls_loss)
        keep[hard] = 1.0
        num = max(hard.numel(), 1)
        self.last_mining = mining_record(rois, losses, hard, image_shapes)
        return [], {
            "loss_classifier": (cls_loss * keep).sum() / num,
            "loss_box_reg": (box_loss * keep).sum() / num,
            **mining_stats(rois, losses, hard, foreground_probability(logits)),
        }
