"""Fast R-CNN's heuristic sampler, the baseline OHEM replaces: a fixed foreground fraction, and
background only from RoIs whose best IoU is in [``bg_iou_low``, 0.5). With 512 RoIs per image and
``bg_iou_low=0`` it is torchvision's default sampler."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads

from ohem.mining.roi_heads import match_rois, poolable


class HeuristicRoIHeads(RoIHeads):
    """``RoIHeads`` whose background comes from IoU in [``bg_iou_low``, bg threshold)."""

    def __init__(self, *args, bg_iou_low: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.bg_iou_low = bg_iou_low

    def forward(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:  # fmt: skip
        features, proposals = poolable(features, proposals)
        return super().forward(features, proposals, image_shapes, targets)

    def assign_targets_to_proposals(
        self, proposals: list[torch.Tensor], gt_boxes: list[torch.Tensor], gt_labels: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """torchvision's hook: labels with -1 (ignored, never sampled) below ``bg_iou_low``."""
        return match_rois(self, proposals, gt_boxes, gt_labels, self.bg_iou_low)
