"""The processes ``ohem bench`` starts: a ``Job`` is one subprocess (its command, log file, threads,
and what to record when it exits cleanly); ``run_jobs`` runs a list of them some at a time on this
machine and stops what it started when interrupted. ``claim`` locks a bench folder for one call."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ohem.util import die_with_parent, open_append, output_folder

try:
    import fcntl
except ImportError:  # not on POSIX
    fcntl = None  # type: ignore[assignment]

POLL_SECONDS = 0.5
CHECKPOINT = "checkpoint_last.pt"


@contextlib.contextmanager
def claim(out: Path) -> Iterator[None]:
    """Hold ``OUT/.bench.lock`` for the call: two benchmarks writing one folder's CSVs would lose rows."""
    if fcntl is None:  # not on POSIX: no lock
        yield
        return
    fd = os.open(out / ".bench.lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the kernel drops it when this process ends
        except BlockingIOError:
            raise ValueError(f"{out}: in use by another ohem bench; wait for it to end or use another --out") from None
        yield
    finally:
        os.close(fd)


def resolved_command(argv: list[str], run_dir: Path | None) -> list[str]:
    """``argv``; for a training run (``run_dir``), ``--resume`` if its folder has a checkpoint (stopped, or
    preempted and requeued by a scheduler), else ``--force`` (its files, if any, moved to previous-N/)."""
    if run_dir is None:
        return argv
    flag = "--resume" if (run_dir / CHECKPOINT).is_file() else "--force"
    return [flag if arg in ("--resume", "--force") else arg for arg in argv]


@dataclass
class Job:
    """One subprocess: its command, log file, threads, and what to record when it exits cleanly."""

    name: str
    argv: list[str]
    log: Path
    threads: int
    finish: Callable[[float], str]  # wall seconds -> the line to print
    run_dir: Path | None = None  # an ``ohem train`` run: --resume or --force is decided when it starts

    def command(self) -> list[str]:
        return resolved_command(self.argv, self.run_dir)

    def environment(self) -> dict[str, str]:
        """What the command's environment sets: this same ohem first on the path, its threads, no bars."""
        package_root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        return {"TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(self.threads), "PYTHONPATH": path}

    def start(self) -> subprocess.Popen:
        output_folder(self.log.parent, "log folder")
        argv, bench = self.command(), os.getpid()
        with open_append(self.log) as log:
            log.write(f"$ {shlex.join(argv)}\n")
            log.flush()
            return subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.environment()},
                process_group=0,  # its own group: the child and its loader workers are stopped together
                # and stopped by the kernel if the bench is killed (Linux): SIGTERM, which ohem's commands
                # turn into an exit that cleans up (its loader workers die with it by SIGKILL)
                preexec_fn=lambda: die_with_parent(bench, signal.SIGTERM),
            )


def run_jobs(jobs: list[Job], parallel: int) -> list[str]:
    """Run ``jobs``, ``parallel`` at a time, recording each as it ends; returns the failures' messages."""
    pending: list[Job] = list(jobs)
    running: list[tuple[Job, subprocess.Popen, float]] = []
    failed: list[str] = []
    try:
        while pending or running:
            while pending and len(running) < parallel:
                job = pending.pop(0)
                print(f"[{job.name}] started on {job.threads} thread(s); log: {job.log}", flush=True)
                running.append((job, job.start(), time.monotonic()))
            time.sleep(POLL_SECONDS)
            for entry in [e for e in running if e[1].poll() is not None]:
                running.remove(entry)
                job, process, started = entry
                stop([process], grace=0)  # a loader worker that outlived its run
                message = finish(job, process.returncode, time.monotonic() - started)
                if message.startswith("FAILED"):
                    failed.append(f"{job.name}: {message}")
                print(f"[{job.name}] {message}", flush=True)
    finally:  # interrupted: stop the children this call started, with whatever they started
        stop([process for _, process, _ in running])
    return failed


def stop(processes: list[subprocess.Popen], grace: float = 30.0) -> None:
    """SIGTERM each process's group, SIGKILL what is left after ``grace`` seconds, and reap them."""
    for signal_number in (signal.SIGTERM, signal.SIGKILL):
        for process in processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal_number)
        deadline = time.monotonic() + grace
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.0, deadline - time.monotonic()))


def finish(job: Job, returncode: int, wall: float) -> str:
    """The line to print for a job that ended: its ``finish`` (its rows recorded), or why it failed."""
    if returncode != 0:
        return f"FAILED (exit {returncode}): {_last_line(job.log)}"
    try:
        return job.finish(wall)
    except (OSError, ValueError, KeyError) as e:  # exited 0 but left no readable result
        return f"FAILED: its result cannot be read: {e}"


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no output)"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of ``path``, skipping any that do not parse (a line torn by a crash)."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
