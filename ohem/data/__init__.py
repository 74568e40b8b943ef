"""Datasets and batching. Every dataset yields ``(image (3, H, W) float in [0, 1], target dict)``
with ``boxes`` (n, 4) ``x1, y1, x2, y2`` pixels, ``labels`` (n,) int64 in 1..C, ``image_id``."""

from __future__ import annotations

import torch

from ohem.config import DataConfig
from ohem.data.synthetic import SyntheticShapes


def build_dataset(cfg: DataConfig, split: str) -> torch.utils.data.Dataset:
    if cfg.dataset == "synthetic":
        num = cfg.num_train if split == "train" else cfg.num_test
        return SyntheticShapes(split, num_images=num, image_size=cfg.image_size, seed=cfg.seed)
    raise ValueError(f"data.dataset: unknown dataset {cfg.dataset!r}; available: synthetic")


def batch_indices(iteration: int, dataset_size: int, batch_size: int, seed: int) -> list[int]:
    """Image indices of one iteration's batch: epochs of seeded permutations, last partial batch
    dropped. A pure function of the iteration, so a resumed run sees the same order."""
    per_epoch = dataset_size // batch_size
    if per_epoch == 0:
        raise ValueError(f"dataset of {dataset_size} images is smaller than one batch of {batch_size}")
    epoch, position = divmod(iteration, per_epoch)
    order = torch.randperm(dataset_size, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return order[position * batch_size : (position + 1) * batch_size].tolist()


__all__ = ["SyntheticShapes", "batch_indices", "build_dataset"]
