"""The sampler contract, enforced in one place: the head calls these on what a sampler returns
(docs/SAMPLERS.md, "Write your own sampler").

* Rows may come in any order: ``image_order`` sorts a sample's rows (and weights) by image with a
  stable sort on the device, no host sync; a sample already in image order is unchanged.
* Rows are a 1-D integer tensor; weights one per row, finite and >= 0. Their values (range, NaN) are
  checked on the CPU only: on a GPU the check would wait for the queue.
* ``roi_loss`` returns ``loss_classifier`` and ``loss_box_reg`` (and any ``loss_*`` terms of its own).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ohem.mining.rois import LabelledRoIs
from ohem.mining.sampler import Sample, SamplerBase, TrainedRows


def sampler_name(sampler: SamplerBase) -> str:
    return sampler.method or type(sampler).__name__


def presampled(sampler: SamplerBase, rois: LabelledRoIs) -> LabelledRoIs:
    """``rois`` restricted to the sampler's ``presample`` rows (put in image order), when it returns any."""
    rows = sampler.presample(rois)
    if rows is None:
        return rois
    check_rows(sampler, rows, rois, "presample")
    return rois.take(rows[image_order(rois, rows)])


def checked_sample(sampler: SamplerBase, sample: object, rois: LabelledRoIs) -> Sample:
    """``sample`` as the head needs it (``check_rows``; weights one per row, finite, >= 0), its rows
    sorted into image order; else a one-line ``ValueError`` naming the sampler."""
    name = sampler_name(sampler)
    if not isinstance(sample, Sample):
        raise ValueError(f"sampler {name}: sample() must return an ohem.Sample, got {type(sample).__name__}")
    check_rows(sampler, sample.rows, rois)
    weights = sample.weights
    if weights is not None:
        check_weights(name, weights, sample.rows)
    order = image_order(rois, sample.rows)
    return Sample(sample.rows[order], None if weights is None else weights[order])


def image_order(rois: LabelledRoIs, rows: Tensor) -> Tensor:
    """The permutation that groups ``rows`` image by image, keeping their order within each image
    (stable: rows already in image order stay as they are, so such samplers train exactly as before)."""
    return torch.sort(rois.image_ids[rows], stable=True).indices


def check_rows(sampler: SamplerBase, rows: object, rois: LabelledRoIs, what: str = "sample") -> None:
    """A one-line ``ValueError`` naming the sampler unless ``rows`` are a 1-D integer tensor of rows of
    ``rois`` (their values checked on the CPU only)."""
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


def check_weights(name: str, weights: object, rows: Tensor) -> None:
    """One weight per row; on the CPU also finite and >= 0."""
    if not isinstance(weights, Tensor) or weights.shape != rows.shape:
        got = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise ValueError(
            f"sampler {name}: the sample's weights must be one per row, shape {tuple(rows.shape)}, got {got}"
        )
    bad = ~(torch.isfinite(weights) & (weights >= 0)) if weights.device.type == "cpu" else None
    if bad is not None and bool(bad.any()):  # NaN, infinite or negative: the loss would be too
        first = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"sampler {name}: the sample's weights must be finite numbers >= 0, got {float(weights[first])} "
            f"(row {first})"
        )


def trainable_pass_losses(sampler: SamplerBase, trained: TrainedRows) -> dict[str, Tensor]:
    """The trainable pass's loss dict, from the sampler's ``roi_loss`` (default: the weighted mean)."""
    losses = sampler.roi_loss(trained)
    missing = {"loss_classifier", "loss_box_reg"} - set(losses if isinstance(losses, dict) else ())
    if missing:  # a head's loss silently dropped from the training loss otherwise
        raise ValueError(
            f"sampler {sampler_name(sampler)}: roi_loss must return a dict with loss_classifier and "
            f"loss_box_reg (and any loss_* terms of its own), missing {', '.join(sorted(missing))}"
        )
    return losses
