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

and, optionally (``SamplingRoIHeads`` looks for them with ``getattr``; a sampler without them trains
exactly as before they existed):

* ``roi_loss(trained: TrainedRows) -> dict[str, Tensor]``: the loss of the trainable pass, computed by
  the sampler from that pass's logits and deltas (with gradient), instead of ``sampled_roi_loss``
  with ``Sample.weights``. It returns ``loss_classifier`` and ``loss_box_reg`` and may add terms of its
  own (every ``loss_*`` key is summed into the training loss). For weights that depend on the trainable
  pass's own outputs, or a loss with a gradient through them (PISA's ISR and CARL), which a weight fixed
  in ``sample`` cannot express. ``roi_losses`` is the head's call.
* ``initialise(heads) -> None``: called once by ``enable_sampler`` when the sampler is installed, to
  change the RoI heads' initial weights (``ohem-prior``'s background prior). A checkpoint loaded later
  (``--resume``, ``model.init_weights``) overwrites what it set.

``SamplingRoIHeads`` calls ``sample`` once per training forward; ``ohem.mining.SAMPLERS`` names them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from torchvision.models.detection.roi_heads import RoIHeads

from ohem.config import SamplerConfig
from ohem.mining.pooling import split_by_image
from ohem.mining.readonly import ReadOnlySettings, RoILosses
from ohem.mining.rois import LabelledRoIs, sampled_roi_loss
from ohem.models.box_targets import raw_box_deltas


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


def bg_iou_low_of(cfg: SamplerConfig, own: float) -> float:
    """``sampler.bg_iou_low`` when the config sets it, else the sampler's ``own`` default."""
    return own if cfg.bg_iou_low is None else cfg.bg_iou_low


def presampled(sampler: Sampler, rois: LabelledRoIs) -> LabelledRoIs:
    """``rois`` restricted to the sampler's ``presample`` rows, when it has that step and uses it."""
    presample = getattr(sampler, "presample", None)  # optional: most samplers see every RoI
    rows = presample(rois) if presample is not None else None
    if rows is None:
        return rois
    check_rows(sampler, rows, rois, "presample")
    return rois.take(rows)


def sampler_name(sampler: object) -> str:
    return type(sampler).__name__


def check_rows(sampler: object, rows: object, rois: LabelledRoIs, what: str = "sample") -> None:
    """A one-line ``ValueError`` naming the sampler unless ``rows`` are a 1-D integer tensor of rows of ``rois``
    in image order. Values are checked on the CPU only (on a GPU the check would wait for the queue)."""
    name = sampler_name(sampler)
    if not isinstance(rows, Tensor) or rows.dim() != 1 or rows.dtype.is_floating_point or rows.dtype == torch.bool:
        got = f"{rows.dtype} of shape {tuple(rows.shape)}" if isinstance(rows, Tensor) else type(rows).__name__
        raise ValueError(f"sampler {name}: the {what}'s rows must be a 1-D tensor of integer row indices, got {got}")
    count = rois.labels.numel()
    if rows.device.type != "cpu" or rows.numel() == 0:
        return
    low, high = int(rows.min()), int(rows.max())
    if low < 0 or high >= count:  # -1 would wrap to the last row
        raise ValueError(
            f"sampler {name}: the {what}'s rows must be in [0, {count}) (the RoIs' rows), got {low}..{high}"
        )
    if bool((rois.image_ids[rows].diff() < 0).any()):
        raise ValueError(f"sampler {name}: the {what}'s rows must be grouped image by image, in image order")


def check_sample(sampler: object, sample: object, rois: LabelledRoIs) -> None:
    """``sample`` as the head needs it (``check_rows``; weights one per row, finite, >= 0), else one line."""
    name = sampler_name(sampler)
    if not isinstance(sample, Sample):
        raise ValueError(f"sampler {name}: sample() must return an ohem.mining.Sample, got {type(sample).__name__}")
    check_rows(sampler, sample.rows, rois)
    weights = sample.weights
    if weights is None:
        return
    if not isinstance(weights, Tensor) or weights.shape != sample.rows.shape:
        got = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise ValueError(
            f"sampler {name}: the sample's weights must be one per row, shape {tuple(sample.rows.shape)}, got {got}"
        )
    bad = ~(torch.isfinite(weights) & (weights >= 0)) if weights.device.type == "cpu" else None
    if bad is not None and bool(bad.any()):  # NaN, infinite or negative: the loss would be too
        first = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"sampler {name}: the sample's weights must be finite numbers >= 0, got {float(weights[first])} "
            f"(row {first})"
        )


@dataclass
class TrainedRows:
    """The trainable pass over a sample's rows, for a sampler's ``roi_loss``: row ``j`` of the logits
    and deltas is the RoI ``sample.rows[j]`` of ``rois``."""

    rois: LabelledRoIs
    sample: Sample
    class_logits: Tensor  # (S, C), with gradient
    box_regression: Tensor  # (S, 4 C), with gradient (normalised deltas when the head has a norm)
    heads: RoIHeads  # the SamplingRoIHeads: its box_loss_beta, box coder and box-target norm

    @property
    def labels(self) -> Tensor:
        return self.rois.labels[self.sample.rows]

    @property
    def box_targets(self) -> Tensor:
        """(S, 4), as ``box_regression`` is trained towards."""
        return self.rois.box_targets[self.sample.rows]

    @property
    def beta(self) -> float:
        """The head's smooth-L1 beta."""
        return self.heads.box_loss_beta

    def predicted_boxes(self, classes: Tensor) -> Tensor:
        """(S, 4) the boxes the pass predicts for class ``classes[j]`` of row ``j`` (detached)."""
        deltas = raw_box_deltas(self.heads, self.box_regression.detach().float())
        rows = torch.arange(deltas.shape[0], device=deltas.device)
        own = deltas.reshape(deltas.shape[0], -1, 4)[rows, classes]
        return self.heads.box_coder.decode_single(own, self.rois.boxes[self.sample.rows])


def roi_losses(sampler: Sampler, trained: TrainedRows) -> dict[str, Tensor]:
    """The trainable pass's loss: the sampler's own ``roi_loss`` when it has one, else the ``Sample``'s
    weighted loss (``sampled_roi_loss``)."""
    own_loss = getattr(sampler, "roi_loss", None)
    if own_loss is not None:
        losses = own_loss(trained)
        missing = {"loss_classifier", "loss_box_reg"} - set(losses if isinstance(losses, dict) else ())
        if missing:  # a head's loss silently dropped from the training loss otherwise
            raise ValueError(
                f"sampler {sampler_name(sampler)}: roi_loss must return a dict with loss_classifier and "
                f"loss_box_reg (and any loss_* terms of its own), missing {', '.join(sorted(missing))}"
            )
        return losses
    logits, deltas, weights = trained.class_logits, trained.box_regression, trained.sample.weights
    cls, box = sampled_roi_loss(logits, deltas, trained.labels, trained.box_targets, trained.beta, weights)
    return {"loss_classifier": cls, "loss_box_reg": box}


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
