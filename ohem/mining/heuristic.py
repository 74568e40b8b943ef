"""Fast R-CNN's heuristic sampler, the baseline OHEM replaces: per image ``batch_size_per_image`` RoIs
at random, at most ``fg_fraction`` of them foreground, background only from RoIs whose best IoU is
in [``bg_iou_low``, 0.5). With 512 RoIs and ``bg_iou_low=0`` it is torchvision's default sampler. It
needs no read-only pass."""

from __future__ import annotations

from dataclasses import dataclass

from ohem.config import SamplerConfig
from ohem.mining.readonly import ReadOnlySettings, RoILosses
from ohem.mining.rois import LabelledRoIs
from ohem.mining.sampler import Sample, bg_iou_low_of, random_fg_bg


@dataclass
class HeuristicSampler:
    """The settings are ``SamplerConfig``'s (defaults there); ``bg_iou_low`` defaults to Fast R-CNN's own."""

    batch_size_per_image: int
    fg_fraction: float
    bg_iou_low: float = 0.1  # Fast R-CNN's bg_lo
    readonly: ReadOnlySettings | None = None  # no read-only pass

    @classmethod
    def from_config(cls, cfg: SamplerConfig) -> HeuristicSampler:
        bg_iou_low = bg_iou_low_of(cfg, cls.bg_iou_low)
        return cls(cfg.batch_size_per_image, cfg.fg_fraction, bg_iou_low)

    def sample(self, rois: LabelledRoIs, losses: RoILosses | None, iteration: int | None) -> Sample:
        return Sample(random_fg_bg(rois, self.batch_size_per_image, self.fg_fraction))
