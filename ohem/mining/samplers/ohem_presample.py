"""OHEM among a random presample: per image, ``factor`` x ``batch_size_per_image`` RoIs at random (all
of them when the image has fewer), and OHEM's selection among those only: the
``batch_size_per_image`` of highest read-only loss after NMS. The read-only pass runs on the
presample alone (the ``presample`` hook of ``ohem.mining.sampler``), so its cost is bounded by the
batch size instead of the proposal count; the price is that a hard RoI outside the presample cannot
be picked. Every other setting is OHEM's (``ohem.mining.samplers.ohem``), ``start`` included.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from ohem.mining.rois import LabelledRoIs
from ohem.mining.sampler import random_subset, register_sampler, rows_per_image
from ohem.mining.samplers.ohem import OHEMSampler


@register_sampler("ohem-presample")
class PresampledOHEMSampler(OHEMSampler):
    """``OHEMSampler`` with a ``presample`` step."""

    factor: Annotated[int, Field(ge=1, le=1000)] = 4
    """The read-only pass runs on factor x batch_size_per_image random RoIs per image."""

    def presample(self, rois: LabelledRoIs) -> Tensor | None:
        """Rows (ascending) of ``factor`` x ``batch_size_per_image`` random RoIs per image; None (every
        RoI) when no image has more."""
        size = self.factor * self.batch_size_per_image
        per_image = rows_per_image(rois)
        if all(rows.numel() <= size for rows in per_image):
            return None
        return torch.cat([random_subset(rows, size).sort().values for rows in per_image])
