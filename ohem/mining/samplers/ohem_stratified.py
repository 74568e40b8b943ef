"""mmdetection's OHEM sampler: per image the ``batch_size_per_image`` RoIs of highest read-only
classification loss within a foreground quota, no NMS. At most ``fg_fraction`` x
``batch_size_per_image`` foreground RoIs (rounded down), the hardest of them; then the hardest
background for the rest of the batch, so background fills a foreground shortfall. As in mmdetection
a background shortfall is not filled with more foreground: the image then trains on fewer RoIs.

Where we differ from mmdetection's code: ties in loss go to the lower row (a stable sort, as
``ohem.mining.select``); mmdetection's ``topk`` leaves them unspecified. Its read-only forward runs
in the head's training mode; ours follows ``sampler.readonly_dropout``. Every RoI is a candidate
(``bg_iou_low`` 0, as its Faster R-CNN assigner).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ohem.mining.readonly import PerRoILoss
from ohem.mining.rois import LabelledRoIs
from ohem.mining.sampler import ReadOnlyPassSampler, Sample, each_image, register_sampler


@register_sampler("ohem-stratified")
class StratifiedOHEMSampler(ReadOnlyPassSampler):
    """The hardest foreground within a quota, then the hardest background, by classification loss."""

    def sample(self, rois: LabelledRoIs, per_roi: PerRoILoss | None, iteration: int | None) -> Sample:
        if per_roi is None:
            raise ValueError("StratifiedOHEMSampler.sample needs the read-only pass's losses")
        fg_quota, loss = int(self.batch_size_per_image * self.fg_fraction), per_roi.cls

        def pick(image: Tensor) -> Tensor:
            labels = rois.labels[image]
            fg = hardest(image[labels > 0], loss, fg_quota)
            bg = hardest(image[labels == 0], loss, self.batch_size_per_image - fg.numel())
            return torch.cat([fg, bg])

        return Sample(each_image(rois, pick))


def hardest(rows: Tensor, loss: Tensor, count: int) -> Tensor:
    """The ``count`` of ``rows`` of highest ``loss`` (indexed by row), hardest first, ties to the lower row."""
    return rows[torch.sort(loss[rows], descending=True, stable=True).indices[:count]]
