"""Checkpoints and weight files: written atomically, read tensors-only (a file carrying pickled code
is refused), every failure a one-line error naming the file."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ohem.config import Config
from ohem.output_folder import OutputFolder
from ohem.util import atomic_open, one_line, regular_file

CHECKPOINT_FORMAT = "ohem-checkpoint-1"


def load_tensors(path: str | Path, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; ``what`` names the file in errors, which
    quote torch's explanation whole, on one line."""
    regular_file(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path}: no such file") from None
    except Exception as e:  # torch raises several types for truncated, corrupt or unsafe files
        reason = one_line(str(e)) or type(e).__name__
        raise ValueError(
            f"{what} {path}: cannot be loaded safely (truncated, corrupt or not tensors-only): {reason}"
        ) from None


def load_state_dict_file(path: str | Path, what: str = "weights") -> dict[str, torch.Tensor]:
    """A state dict of tensors: an ohem checkpoint's model, a plain state dict, or ``{"state_dict": ...}``."""
    state = load_tensors(path, what)
    if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT:
        state = state.get("model")
    elif isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{what} {path}: neither an ohem checkpoint nor a state dict of tensors")
    return state


def save_checkpoint(
    path: Path,
    model: nn.Module,
    cfg: Config,
    classes: list[str],
    iteration: int,
    training_state: dict[str, Any] | None = None,
    rng_per_rank: list[torch.Tensor] | None = None,
    best: dict[str, Any] | None = None,
    sampler_state: dict[str, Any] | None = None,
    folder: OutputFolder | None = None,
) -> None:
    """Atomically write a checkpoint. ``training_state``: the optimizer's, scheduler's and scaler's
    ``state_dict()``; ``rng_per_rank``: every process's RNG state under torchrun; ``best``: the run's
    best evaluation so far (``{"iteration", "metric", "mAP"}``), kept across ``--resume``. The sampler's
    own state ``sampler_state`` (``SamplerBase.state_dict``: empty for the built-in ones) is saved too, so
    ``--resume`` is exact. ``folder``: the output folder held open that ``path`` is in (written there, or
    refused if it was swapped: ``ohem.output_folder``)."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "config": cfg.to_dict(),
        "classes": classes,
        "iteration": iteration,
        **(training_state or {"optimizer": None, "scheduler": None, "scaler": None}),
        "rng": {"torch": rng_per_rank or torch.get_rng_state(), "python": _python_rng_to_lists(random.getstate())},
        "best": best,
        "sampler": sampler_state or {},
    }
    with folder.open(path, binary=True) if folder else atomic_open(path, binary=True) as f:
        torch.save(state, f)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents, loaded tensors-only."""
    state = load_tensors(path, "checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {path}: not an ohem checkpoint (no format {CHECKPOINT_FORMAT!r})")
    return state


def restore_rng(state: dict[str, Any], rank: int) -> None:
    """The torch and Python RNG states a checkpoint saved (one torch state per torchrun process)."""
    saved = state["rng"]["torch"]
    torch.set_rng_state(saved[rank % len(saved)] if isinstance(saved, list) else saved)
    version, internal, gauss = state["rng"]["python"]
    random.setstate((version, tuple(internal), gauss))


def _python_rng_to_lists(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]
