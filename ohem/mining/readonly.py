"""The read-only RoI pass of a training step: the box head over every labelled RoI under ``no_grad``,
one loss per RoI, for the samplers that choose by loss (OHEM). Its settings:

* ``max_rois_per_chunk``: RoIs per forward, which bounds the pass's memory;
* ``dropout``: dropout stays on, as in the authors' code (BatchNorm never updates its running stats);
* ``precision``: tf32 (float32 with TF32 matmuls/convolutions on CUDA; on the CPU fp32) | fp32 | bf16 |
  fp16 (autocast). The trainable pass keeps the step's own precision.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import RoIHeads

from ohem.mining.pooling import readonly_pool
from ohem.mining.rois import LabelledRoIs, foreground_probability, unreduced_loss_terms


@dataclass(frozen=True)
class ReadOnlySettings:
    """The pass's settings (a sampler's ``readonly``: ``ohem.mining.sampler.ReadOnlyPassSampler``)."""

    max_rois_per_chunk: int
    dropout: bool
    precision: str


@dataclass
class PerRoILoss:
    """The read-only pass's result: per-RoI loss terms and foreground probabilities (all (R,)) and,
    when asked for, the pooled features of every RoI (chunks, in row order) for the trainable pass."""

    cls: Tensor
    box: Tensor
    fg_scores: Tensor
    pooled: list[Tensor] | None

    def ranked_by(self, kind: str) -> Tensor:
        """The loss RoIs are ranked by: ``cls`` (mmdetection) or ``cls+box`` (the paper)."""
        return self.cls if kind == "cls" else self.cls + self.box


@torch.no_grad()
def readonly_pass(
    heads: RoIHeads,
    features: dict,
    rois: LabelledRoIs,
    image_shapes: list[tuple[int, int]],
    settings: ReadOnlySettings,
    beta: float,
    keep_pooled: bool = False,
) -> PerRoILoss:
    """Every RoI's loss terms, ``settings.max_rois_per_chunk`` RoIs at a time, no graph kept."""
    cls, box, fg, pooled, step = [], [], [], [], settings.max_rois_per_chunk
    with readonly_mode(heads, settings.dropout), readonly_numerics(rois.boxes.device, settings.precision):
        for start in range(0, rois.boxes.shape[0], step):
            boxes, ids = rois.boxes[start : start + step], rois.image_ids[start : start + step]
            features_of_rois = readonly_pool(heads, features, boxes, ids, rois.num_images, image_shapes)
            if keep_pooled:  # only then: the chunks are what bounds this pass's memory
                pooled.append(features_of_rois)
            logits, deltas = heads.box_predictor(heads.box_head(features_of_rois))
            fg.append(foreground_probability(logits))
            labels, targets = rois.labels[start : start + step], rois.box_targets[start : start + step]
            terms = unreduced_loss_terms(logits, deltas, labels, targets, beta)
            cls.append(terms[0])
            box.append(terms[1])
    empty = rois.boxes.new_zeros(0)
    cls_all, box_all = (torch.cat(cls), torch.cat(box)) if cls else (empty, empty)
    return PerRoILoss(cls_all, box_all, torch.cat(fg) if fg else empty, pooled if keep_pooled else None)


def readonly_numerics(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16/fp16: autocast of that dtype; tf32/fp32: TF32 matmuls and convolutions on/off on CUDA (on
    the CPU both are plain float32)."""
    if precision in ("bf16", "fp16"):
        # An enclosing autocast already runs this pass in low precision; a nested one of another dtype
        # would leave its weight casts in the shared autocast cache, so none is opened then.
        if torch.is_autocast_enabled(device.type):
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return cuda_tf32(precision == "tf32") if device.type == "cuda" else contextlib.nullcontext()


@contextlib.contextmanager
def cuda_tf32(enabled: bool) -> Iterator[None]:
    """CUDA matmuls and cuDNN convolutions in TF32 (or strict float32), restored on exit."""
    matmul = torch.backends.cuda.matmul
    cudnn: Any = torch.backends.cudnn  # cudnn.conv (torch >= 2.9) is not in torch's type hints
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9: its new API only (mixing it with the old raises)
        saved = matmul.fp32_precision, cudnn.conv.fp32_precision
        matmul.fp32_precision = cudnn.conv.fp32_precision = "tf32" if enabled else "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision, cudnn.conv.fp32_precision = saved
    else:
        saved = matmul.allow_tf32, cudnn.allow_tf32
        matmul.allow_tf32 = cudnn.allow_tf32 = enabled
        try:
            yield
        finally:
            matmul.allow_tf32, cudnn.allow_tf32 = saved


@contextlib.contextmanager
def readonly_mode(heads: RoIHeads, dropout: bool) -> Iterator[None]:
    """BatchNorm on batch statistics without updating its running ones; dropout off unless ``dropout``."""
    changed: list[tuple[nn.Module, str]] = []
    for m in (m for part in (heads.box_roi_pool, heads.box_head, heads.box_predictor) for m in part.modules()):
        if isinstance(m, nn.modules.dropout._DropoutNd) and not dropout and m.training:
            changed.append((m, "training"))
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            changed.append((m, "track_running_stats"))
    for m, attr in changed:
        setattr(m, attr, False)
    try:
        yield
    finally:
        for m, attr in changed:
            setattr(m, attr, True)
