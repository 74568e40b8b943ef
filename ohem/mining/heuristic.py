"""Fast R-CNN's heuristic sampler, the baseline OHEM replaces: a fixed foreground fraction, and
background only from RoIs whose best IoU is in [``bg_iou_low``, 0.5). With 512 RoIs per image and
``bg_iou_low=0`` it is torchvision's default sampler."""

from __future__ import annotations

from torch import Tensor

from ohem.mining.roi_heads import BoxLossRoIHeads, match_rois


class HeuristicRoIHeads(BoxLossRoIHeads):
    """``RoIHeads`` whose background comes from IoU in [``bg_iou_low``, bg threshold)."""

    def __init__(self, *args, bg_iou_low: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.bg_iou_low = bg_iou_low

    def assign_targets_to_proposals(
        self, proposals: list[Tensor], gt_boxes: list[Tensor], gt_labels: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """torchvision's hook: labels with -1 (ignored, never sampled) below ``bg_iou_low``."""
        return match_rois(self, proposals, gt_boxes, gt_labels, self.bg_iou_low)
