"""Fast R-CNN's heuristic sampler, the baseline OHEM replaces: per image ``batch_size_per_image`` RoIs
at random, at most ``fg_fraction`` of them foreground, background only from RoIs whose best IoU is
in [``bg_iou_low``, 0.5). With 512 RoIs and ``bg_iou_low=0`` it is torchvision's default sampler. It
needs no read-only pass."""

from __future__ import annotations

from ohem.mining.readonly import PerRoILoss
from ohem.mining.rois import LabelledRoIs
from ohem.mining.sampler import Fraction, Sample, SamplerBase, random_fg_bg, register_sampler


@register_sampler("heuristic")
class HeuristicSampler(SamplerBase):
    """Fast R-CNN's random sample with a foreground quota."""

    bg_iou_low: Fraction = 0.1
    """RoIs whose best IoU is below this are not candidates (Fast R-CNN's bg_lo 0.1; torchvision's 0)."""

    def sample(self, rois: LabelledRoIs, per_roi: PerRoILoss | None, iteration: int | None) -> Sample:
        return Sample(random_fg_bg(rois, self.batch_size_per_image, self.fg_fraction))
