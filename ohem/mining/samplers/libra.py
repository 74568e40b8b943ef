"""Libra R-CNN's IoU-balanced sampling (Pang et al., CVPR 2019), with the instance-balanced
foreground that mmdetection's Libra configs pair it with. Per image ``batch_size_per_image`` RoIs:
at most ``fg_fraction`` of them foreground (rounded down), an equal number per gt box; background for
the rest, an equal number from each of ``bins`` IoU bins, so that the few hard negatives near an
object are not drowned by the many easy ones a random draw gives. A ``floor_fraction`` share of the
background is drawn at random from below ``floor_thr``. No read-only pass.

Where we chose (docs/SAMPLERS.md has the why):

* Bin edges: ``bins`` equal bins over [``floor_thr``, ``bg_iou_high``), or over [``bg_iou_low``,
  ``bg_iou_high``) without a floor. mmdetection's bins reach up to the highest IoU of any RoI of the
  image, foreground included (1 once the gt boxes are RoIs), so with 3 bins its top bin holds no
  background and that third of the draw is random.
* ``floor_thr`` None is mmdetection's -1 (no floor, every negative binned). mmdetection turns its -1
  into 0 after the first image it samples; we keep -1's documented meaning throughout. ``floor_thr``
  0 is mmdetection's 0: the floor is IoU exactly 0, the bins start above it.
* Shares: the draw is split as evenly as the groups (bins, gt boxes) allow: a group with fewer RoIs
  than its share gives all it has and the others share the rest equally; the odd RoIs go to the
  highest-IoU bins and to the first gt boxes. mmdetection draws a fixed share per group and the rest
  at random from all that is left, which favours the largest group.
* Short sides: the balanced draw's shortfall is drawn from the floor, the floor's from the binned
  background (as mmdetection); background fills a foreground shortfall (as torchvision and mmdetection).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Self

import torch
from pydantic import Field, model_validator
from torch import Tensor

from ohem.mining.readonly import PerRoILoss
from ohem.mining.rois import LabelledRoIs, elementwise_iou
from ohem.mining.sampler import Fraction, Sample, SamplerBase, each_image, random_subset, register_sampler


@register_sampler("libra")
class LibraSampler(SamplerBase):
    """IoU-balanced background, instance-balanced foreground."""

    bg_iou_high: ClassVar[float] = 0.5  # the head's background ceiling (torchvision's and Fast R-CNN's)
    bins: Annotated[int, Field(ge=1, le=100)] = 3
    """IoU bins the background is drawn equally from."""
    floor_thr: Fraction | None = None
    """Background below this IoU is drawn at random, not by bin (0: IoU 0 exactly); None: no such floor."""
    floor_fraction: Fraction = 0.0
    """The share of the background drawn from below floor_thr."""

    @model_validator(mode="after")
    def _floor_below_ceiling(self) -> Self:
        if self.floor_thr is not None and self.floor_thr >= self.bg_iou_high:
            raise ValueError(
                f"sampler.floor_thr must be below {self.bg_iou_high} (the background's IoU ceiling), "
                f"got {self.floor_thr}"
            )
        return self

    def sample(self, rois: LabelledRoIs, per_roi: PerRoILoss | None, iteration: int | None) -> Sample:
        iou = elementwise_iou(rois.boxes, rois.matched_gt)  # matched_gt is each RoI's best gt box
        fg_quota = int(self.batch_size_per_image * self.fg_fraction)

        def pick(image: Tensor) -> Tensor:
            labels = rois.labels[image]
            fg, bg = image[labels > 0], image[labels == 0]
            fg = balanced_draw(fg, rois.matched_idxs[fg], fg_quota)
            bg = self.background(bg, iou[bg], self.batch_size_per_image - fg.numel())
            return torch.cat([fg, bg]).sort().values

        return Sample(each_image(rois, pick))

    def background(self, rows: Tensor, iou: Tensor, count: int) -> Tensor:
        """``count`` of the background ``rows``: IoU-balanced, with the floor's share at random."""
        if rows.numel() <= count:
            return rows
        low = self.bg_iou_low if self.floor_thr is None else self.floor_thr
        if self.floor_thr is None:
            floor = torch.zeros_like(rows, dtype=torch.bool)
        else:
            floor = iou < low if low > 0 else iou == 0
        width = (self.bg_iou_high - low) / self.bins
        # clamped: elementwise_iou may differ from the labelling's box_iou in the last bit at an edge
        bin_of = ((iou - low) / width).floor().long().clamp(0, self.bins - 1)
        # group ids count down from the top bin: the odd RoIs go to the hardest negatives
        binned = balanced_draw(rows[~floor], self.bins - 1 - bin_of[~floor], int(count * (1 - self.floor_fraction)))
        floored = random_subset(rows[floor], count - binned.numel())
        drawn = torch.cat([binned, floored])
        rest = rows[~torch.isin(rows, drawn)]
        return torch.cat([drawn, random_subset(rest, count - drawn.numel())])


def balanced_draw(rows: Tensor, groups: Tensor, count: int) -> Tensor:
    """``count`` of ``rows`` at random, the same number from each group as far as the groups allow
    (``even_shares``; the odd ones to the lowest group ids); all of them when there are fewer."""
    if rows.numel() <= count:
        return rows
    ids, sizes = torch.unique(groups, return_counts=True)  # ascending ids
    shares = even_shares(sizes.tolist(), count)
    return torch.cat([random_subset(rows[groups == g], n) for g, n in zip(ids.tolist(), shares)])


def even_shares(sizes: list[int], count: int) -> list[int]:
    """How many of ``count`` to take from groups of these ``sizes``: equal shares, a group smaller than
    its share taking all it has and the others sharing the rest; the odd ones to the first groups."""
    shares, left = [0] * len(sizes), count
    while left > 0:
        open_groups = [i for i, size in enumerate(sizes) if shares[i] < size]
        if not open_groups:
            break
        share = left // len(open_groups)
        if share == 0:  # fewer left than open groups: one more each for the first ones
            for i in open_groups[:left]:
                shares[i] += 1
            break
        for i in open_groups:
            taken = min(share, sizes[i] - shares[i])
            shares[i] += taken
            left -= taken
    return shares
