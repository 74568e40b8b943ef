"""OHEM's sampler (Shrivastava et al. 2016; docs/PAPER.md): per image the ``batch_size_per_image`` RoIs
of highest read-only loss, after NMS at ``nms_iou`` among them; no foreground quota, every RoI a
candidate (``bg_iou_low`` 0).

``start``: the first iteration that mines. Before it the sample is the heuristic's random one (with
``fg_fraction``) while the read-only pass still runs, so its losses are logged. Not in the paper,
which starts from ImageNet weights: a from-scratch box head can collapse under mining from the
first step (docs/BENCHMARKS.md, "When OHEM pays").
"""

from __future__ import annotations

import dataclasses
import math
from typing import Annotated, Literal, Self

from pydantic import Field

from ohem.mining.readonly import PerRoILoss
from ohem.mining.rois import LabelledRoIs
from ohem.mining.sampler import Fraction, ReadOnlyPassSampler, Sample, random_fg_bg, register_sampler
from ohem.mining.select import select_hard_examples


@register_sampler("ohem")
class OHEMSampler(ReadOnlyPassSampler):
    """The hardest RoIs by the read-only pass's loss, after NMS among them."""

    nms_iou: Fraction | None = 0.7
    """NMS among RoIs by loss at this IoU; None: no NMS."""
    mining_loss: Literal["cls+box", "cls"] = "cls+box"
    """The loss RoIs are ranked by: cls+box (the paper) | cls (mmdetection)."""
    nms_per_label: bool = False
    """NMS only among RoIs of one label (the authors' code)."""
    start: Annotated[int, Field(ge=0, le=10**9)] = 0
    """The first iteration that mines; before it, a random sample (fg_fraction foreground, background
    from bg_iou_low). A from-scratch box head can collapse under mining from the first step."""

    @property
    def mining_start(self) -> int:
        return self.start

    def stretched(self, factor: float) -> Self:
        # round half up, as ohem bench scales every iteration count
        return dataclasses.replace(self, start=math.floor(self.start * factor + 0.5))

    def sample(self, rois: LabelledRoIs, per_roi: PerRoILoss | None, iteration: int | None) -> Sample:
        if per_roi is None:
            raise ValueError(f"{type(self).__name__}.sample needs the read-only pass's losses")
        if self.start > 0 and iteration is None:
            raise RuntimeError("sampler.start needs the iteration: run the step inside ohem.events.EventStorage")
        if iteration is not None and iteration < self.start:
            return Sample(random_fg_bg(rois, self.batch_size_per_image, self.fg_fraction))
        per_label = rois.labels if self.nms_per_label else None
        ranked = per_roi.ranked_by(self.mining_loss)
        rows = select_hard_examples(
            ranked, rois.boxes, rois.image_ids, self.batch_size_per_image, self.nms_iou, per_label, rois.num_images
        )
        return Sample(rows)
