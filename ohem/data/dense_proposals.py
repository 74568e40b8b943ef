"""Dense proposals with known statistics, for benchmarks on data where selective search is not at hand.

Selective search returns ~2000 boxes per VOC image: a few dozen overlap each object at various
IoUs, the rest cover background at every scale. ``dense_proposals`` writes that shape on purpose,
so a benchmark can vary it: ``copies`` boxes around each ground-truth box (each coordinate moved by
a normal of ``jitter`` x the box's width or height), then random boxes up to ``num_boxes`` (sides
log-uniform from 8 px to the image, aspect ratio log-uniform in [1/3, 3]), in a random order (a
file's order is its rank; a cap on the first boxes keeps the mix). A pure function of ``seed`` and
the image index. Test-split proposals made this way see the ground truth, as no real proposal
method does: compare samplers on them, not absolute AP with other methods.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.ops import clip_boxes_to_image, remove_small_boxes

from ohem.data.proposals import DEFAULT_MAX_BOXES, DEFAULT_MAX_BOXES_PER_IMAGE, write_proposals


def dense_boxes(
    gt: np.ndarray, height: int, width: int, num_boxes: int, copies: int, jitter: float, rng: np.random.Generator
) -> np.ndarray:
    """(num_boxes, 4) float32 ``x1, y1, x2, y2`` boxes of one image (see the module docstring); when
    ``copies`` x the gt boxes exceed ``num_boxes``, the near-object ones are cut, not the count."""
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
    sides = np.repeat(np.stack([gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]] * 2, axis=1), copies, axis=0)
    near = np.repeat(gt, copies, axis=0) + rng.normal(size=sides.shape) * jitter * sides
    near = _valid(near, height, width)[:num_boxes]
    count = num_boxes - len(near)
    area = np.exp(rng.uniform(np.log(64), np.log(max(height * width, 65)), count))
    aspect = np.exp(rng.uniform(np.log(1 / 3), np.log(3), count))  # width / height
    w, h = np.minimum(np.sqrt(area * aspect), width), np.minimum(np.sqrt(area / aspect), height)
    x1, y1 = rng.uniform(0, 1, count) * (width - w), rng.uniform(0, 1, count) * (height - h)
    random = np.stack([x1, y1, x1 + w, y1 + h], axis=1)
    boxes = np.concatenate([near, random])
    return boxes[rng.permutation(len(boxes))].astype(np.float32)


def _valid(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boxes clipped to the image, those under 2 px a side dropped (torchvision's box ops)."""
    clipped = clip_boxes_to_image(torch.from_numpy(boxes), (height, width))
    return clipped[remove_small_boxes(clipped, 2.0)].numpy()


def dense_proposals(
    dataset: Any,
    out: str | os.PathLike,
    num_boxes: int = 2000,
    copies: int = 20,
    jitter: float = 0.15,
    seed: int = 0,
    max_boxes_per_image: int | None = DEFAULT_MAX_BOXES_PER_IMAGE,
    max_boxes: int | None = DEFAULT_MAX_BOXES,
) -> Path:
    """Write ``dense_boxes`` of every image of ``dataset`` to the proposal file ``out`` (atomically).
    Counts beyond the limits the proposal readers enforce (``data.max_proposal_boxes_per_image``,
    ``data.max_proposal_boxes``; None: no limit) are refused before anything is allocated."""
    if num_boxes < 1 or copies < 0 or not (math.isfinite(jitter) and jitter >= 0):
        raise ValueError(
            "dense proposals: need num_boxes >= 1, copies >= 0, jitter a finite number >= 0; "
            f"got {num_boxes}, {copies}, {jitter}"
        )
    per_image = max_boxes_per_image if max_boxes_per_image is not None else math.inf
    for what, count in (("num_boxes (--max-boxes)", num_boxes), ("copies (--copies, boxes per object)", copies)):
        if count > per_image:
            raise ValueError(f"dense proposals: {what} = {count:,}, {_more_than('_per_image', max_boxes_per_image)}")
    if max_boxes is not None and len(dataset) * num_boxes > max_boxes:
        raise ValueError(
            f"dense proposals: {len(dataset):,} images x {num_boxes:,} boxes = {len(dataset) * num_boxes:,} boxes "
            f"in all, {_more_than('', max_boxes)}"
        )
    boxes = {}
    for i in range(len(dataset)):
        height, width = dataset.image_size(i)
        rng = np.random.default_rng([seed, i])
        gt = dataset.annotations(i)["boxes"].numpy()
        if len(gt) * copies > per_image:  # the near-object boxes are drawn all at once, then cut
            raise ValueError(
                f"dense proposals: image {dataset.image_name(i)!r}: {len(gt)} objects x {copies:,} copies = "
                f"{len(gt) * copies:,} boxes, {_more_than('_per_image', max_boxes_per_image)}"
            )
        boxes[dataset.image_name(i)] = dense_boxes(gt, height, width, num_boxes, copies, jitter, rng)
    meta = {"method": "dense", "num_boxes": num_boxes, "copies": copies, "jitter": jitter, "seed": seed}
    return write_proposals(out, boxes, meta=meta)


def _more_than(limit_suffix: str, limit: int | None) -> str:
    """The end of a message that a count passes ``data.max_proposal_boxes{limit_suffix}``."""
    return (
        f"more than data.max_proposal_boxes{limit_suffix} = {limit:,} allows (the limit proposal files are "
        "read with; raise it with --set, or null for no limit)"
    )
