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

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.ops import clip_boxes_to_image, remove_small_boxes

from ohem.data.proposals import write_proposals


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
    dataset: Any, out: str | os.PathLike, num_boxes: int = 2000, copies: int = 20, jitter: float = 0.15, seed: int = 0
) -> Path:
    """Write ``dense_boxes`` of every image of ``dataset`` to the proposal file ``out`` (atomically)."""
    if num_boxes < 1 or copies < 0 or not jitter >= 0:
        raise ValueError(
            f"dense proposals: need num_boxes >= 1, copies >= 0, jitter >= 0; got {num_boxes}, {copies}, {jitter}"
        )
    boxes = {}
    for i in range(len(dataset)):
        height, width = dataset.image_size(i)
        rng = np.random.default_rng([seed, i])
        gt = dataset.annotations(i)["boxes"].numpy()
        boxes[dataset.image_name(i)] = dense_boxes(gt, height, width, num_boxes, copies, jitter, rng)
    meta = {"method": "dense", "num_boxes": num_boxes, "copies": copies, "jitter": jitter, "seed": seed}
    return write_proposals(out, boxes, meta=meta)
