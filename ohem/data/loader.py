"""Feeding the model: ``torch.utils.data.DataLoader`` over the datasets, with worker processes.

Training batches stay a pure function of ``(seed, position)`` (``ohem.data.batching``): the batch
sampler asks ``batch_of(position)`` for each position of the run and hands this process its share,
so workers, torchrun ranks and ``--resume`` all see the batches an in-process loop would. A random
flip is drawn from ``(seed, position, image index)`` alone (``flipped``), so a worker can apply it
and a resumed run flips the same images, whatever else consumed random numbers.

A worker that fails to read an image returns the error instead of raising it, and the main
process raises it as it was (torch would wrap it in a multi-line "Caught ... in DataLoader worker"
message): a corrupt file keeps its one-line message naming the file.
"""

from __future__ import annotations

import functools
import hashlib
import multiprocessing.util
import os
import pickle
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ohem.data.transforms import hflip
from ohem.structures import Images
from ohem.util import die_with_parent

Batch = tuple[list[int], list[torch.Tensor], list[dict[str, torch.Tensor]]]  # indices, images, targets


def loader_workers(configured: int | None) -> int:
    """``data.workers``, or when unset one per 4 cores, at most 4. On 2 cores a worker takes more from
    the step's threads than it saves (docs/BENCHMARKS.md): 0, in-process loading."""
    if configured is not None:
        return configured
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(4, cores // 4)


def flipped(seed: int, position: int, index: int) -> bool:
    """Whether image ``index`` of the batch at ``position`` is mirrored: a fair coin that depends
    on these three numbers only (a hash, so no random stream is shared or consumed)."""
    digest = hashlib.blake2b(f"{seed}:{position}:{index}".encode(), digest_size=8).digest()
    return digest[0] & 1 == 1


class TrainBatches(torch.utils.data.Sampler):
    """Batch sampler of a run's positions ``start .. stop - 1``: this process's share
    (``rank::world``) of ``batch_of(position)``, as ``(position, image index)`` keys."""

    def __init__(self, batch_of: Callable[[int], list[int]], start: int, stop: int, rank: int = 0, world: int = 1):
        self.batch_of, self.start, self.stop, self.rank, self.world = batch_of, start, stop, rank, world

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for position in range(self.start, self.stop):
            yield [(position, i) for i in self.batch_of(position)[self.rank :: self.world]]

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


class _Images(torch.utils.data.Dataset):
    """Maps a key (an image index, or ``(position, index)`` for training) to ``(index, image, target)``,
    flipped when training with ``flip``; a failure is returned, not raised (see the module docstring)."""

    def __init__(self, dataset: Images, flip_seed: int | None = None) -> None:
        self.dataset, self.flip_seed = dataset, flip_seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        position, index = key if isinstance(key, tuple) else (None, key)
        try:
            image, target = self.dataset[index]
            if self.flip_seed is not None and position is not None and flipped(self.flip_seed, position, index):
                image, target = hflip(image, target)
        except Exception as e:  # re-raised in the main process, unwrapped
            return _Failure(e)
        return index, image, target


class _Failure:
    """An error raised in a worker, in a form that survives the trip to the main process."""

    def __init__(self, error: Exception) -> None:
        try:
            pickle.loads(pickle.dumps(error))
            self.error = error
        except Exception:  # an exception class that cannot be rebuilt from its pickle
            self.error = RuntimeError(str(error))


def _collate(items: list[Any]) -> Batch:
    for item in items:
        if isinstance(item, _Failure):
            return item  # type: ignore[return-value]
    return [i for i, _, _ in items], [image for _, image, _ in items], [target for _, _, target in items]


def _loader(images: _Images, batch_sampler: Any, workers: int, pin: bool) -> torch.utils.data.DataLoader:
    if workers:  # the workers share this process's temporary folder (pymp-*), which it removes as it exits:
        multiprocessing.util.get_temp_dir()  # a worker's own would be left behind when it is killed
    # A generator of its own: torch would otherwise draw the workers' seed from the global stream,
    # and evaluating or resuming would shift the random numbers the training draws (the loader
    # itself uses none).
    return torch.utils.data.DataLoader(
        images,
        batch_sampler=batch_sampler,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=pin,
        prefetch_factor=4 if workers else None,
        generator=torch.Generator(),
        worker_init_fn=functools.partial(_worker_init, os.getpid()) if workers else None,
    )


def _worker_init(parent: int, worker_id: int) -> None:
    """A loader worker dies with the process that started it, even by ``kill -9`` (Linux)."""
    die_with_parent(parent)


def train_loader(
    dataset: Images, sampler: TrainBatches, workers: int, device: torch.device, flip_seed: int | None
) -> Iterator[Batch]:
    """The training batches of ``sampler``, on ``device``; ``flip_seed``: mirror images (``flipped``)."""
    return _on_device(_loader(_Images(dataset, flip_seed), sampler, workers, device.type == "cuda"), device)


def eval_batches(
    dataset: Images, indices: list[int], batch_size: int, workers: int, device: torch.device
) -> Iterator[Batch]:
    """``dataset``'s images ``indices`` in order, ``batch_size`` at a time, on ``device``."""
    chunks = [indices[k : k + batch_size] for k in range(0, len(indices), batch_size)]
    workers = min(workers, len(chunks))  # no idle processes for a handful of images
    return _on_device(_loader(_Images(dataset), chunks, workers, device.type == "cuda"), device)


def _on_device(loader: torch.utils.data.DataLoader, device: torch.device) -> Iterator[Batch]:
    for batch in loader:
        if isinstance(batch, _Failure):
            raise batch.error
        indices, images, targets = batch
        blocking = device.type != "cuda"
        yield (
            indices,
            [image.to(device, non_blocking=not blocking) for image in images],
            [{k: v.to(device, non_blocking=not blocking) for k, v in t.items()} for t in targets],
        )
