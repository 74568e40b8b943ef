"""Fast R-CNN's box-target normalisation (``model.box_target_norm: empirical``): each class's fg RoI
regression targets are standardised by their mean and std over the training set, measured once
before training (py-faster-rcnn's ``add_bbox_regression_targets``), kept in the checkpoint as buffers
of the RoI heads, and undone when detections are decoded."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import box_iou

from ohem.structures import ProposalDataset


class BoxTargetNorm(nn.Module):
    def __init__(self, num_classes: int) -> None:  # num_classes counts the background, as torchvision's
        super().__init__()
        self.mean: Tensor
        self.std: Tensor
        self.register_buffer("mean", torch.zeros(num_classes, 4))
        self.register_buffer("std", torch.ones(num_classes, 4))

    def normalise(self, targets: Tensor, labels: Tensor) -> Tensor:
        return (targets - self.mean[labels]) / self.std[labels]

    def unnormalise(self, box_regression: Tensor) -> Tensor:
        """(R, C * 4) predicted deltas, normalised -> as the box coder decodes them."""
        return box_regression * self.std.reshape(1, -1) + self.mean.reshape(1, -1)

    @torch.no_grad()
    def fit(self, dataset: ProposalDataset, fg_iou: float, hflip: bool) -> None:
        """Mean and std per class of the raw (weights 1) targets of every RoI at IoU >= ``fg_iou`` with a
        gt box, over ``dataset``'s proposals plus gt boxes (and their mirror images with ``hflip``, whose
        dx is negated). A class without fg RoIs keeps mean 0, std 1; a zero std becomes 1."""
        num_classes = self.mean.shape[0]
        sums, squares = (
            torch.zeros(num_classes, 4, dtype=torch.float64),
            torch.zeros(num_classes, 4, dtype=torch.float64),
        )
        counts = torch.zeros(num_classes, dtype=torch.float64)
        coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        for i in range(len(dataset)):
            gt = dataset.annotations(i)
            if gt["boxes"].numel() == 0:
                continue
            rois = torch.cat([dataset.proposals(i).float(), gt["boxes"].float()])
            best_iou, best_gt = box_iou(gt["boxes"].float(), rois).max(dim=0)
            fg = best_iou >= fg_iou
            deltas = coder.encode_single(gt["boxes"].float()[best_gt[fg]], rois[fg]).double()
            labels = gt["labels"][best_gt[fg]]
            for d in (deltas, deltas * deltas.new_tensor([-1.0, 1.0, 1.0, 1.0])) if hflip else (deltas,):
                sums.index_add_(0, labels, d)
                squares.index_add_(0, labels, d * d)
                counts.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
        seen = counts > 0
        mean = torch.zeros_like(sums)
        mean[seen] = sums[seen] / counts[seen, None]
        std = torch.ones_like(sums)
        std[seen] = (squares[seen] / counts[seen, None] - mean[seen] ** 2).clamp(min=0).sqrt()
        std[std == 0] = 1.0
        self.mean.copy_(mean.float())
        self.std.copy_(std.float())


def raw_box_deltas(heads: nn.Module, box_regression: Tensor) -> Tensor:
    """The box predictor's output as ``heads.box_coder`` decodes it (unnormalised when the heads have a norm)."""
    norm = getattr(heads, "box_target_norm", None)
    return box_regression if norm is None else norm.unnormalise(box_regression)
