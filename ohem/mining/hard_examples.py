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
from dataclasses import dataclass
from typing import Any

from ohem.config import SamplerConfig
from ohem.mining.readonly import ReadOnlySettings, RoILosses
from ohem.mining.rois import LabelledRoIs
from ohem.mining.sampler import Sample, bg_iou_low_of, random_fg_bg
from ohem.mining.select import select_hard_examples


@dataclass
class OHEMSampler:
    """The settings are ``SamplerConfig``'s (defaults there); ``bg_iou_low`` defaults to OHEM's own."""

    batch_size_per_image: int
    nms_iou: float | None  # None: no NMS
    nms_per_label: bool  # NMS only among RoIs of one label (the authors' code)
    mining_loss: str  # cls+box (the paper) | cls (mmdetection)
    start: int
    fg_fraction: float  # the random sample before ``start``
    readonly: ReadOnlySettings | None
    bg_iou_low: float = 0.0  # every RoI is a candidate (docs/PAPER.md)

    @classmethod
    def settings(cls, cfg: SamplerConfig) -> dict[str, Any]:
        """OHEM's fields from ``cfg``, for the samplers that extend it (``ohem-presample``, ``ohem-prior``)."""
        ohem = OHEMSampler.from_config(cfg)
        return {f.name: getattr(ohem, f.name) for f in dataclasses.fields(ohem)}

    @classmethod
    def from_config(cls, cfg: SamplerConfig) -> OHEMSampler:
        bg_iou_low = bg_iou_low_of(cfg, cls.bg_iou_low)
        return cls(
            cfg.batch_size_per_image,
            cfg.nms_iou,
            cfg.nms_per_label,
            cfg.mining_loss,
            cfg.ohem_start,
            cfg.fg_fraction,
            ReadOnlySettings.from_config(cfg),
            bg_iou_low,
        )

    def sample(self, rois: LabelledRoIs, losses: RoILosses | None, iteration: int | None) -> Sample:
        if losses is None:
            raise ValueError("OHEMSampler.sample needs the read-only pass's losses")
        if self.start > 0 and iteration is None:
            raise RuntimeError("sampler.ohem_start needs the iteration: run the step inside ohem.events.EventStorage")
        if iteration is not None and iteration < self.start:
            return Sample(random_fg_bg(rois, self.batch_size_per_image, self.fg_fraction))
        per_label = rois.labels if self.nms_per_label else None
        ranked = losses.ranked_by(self.mining_loss)
        rows = select_hard_examples(
            ranked, rois.boxes, rois.image_ids, self.batch_size_per_image, self.nms_iou, per_label, rois.num_images
        )
        return Sample(rows)
