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

from dataclasses import dataclass

import torch
from torch import Tensor

from ohem.config import SamplerConfig
from ohem.mining.readonly import ReadOnlySettings, RoILosses
from ohem.mining.rois import LabelledRoIs
from ohem.mining.sampler import Sample, bg_iou_low_of, rows_per_image


@dataclass
class StratifiedOHEMSampler:
    """The settings are ``SamplerConfig``'s (defaults there)."""

    batch_size_per_image: int
    fg_fraction: float
    readonly: ReadOnlySettings | None
    bg_iou_low: float = 0.0  # every RoI is a candidate

    @classmethod
    def from_config(cls, cfg: SamplerConfig) -> StratifiedOHEMSampler:
        bg_iou_low = bg_iou_low_of(cfg, cls.bg_iou_low)
        return cls(cfg.batch_size_per_image, cfg.fg_fraction, ReadOnlySettings.from_config(cfg), bg_iou_low)

    def sample(self, rois: LabelledRoIs, losses: RoILosses | None, iteration: int | None) -> Sample:
        if losses is None:
            raise ValueError("StratifiedOHEMSampler.sample needs the read-only pass's losses")
        fg_quota = int(self.batch_size_per_image * self.fg_fraction)
        rows = []
        for image in rows_per_image(rois):
            labels = rois.labels[image]
            fg = hardest(image[labels > 0], losses.cls, fg_quota)
            bg = hardest(image[labels == 0], losses.cls, self.batch_size_per_image - fg.numel())
            rows.append(torch.cat([fg, bg]))
        return Sample(torch.cat(rows))


def hardest(rows: Tensor, loss: Tensor, count: int) -> Tensor:
    """The ``count`` of ``rows`` of highest ``loss`` (indexed by row), hardest first, ties to the lower row."""
    return rows[torch.sort(loss[rows], descending=True, stable=True).indices[:count]]
