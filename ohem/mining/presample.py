"""OHEM among a random presample: per image, ``presample_factor`` x ``batch_size_per_image`` RoIs at
random (all of them when the image has fewer), and OHEM's selection among those only: the
``batch_size_per_image`` of highest read-only loss after NMS. The read-only pass runs on the
presample alone (the ``presample`` step of ``ohem.mining.sampler``), so its cost is bounded by the
batch size instead of the proposal count; the price is that a hard RoI outside the presample cannot
be picked. Every other setting is OHEM's (``ohem.mining.hard_examples``), ``ohem_start`` included.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ohem.config import SamplerConfig
from ohem.mining.hard_examples import OHEMSampler
from ohem.mining.rois import LabelledRoIs
from ohem.mining.sampler import random_subset, rows_per_image


@dataclass
class PresampledOHEMSampler(OHEMSampler):
    """``OHEMSampler`` with a ``presample`` step; the settings are ``SamplerConfig``'s."""

    presample_factor: int = field(kw_only=True)

    @classmethod
    def from_config(cls, cfg: SamplerConfig) -> PresampledOHEMSampler:
        return cls(**OHEMSampler.settings(cfg), presample_factor=cfg.presample_factor)

    def presample(self, rois: LabelledRoIs) -> Tensor | None:
        """Rows (ascending) of ``presample_factor`` x ``batch_size_per_image`` random RoIs per image; None
        (every RoI) when no image has more."""
        size = self.presample_factor * self.batch_size_per_image
        per_image = rows_per_image(rois)
        if all(rows.numel() <= size for rows in per_image):
            return None
        return torch.cat([random_subset(rows, size).sort().values for rows in per_image])
