"""``hard-half``: per image, ``hard_fraction`` (half) of the ``batch_size_per_image`` RoIs are the ones of
highest read-only loss, the rest a random draw from the others. Between OHEM (every row chosen by loss)
and random sampling: the hard rows keep the gradient on the mistakes, the random ones keep the easy
majority (mostly background) in view, which OHEM's batch loses. No NMS, no foreground quota; every RoI a
candidate (``bg_iou_low`` 0).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ohem.mining.readonly import PerRoILoss
from ohem.mining.rois import LabelledRoIs
from ohem.mining.sampler import Fraction, ReadOnlyPassSampler, Sample, each_image, random_subset, register_sampler


@register_sampler("hard-half")
class HardHalfSampler(ReadOnlyPassSampler):
    """The hardest RoIs by read-only loss for part of the batch, a random draw from the rest for the rest."""

    hard_fraction: Fraction = 0.5
    """The share of each image's batch taken by loss (rounded down); the rest is drawn at random."""
    mining_loss: Literal["cls+box", "cls"] = "cls+box"
    """The loss RoIs are ranked by: cls+box (OHEM's) | cls."""

    def sample(self, rois: LabelledRoIs, per_roi: PerRoILoss | None, iteration: int | None) -> Sample:
        if per_roi is None:
            raise ValueError("HardHalfSampler.sample needs the read-only pass's losses")
        loss, hard_count = per_roi.ranked_by(self.mining_loss), int(self.batch_size_per_image * self.hard_fraction)

        def pick(rows: Tensor) -> Tensor:
            ranked = rows[torch.sort(loss[rows], descending=True, stable=True).indices]
            hard = ranked[:hard_count]
            return torch.cat([hard, random_subset(ranked[hard_count:], self.batch_size_per_image - hard.numel())])

        return Sample(each_image(rois, pick))
