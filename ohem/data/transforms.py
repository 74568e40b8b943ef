"""Training-time augmentation and batching, as torchvision's detection references do them.

* ``hflip``: mirror an image and every ``(n, 4)`` box tensor of its target (boxes, proposals, ...).
* Multi-scale training is the model's job: ``model.min_size`` as a list makes torchvision's
  ``GeneralizedRCNNTransform`` draw the shorter side per image.
* ``grouped_batch_indices``: batches whose images share an orientation (wide vs tall), so padding
  to the batch's largest image wastes little. Like ``batch_indices`` it is a pure function of the
  iteration, which keeps ``--resume`` exact and every torchrun process in step.
"""

from __future__ import annotations

from functools import lru_cache

import torch

BOX_KEYS = ("boxes", "proposals", "distractor_boxes")


def hflip(image: torch.Tensor, target: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    width = image.shape[-1]
    flipped = dict(target)
    for key in BOX_KEYS:
        if key in target:
            boxes = target[key]
            flipped[key] = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
    return image.flip(-1), flipped


def aspect_groups(dataset) -> list[int]:  # noqa: ANN001
    """0 for images at least as wide as tall, 1 for tall ones (from ``image_size``, no decoding)."""
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
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(groups), generator=generator).tolist()
    batches = []
    for group in sorted(set(groups)):
        members = [i for i in order if groups[i] == group]
        batches += [members[k : k + batch_size] for k in range(0, len(members) - batch_size + 1, batch_size)]
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[k] for k in shuffle]
