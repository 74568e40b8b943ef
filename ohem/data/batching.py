"""Which images make up each training batch, as torchvision's detection references choose them.

Both orders are pure functions of the iteration (and seed), which keeps ``--resume`` exact and
every torchrun process in step:

* ``batch_indices``: epochs of seeded permutations, the last partial batch dropped.
* ``grouped_batch_indices``: batches whose images share an orientation (wide vs tall, from
  ``aspect_groups``), so padding to the batch's largest image wastes little.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from ohem.structures import DetectionDataset


def batch_indices(iteration: int, dataset_size: int, batch_size: int, seed: int) -> list[int]:
    """Image indices of one iteration's batch: epochs of seeded permutations, last partial batch
    dropped. A pure function of the iteration, so a resumed run sees the same order."""
    per_epoch = dataset_size // batch_size
    if per_epoch == 0:
        raise ValueError(f"dataset of {dataset_size} images is smaller than one batch of {batch_size}")
    epoch, position = divmod(iteration, per_epoch)
    order = torch.randperm(dataset_size, generator=_epoch_generator(seed, epoch))
    return order[position * batch_size : (position + 1) * batch_size].tolist()


def aspect_groups(dataset: DetectionDataset) -> list[int]:
    """0 for images at least as wide as tall, 1 for tall ones (from the dataset's ``image_size``,
    no decoding)."""
    sizes = [dataset.image_size(i) for i in range(len(dataset))]
    return [int(h > w) for h, w in sizes]


def grouped_batch_indices(iteration: int, groups: tuple[int, ...], batch_size: int, seed: int) -> list[int]:
    """The batch of ``iteration``: each epoch, a seeded permutation is split by group into batches
    (a group's leftover images wait for the next epoch's permutation), and the batches are shuffled."""
    per_epoch = len(_epoch_batches(groups, batch_size, seed, 0))
    if per_epoch == 0:
        raise ValueError(f"no orientation group holds one batch of {batch_size} images")
    epoch, position = divmod(iteration, per_epoch)
    batches = _epoch_batches(groups, batch_size, seed, epoch)
    return batches[position % len(batches)]


@lru_cache(maxsize=4)
def _epoch_batches(groups: tuple[int, ...], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    generator = _epoch_generator(seed, epoch)
    order = torch.randperm(len(groups), generator=generator).tolist()
    batches = []
    for group in sorted(set(groups)):
        members = [i for i in order if groups[i] == group]
        batches += [members[k : k + batch_size] for k in range(0, len(members) - batch_size + 1, batch_size)]
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[k] for k in shuffle]


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The random stream of one epoch's order: the same for every process and every resume."""
    return torch.Generator().manual_seed((seed * 100_003 + epoch) % 2**64)  # a seed up to 2^64 - 1: wrapped
