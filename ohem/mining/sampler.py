"""What a sampler is: given the labelled RoIs of a training step (and, when it asks for them, the
read-only pass's per-RoI losses), the rows to train on and a weight per row.

A sampler is a small object with

* ``bg_iou_low``: RoIs whose best IoU is below it are not candidates (``label_rois`` drops them);
* ``readonly``: the read-only pass's settings when it needs per-RoI losses, else None (and then the
  step pays for no read-only pass);
* ``sample(rois, losses, iteration) -> Sample``;
* optionally ``presample(rois) -> rows | None``: the rows (ascending) that the rest of the step is
  restricted to, or None for all. The head calls it right after labelling, before the read-only
  pass; it then goes on with ``rois.take(rows)`` as if those were all the RoIs: the read-only pass
  runs on them only, ``sample`` gets them and their losses (its rows index them), and the
  ``ohem_all_*`` statistics are over them. It exists so that a sampler can bound the read-only pass's
  cost (``ohem-presample``); a sampler without it (heuristic, ohem) runs exactly as before it existed.

``SamplingRoIHeads`` calls it once per training forward; ``ohem.mining.SAMPLERS`` names them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler

from ohem.mining.pooling import split_by_image
from ohem.mining.readonly import ReadOnlySettings, RoILosses
from ohem.mining.rois import LabelledRoIs


@dataclass
class Sample:
    """Rows of the ``LabelledRoIs`` to train on (image by image, each image's in any order) and a
    weight per row; ``weights=None`` is weight 1 each."""

    rows: Tensor
    weights: Tensor | None = None


class Sampler(Protocol):
    bg_iou_low: float
    readonly: ReadOnlySettings | None

    def sample(self, rois: LabelledRoIs, losses: RoILosses | None, iteration: int | None) -> Sample:
        """``iteration``: the 0-based training step (from ``ohem.events``), None outside a trainer."""
        ...


def presampled(sampler: Sampler, rois: LabelledRoIs) -> LabelledRoIs:
    """``rois`` restricted to the sampler's ``presample`` rows, when it has that step and uses it."""
    presample = getattr(sampler, "presample", None)  # optional: most samplers see every RoI
    rows = presample(rois) if presample is not None else None
    return rois if rows is None else rois.take(rows)


def random_fg_bg(rois: LabelledRoIs, per_image: int, fg_fraction: float) -> Tensor:
    """Rows of a random sample per image, as torchvision's sampler draws it: at most ``fg_fraction``
    x ``per_image`` foreground, background for the rest (rows ascending within each image)."""
    sampler = BalancedPositiveNegativeSampler(per_image, fg_fraction)
    labels = split_by_image(rois.labels, rois.image_ids, rois.num_images)
    rows, offset = [], 0
    for image_labels, pos, neg in zip(labels, *sampler(labels)):
        rows.append(torch.nonzero(pos | neg).squeeze(1) + offset)
        offset += image_labels.numel()
    return torch.cat(rows)


def rows_per_image(rois: LabelledRoIs) -> list[Tensor]:
    """The rows of each image (ascending), one tensor per image."""
    rows = torch.arange(rois.labels.numel(), device=rois.labels.device)
    return split_by_image(rows, rois.image_ids, rois.num_images)


def random_subset(rows: Tensor, count: int) -> Tensor:
    """``count`` of ``rows`` at random (all of them, shuffled, when there are fewer), from torch's RNG."""
    return rows[torch.randperm(rows.numel(), device=rows.device)[:count]]
