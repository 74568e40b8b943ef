"""Hard-RoI selection: greedy by loss, with NMS among the kept RoIs, top-k per image.

The result equals ``torchvision.ops.batched_nms(boxes, losses, group)`` followed by the
``num_per_image`` highest-loss survivors of each image, where ``group`` is the image (and the
label, when ``labels`` is given).

Tie rule: RoIs with equal loss are visited in ascending RoI index. This is the order of
torchvision's NMS kernels (a stable descending sort), so both the set that survives NMS and the
top-k cut are defined for ties.

Cost: a full NMS compares every RoI with every RoI it keeps, over all RoIs. Selection needs only
the first ``num_per_image`` survivors, and the survivors among a loss-ordered prefix of an image's
RoIs are the full NMS's survivors in that prefix. Two implementations use this:

* the greedy walk (on the CPU): candidates are visited in blocks in loss order and the walk stops
  once enough are kept; on 2 CPU cores it is 12x (4000 RoIs) to 85x (20000) faster than a full
  ``batched_nms``;
* ``select_by_batched_nms`` (on CUDA): tensor operations on the inputs' device, ``batched_nms`` on
  the first RoIs of each image in loss order, the prefix grown until every image has enough
  survivors; no copy of losses or boxes to the host (torchvision's CUDA NMS copies its
  prefix-sized overlap mask and syncs once per round).

``select_hard_examples`` picks by device: the walk for CPU tensors, the device path otherwise.
Which is faster on a GPU (the device path, or the walk with a host round trip) is for
``benchmarks/bench_mining.py --device cuda`` to decide; it times both.
"""

from __future__ import annotations

import torch
from torchvision.ops import batched_nms, box_iou

from ohem.mining.pooling import fixed_bincount


def select_hard_examples(
    losses: torch.Tensor,
    boxes: torch.Tensor,
    image_ids: torch.Tensor,
    num_per_image: int,
    nms_iou: float | None,
    labels: torch.Tensor | None = None,
    num_images: int | None = None,
) -> torch.Tensor:
    """Indices of the hard RoIs: per image (ascending id), descending loss, at most ``num_per_image``.

    Args:
        losses: (R,) per-RoI loss, the score to rank by.
        boxes: (R, 4) RoI boxes ``x1, y1, x2, y2``.
        image_ids: (R,) integer image of each RoI.
        num_per_image: the most RoIs kept per image.
        nms_iou: a RoI is skipped when its IoU with an already kept RoI of the same image (and
            label) is above this; ``None`` turns NMS off.
        labels: (R,) optional; when given, NMS only compares RoIs of the same label.
        num_images: optional, more than the largest image id: the device path then counts RoIs per
            image without reading the largest id back (two host syncs fewer on a GPU).

    CPU tensors take the greedy walk; tensors on another device stay there (``select_by_batched_nms``).
    """
    if losses.device.type != "cpu":
        return select_by_batched_nms(losses, boxes, image_ids, num_per_image, nms_iou, labels, num_images)
    _check_inputs(losses, boxes, image_ids, num_per_image, labels)
    losses, boxes = losses.detach(), boxes.detach()
    selected = []
    for image_id in torch.unique(image_ids):  # sorted ascending
        members = torch.nonzero(image_ids == image_id).squeeze(1)
        # Stable descending sort: equal losses keep ascending RoI index (the tie rule).
        order = members[torch.sort(losses[members], descending=True, stable=True).indices]
        if nms_iou is None:
            selected.append(order[:num_per_image])
        else:
            selected.append(_greedy_nms_topk(order, boxes, labels, num_per_image, nms_iou))
    if not selected:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat(selected)


def select_by_batched_nms(
    losses: torch.Tensor,
    boxes: torch.Tensor,
    image_ids: torch.Tensor,
    num_per_image: int,
    nms_iou: float | None,
    labels: torch.Tensor | None = None,
    num_images: int | None = None,
) -> torch.Tensor:
    """The same selection as the greedy walk, as tensor operations on the inputs' device (no copy to the
    host): ``batched_nms`` on each image's first RoIs in (loss desc, index asc) order, a prefix grown
    4x until every image has ``num_per_image`` survivors or has no RoIs left, then a per-image cut."""
    _check_inputs(losses, boxes, image_ids, num_per_image, labels)
    losses, boxes = losses.detach(), boxes.detach()
    order = torch.sort(losses, descending=True, stable=True).indices  # ties: lower index first
    order = order[torch.sort(image_ids[order], stable=True).indices]  # images in ascending id
    rank = _rank_in_image(image_ids[order])
    if nms_iou is None or order.numel() == 0:
        return order[rank < num_per_image]
    groups = image_ids if labels is None else image_ids * (labels.max() + 1) + labels
    per_image = torch.bincount(image_ids) if num_images is None else fixed_bincount(image_ids, num_images)
    limit = max(4 * num_per_image, 256)
    while True:
        prefix = order[rank < limit]
        kept = prefix[batched_nms(boxes[prefix], losses[prefix], groups[prefix], nms_iou).sort().values]
        short = (fixed_bincount(image_ids[kept], per_image.numel()) < num_per_image) & (per_image > limit)
        if not bool(short.any()):  # one sync per round; the NMS above has synced already
            return kept[_rank_in_image(image_ids[kept]) < num_per_image]
        limit *= 4


def _rank_in_image(sorted_image_ids: torch.Tensor) -> torch.Tensor:
    """Position of each entry within its image, for ids sorted ascending."""
    positions = torch.arange(sorted_image_ids.numel(), device=sorted_image_ids.device)
    return positions - torch.searchsorted(sorted_image_ids, sorted_image_ids)


def _check_inputs(
    losses: torch.Tensor, boxes: torch.Tensor, image_ids: torch.Tensor, num_per_image: int, labels: torch.Tensor | None
) -> None:
    if losses.ndim != 1 or boxes.shape != (losses.numel(), 4) or image_ids.shape != losses.shape:
        raise ValueError(
            f"select_hard_examples: expected losses (R,), boxes (R, 4), image_ids (R,); got "
            f"{tuple(losses.shape)}, {tuple(boxes.shape)}, {tuple(image_ids.shape)}"
        )
    if labels is not None and labels.shape != losses.shape:
        raise ValueError(f"select_hard_examples: labels must be (R,), got {tuple(labels.shape)}")
    if num_per_image < 0:
        raise ValueError(f"select_hard_examples: num_per_image must be >= 0, got {num_per_image}")


def _greedy_nms_topk(
    order: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor | None,
    k: int,
    nms_iou: float,
) -> torch.Tensor:
    """The first ``k`` RoIs of ``order`` that survive greedy NMS, visiting blocks of candidates."""
    kept: list[int] = []
    kept_boxes = boxes.new_zeros((0, 4))
    kept_labels = (labels if labels is not None else order).new_zeros(0)  # used only with labels
    block = max(2 * k, 64)
    start = 0
    while len(kept) < k and start < order.numel():
        cand = order[start : start + block]
        cand_boxes = boxes[cand]
        # Compare in float64 as the NMS kernels do (float IoU against a double threshold).
        over_kept = box_iou(cand_boxes, kept_boxes).double() > nms_iou
        over_self = box_iou(cand_boxes, cand_boxes).double() > nms_iou
        if labels is not None:
            cand_labels = labels[cand]
            over_kept &= cand_labels[:, None] == kept_labels[None, :]
            over_self &= cand_labels[:, None] == cand_labels[None, :]
        alive = (~over_kept.any(dim=1)).numpy()
        over_self = over_self.numpy()
        newly_kept = []
        for i in range(cand.numel()):
            if not alive[i]:
                continue
            newly_kept.append(i)
            if len(kept) + len(newly_kept) == k:
                break
            alive[i + 1 :] &= ~over_self[i, i + 1 :]
        new = cand[torch.as_tensor(newly_kept, dtype=torch.long)]
        kept.extend(new.tolist())
        kept_boxes = torch.cat([kept_boxes, boxes[new]])
        if labels is not None:
            kept_labels = torch.cat([kept_labels, labels[new]])
        start += block
        block *= 2  # few survivors per block means heavy overlap: look further ahead
    return torch.as_tensor(kept, dtype=torch.long)
