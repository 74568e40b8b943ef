"""RoI pooling for OHEM's two passes on the CPU, where torchvision's RoIAlign kernel runs on one thread
and pools every RoI on its own (so any split of the RoIs gives the same values):

* ``readonly_pool``: the read-only pass pools its RoIs in a thread per intra-op thread;
* ``pooled_with_gradient``: the trainable pass takes the read-only pass's pooling of its RoIs instead
  of pooling them again, with torchvision's own RoIAlign gradient in backward (what a second pooling
  would give, bit for bit). Only for a one-level ``MultiScaleRoIAlign`` on the CPU outside autocast;
  elsewhere the trainable pass pools as usual (on a GPU pooling is a small part of the step).
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import MultiScaleRoIAlign

MIN_ROIS_PER_THREAD = 32  # below this a thread hand-off costs about what it saves


def readonly_pool(
    heads: RoIHeads,
    features: dict,
    boxes: Tensor,
    image_ids: Tensor,
    num_images: int,
    image_shapes: list[tuple[int, int]],
    threads: int | None = None,
) -> Tensor:
    """``heads.box_roi_pool`` of ``boxes`` (rows in image order) under ``no_grad``; on the CPU the rows
    are split among ``threads`` (default: torch's intra-op threads), each pooled in a thread of its own."""

    def pool(part: tuple[Tensor, Tensor]) -> Tensor:
        with torch.no_grad():  # grad mode is per thread
            return heads.box_roi_pool(features, split_by_image(*part, num_images), image_shapes)

    def pool_in_worker(part: tuple[Tensor, Tensor]) -> Tensor:
        # One OpenMP thread here: a second OpenMP team would outnumber the cores, and libgomp would then
        # stop spin-waiting in every parallel region of the process (slower steps on an idle machine).
        torch.set_num_threads(1)
        try:
            return pool(part)
        finally:
            torch.set_num_threads(intra_op)

    intra_op = torch.get_num_threads()
    parallel = boxes.device.type == "cpu" and type(heads.box_roi_pool) is MultiScaleRoIAlign
    parts = min(threads or intra_op, boxes.shape[0] // MIN_ROIS_PER_THREAD) if parallel else 1
    if parts <= 1:
        return pool((boxes, image_ids))
    splits = list(zip(boxes.tensor_split(parts), image_ids.tensor_split(parts)))
    others = [_pool_threads(parts - 1, os.getpid()).submit(pool_in_worker, split) for split in splits[1:]]
    return torch.cat([pool(splits[0]), *(f.result() for f in others)])


def split_by_image(rows: Tensor, image_ids: Tensor, num_images: int) -> list[Tensor]:
    """``rows`` (in image order, ``image_ids`` ascending) as one tensor per image: one host copy of
    the counts, where a boolean mask per image would sync with the device once per image."""
    return list(rows.split(fixed_bincount(image_ids, num_images).tolist()))


def fixed_bincount(values: Tensor, bins: int) -> Tensor:
    """``bincount`` of ``values`` in ``[0, bins)`` with a fixed length: CUDA's ``bincount`` reads the
    maximum back to size its output, one more host sync."""
    return torch.zeros(bins, dtype=torch.long, device=values.device).index_add_(0, values, torch.ones_like(values))


@functools.cache
def _pool_threads(workers: int, pid: int) -> ThreadPoolExecutor:
    """Threads for ``readonly_pool``, one pool per process (``pid``: a forked child has none of its parent's)."""
    return ThreadPoolExecutor(workers, thread_name_prefix="ohem-roi-pool")


def can_reuse_pooling(heads: RoIHeads, features: dict) -> bool:
    pool = heads.box_roi_pool
    return (
        type(pool) is MultiScaleRoIAlign
        and len(pool.featmap_names) == 1
        and features[pool.featmap_names[0]].device.type == "cpu"
        and not torch.is_autocast_enabled("cpu")
    )


def rows_of(pooled: list[Tensor], rows: Tensor) -> Tensor:
    """``rows`` of the chunks in ``pooled`` as one tensor (without copying every chunk first)."""
    return pooled[0][rows] if len(pooled) == 1 else torch.cat(pooled)[rows]


def pooled_with_gradient(
    pool: MultiScaleRoIAlign, features: dict, boxes: list[Tensor], image_shapes: list[tuple[int, int]], rows: Tensor
) -> Tensor:
    """``pool(features, boxes, image_shapes)`` whose value is known already (``rows``, the read-only
    pass's pooling of the same boxes in the same order), with torchvision's RoIAlign gradient."""
    if pool.scales is None:  # the read-only pass had no RoI to pool: nothing is known
        return pool(features, boxes, image_shapes)
    rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], 1) for i, b in enumerate(boxes)])
    if rois.shape[0] != rows.shape[0]:
        raise RuntimeError(f"pooled {rows.shape[0]} RoIs in the read-only pass, asked for {rois.shape[0]}")
    args = (pool.scales[0], *pool.output_size, pool.sampling_ratio)
    return _RoIAlignOfRows.apply(features[pool.featmap_names[0]], rows, rois, args)


class _RoIAlignOfRows(torch.autograd.Function):
    """``roi_align(feature, rois, ...)`` whose value is known (``rows``): backward is torchvision's."""

    @staticmethod
    def forward(ctx: Any, feature: Tensor, rows: Tensor, rois: Tensor, args: tuple) -> Tensor:
        ctx.save_for_backward(rois)
        ctx.args, ctx.feature_shape = args, feature.shape
        return rows  # autograd returns a view of it, with this function's backward

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (rois,) = ctx.saved_tensors
        scale, height, width, sampling_ratio = ctx.args
        grad_feature = torch.ops.torchvision._roi_align_backward(
            grad, rois, scale, height, width, *ctx.feature_shape, sampling_ratio, False
        )
        return grad_feature, None, None, None
