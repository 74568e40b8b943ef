"""A run folder belongs to one run.

* ``claim(out)``: holds ``OUT/.lock`` (an ``fcntl.flock`` lock, with the holder's pid in the file)
  while a run trains: a second ``ohem train`` into the same folder fails at once naming that pid. The
  kernel drops the lock when its process dies, so the lock of a killed run is simply taken over.
* ``check_folder``: a folder that holds a run (``checkpoint_last.pt``, ``log.jsonl``, ``mining.jsonl``
  or ``config.yaml``) is trained into only with ``--resume`` (continue it) or ``--force`` (start
  afresh: ``move_aside`` moves the old run's files, its checkpoints included, to ``OUT/previous-N/``;
  nothing is deleted). The files a run writes must not be symbolic links.
* ``check_resume_config``: ``--resume`` continues the checkpoint's run; the config may differ from
  the checkpoint's only in ``RESUME_MAY_CHANGE``, the fields ``ohem.config`` marks with
  ``RESUMABLE`` (length of the run, evaluation, logging, threads, device), else the
  first differing key is named.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ohem.config import Config, config_from_dict, resumable_keys
from ohem.util import refuse_symlink

try:
    import fcntl
except ImportError:  # not on POSIX: no lock (documented in docs/RELIABILITY.md)
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
CHECKPOINT = "checkpoint_last.pt"
# Any of these says "a run is here".
RUN_MARKERS = (CHECKPOINT, "log.jsonl", "mining.jsonl", "config.yaml")
# What a run writes (moved aside together by --force; none may be a symbolic link).
RUN_FILES = (*RUN_MARKERS, "checkpoint_best.pt", "summary.txt", "metrics.json", "detections.png", "tb", "report")
PERIODIC = "checkpoint_iter*.pt"  # train.keep_checkpoints > 1: the kept periodic checkpoints (moved aside too)


# config keys a --resume may change; model.init_weights too: a resumed run takes its weights from the
# checkpoint, never from there, and the path moves with a moved bench folder (OUT/pretrain)
RESUME_MAY_CHANGE = (*resumable_keys(), "model.init_weights")


# Descriptors of the locks this process holds. A forked child (a DataLoader worker) closes its
# copies at once: a flock belongs to the open file, so a child that outlived a killed trainer
# would otherwise keep its folder locked.
_HELD_LOCKS: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in _HELD_LOCKS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


class RunFolderError(ValueError):
    """The run folder cannot be used as asked (in use, holds another run, another config)."""


@contextlib.contextmanager
def claim(out: Path, enabled: bool = True) -> Iterator[None]:
    """Hold ``out``'s lock for the block (``enabled`` False: under torchrun, on ranks other than 0)."""
    if not enabled or fcntl is None:
        yield
        return
    path = out / LOCK_NAME
    fd = _take_lock(out, path)
    _HELD_LOCKS.add(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False)):
                os.unlink(path)  # unlinked while still held: no one can lock the old file afterwards
        _HELD_LOCKS.discard(fd)
        os.close(fd)


def _take_lock(out: Path, path: Path) -> int:
    """A descriptor of ``path`` holding its lock, with this process's pid written in it."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    while True:
        try:
            fd = os.open(path, flags, 0o666)
        except OSError as e:
            raise RunFolderError(f"{path}: cannot open the run's lock file: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_pid(fd)
            os.close(fd)
            raise RunFolderError(
                f"{out}: in use by another ohem train (pid {holder}); wait for it to end or use another --out"
            ) from None
        try:  # the previous holder may have unlinked the file between our open and our lock
            same = os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _holder_pid(fd: int) -> str:
    """The pid the holder wrote into the lock file (it writes it just after locking: wait a little)."""
    for _ in range(50):
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
        if text:
            return text
        time.sleep(0.01)
    return "unknown"


def check_arguments(out: Path, resume: bool, force: bool) -> None:
    """What can be refused before the folder is made or locked: --resume with --force, --resume
    without a checkpoint. Reads only."""
    if resume and force:
        raise RunFolderError("--resume continues the run in --out and --force starts a new one: give one of them")
    if resume and not (out / CHECKPOINT).is_file():
        found = [name for name in RUN_MARKERS if os.path.lexists(out / name)]
        hint = f" ({found[0]} is there: start afresh with --force)" if found else ""
        raise RunFolderError(f"{out / CHECKPOINT}: --resume: no checkpoint to continue from{hint}")


def check_folder(out: Path, resume: bool, force: bool) -> None:
    """Refuse to start a run in ``out`` unless the folder is free, or ``resume`` / ``force`` says
    what to do with the run it holds; refuse symbolic links where the run writes. Reads only."""
    check_arguments(out, resume, force)
    for name in RUN_FILES + (LOCK_NAME,):
        refuse_symlink(out / name)
    for path in out.glob(PERIODIC):
        refuse_symlink(path)
    found = [name for name in RUN_MARKERS if os.path.lexists(out / name)]
    if found and not resume and not force:
        raise RunFolderError(
            f"{out}: holds a run ({found[0]}); continue it with --resume, or start afresh with --force "
            f"(the old run is then moved to {out / 'previous-N'}/, nothing is deleted)"
        )


def move_aside(out: Path) -> Path | None:
    """Move the files of the run in ``out`` into a new ``out/previous-N/``; returns it (None: no run)."""
    present = [name for name in RUN_FILES if os.path.lexists(out / name)]
    present += sorted(p.name for p in out.glob(PERIODIC))
    if not present:
        return None
    n = 1
    while os.path.lexists(out / f"previous-{n}"):
        n += 1
    dest = out / f"previous-{n}"
    dest.mkdir()
    for name in present:
        os.rename(out / name, dest / name)
    return dest


def check_resume_config(cfg: Config, state: dict[str, Any], path: Path) -> None:
    """Refuse to resume the checkpoint ``state`` (read from ``path``) with a config that differs
    from the one it was trained with, except in ``RESUME_MAY_CHANGE``."""
    saved = state.get("config")
    if not isinstance(saved, dict):
        raise RunFolderError(f"checkpoint {path}: config: missing (not written by ohem train); cannot resume it")
    before = _flat(config_from_dict(saved, source=f"checkpoint {path}").to_dict())
    now = _flat(cfg.to_dict())
    for key in now:
        if key not in RESUME_MAY_CHANGE and before.get(key) != now[key]:
            raise RunFolderError(
                f"checkpoint {path}: {key}: the run was trained with {before.get(key)!r}, the config gives "
                f"{now[key]!r}; --resume may change only {', '.join(RESUME_MAY_CHANGE)} (or start afresh with --force)"
            )
    iteration = state.get("iteration")
    if isinstance(iteration, int) and cfg.solver.iterations < iteration:
        raise RunFolderError(
            f"checkpoint {path}: solver.iterations: {cfg.solver.iterations} is below the checkpoint's "
            f"iteration {iteration}; a resumed run can only go on"
        )


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"solver": {"lr": 0.1}}`` as ``{"solver.lr": 0.1}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
