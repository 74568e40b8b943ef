"""What modules report during a training step, for whoever runs the step to read (detectron2's
``EventStorage`` idea): the RoI heads and the RPN put their mining records and timings here instead
of keeping them in attributes that a trainer would have to know about.

    with EventStorage(iteration=it) as storage:
        losses = model(images, targets)
    storage.records["roi_mining"], storage.scalars["time_mining"], storage.statistics[-1]["ohem_all_roi_loss"]

Outside a ``with EventStorage()`` block (a user's own training loop) ``current_storage()`` is None
and modules report nothing.
"""

from __future__ import annotations

import time
from typing import Any

import torch

_STACK: list[EventStorage] = []


class EventStorage:
    """One training step's reports. ``iteration`` (0-based) is the step being taken; ``sync_timing``
    asks modules to wait for queued CUDA kernels around what they time (a sync stalls the queue, so
    a trainer sets it on some steps only)."""

    def __init__(self, iteration: int = 0, sync_timing: bool = False) -> None:
        self.iteration = iteration
        self.sync_timing = sync_timing
        self.scalars: dict[str, float] = {}  # summed over the step's forward passes
        self.records: dict[str, list[Any]] = {}  # one entry per forward pass, in order
        # detached statistics (e.g. ohem_*), one dict per module and forward pass, in order: the loss dict
        # holds losses only, so these reach the trainer's log here
        self.statistics: list[dict[str, torch.Tensor]] = []

    def put_scalar(self, name: str, value: float) -> None:
        self.scalars[name] = self.scalars.get(name, 0.0) + value

    def put_record(self, name: str, record: Any) -> None:
        self.records.setdefault(name, []).append(record)

    def put_statistics(self, values: dict[str, torch.Tensor]) -> None:
        """Detached per-forward statistics (left on their device: the trainer copies them to the host
        with the losses, in one copy)."""
        self.statistics.append(values)

    def statistics_since(self, mark: int) -> dict[str, torch.Tensor]:
        """The statistics put after the first ``mark`` entries (one forward pass's), merged."""
        return {key: value for values in self.statistics[mark:] for key, value in values.items()}

    def latest(self, name: str) -> Any:
        """The last record put under ``name``; KeyError when there is none."""
        if not self.records.get(name):
            raise KeyError(f"no {name!r} record in this step")
        return self.records[name][-1]

    def __enter__(self) -> EventStorage:
        _STACK.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _STACK.remove(self)


def current_storage() -> EventStorage | None:
    """The innermost open ``EventStorage``, or None."""
    return _STACK[-1] if _STACK else None


def clock(device: torch.device) -> float:
    """``time.perf_counter()``, after the queued CUDA kernels of ``device`` have run when the current
    storage asks for ``sync_timing`` (without it, CUDA time is only the time to queue them)."""
    storage = current_storage()
    if storage is not None and storage.sync_timing and device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
