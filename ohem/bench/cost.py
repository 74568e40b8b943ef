"""The cost phase's worker: one arm, alone in its process, timed on the wall clock.

    python -m ohem.bench.cost '{"config": ..., "overrides": [...], "run_dir": ..., "result": ...,
                                "warmup": 10, "iterations": 60}'

It trains through ``ohem.engine.train`` and stops the run right after ``warmup + iterations``
steps (no final evaluation, so the phase costs the same on any test set). The seconds per
iteration are measured here, between the starts of consecutive training steps, so they include
everything an iteration costs (data, forward, backward, update, logging); the per-step fields of
``log.jsonl`` are only read for the mining share, under whichever names they have.

After the timed steps, ``COUNTED_STEPS`` more run under ``ohem.bench.opcount.count_ops`` on one
thread: their mean FLOPs (forward and backward) and RoI pooling bytes, what the step costs whatever
the machine (the yardstick the measured ratios are read against).

Beside the wall clock it records the CPU seconds of this process and its children (loader
workers) and, from ``/proc/stat``, the share of the machine's CPU time that *other* processes
used while the steps were timed: a busy machine shows there, where the load average read before
timing missed load that came later.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from ohem.config import load_config

COUNTED_STEPS = 2  # steps counted in operations after the timed ones


class _Timed(BaseException):
    """Raised from inside the training loop once the timed steps are done (not an error)."""


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Train ``spec``'s config for ``warmup + iterations`` steps; wall s/iter, peak memory, mining share."""
    import torch

    from ohem.bench.opcount import OpCount, count_ops
    from ohem.engine import Hook, train

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")  # others' use of the CPU
    cfg = load_config(spec["config"], spec["overrides"])
    warmup, iterations = spec["warmup"], spec["iterations"]
    rss_before = _rss_mib()
    starts: list[tuple[float, float, float]] = []  # per step start: wall, own CPU, machine's busy CPU
    counted: list[OpCount] = []
    counting = contextlib.ExitStack()
    steps = warmup + iterations + (COUNTED_STEPS if spec.get("count_ops", True) else 0)

    class StepStarts(Hook):  # the first hook of each step: its start time, the counted steps, the stop
        def before_step(self, run: Any, storage: Any) -> None:
            starts.append((time.perf_counter(), tree_cpu_seconds(), machine_busy_seconds()))
            if len(starts) > steps:
                raise _Timed
            if len(starts) > warmup + iterations:  # past the timed steps: count this one
                torch.set_num_threads(1)  # the read-only pass's pooling threads would not be seen
                counted.append(counting.enter_context(count_ops()))

        def after_step(self, run: Any, storage: Any, record: dict[str, Any]) -> None:
            counting.close()

    try:
        train(cfg, spec["run_dir"], force=True, hooks=[StepStarts()])
    except _Timed:
        pass
    else:
        raise RuntimeError(f"the run ended after {len(starts)} steps, before the timed ones were done")
    finally:
        counting.close()
    (wall_0, cpu_0, busy_0), (wall_1, cpu_1, busy_1) = starts[warmup], starts[warmup + iterations]
    s_per_iter = (wall_1 - wall_0) / iterations
    # what the rest of the machine used of all its cores while the steps were timed
    others = max(0.0, (busy_1 - busy_0) - (cpu_1 - cpu_0)) / ((wall_1 - wall_0) * (os.cpu_count() or 1))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    result = {
        "s_per_iter": s_per_iter,
        "cpu_s_per_iter": (cpu_1 - cpu_0) / iterations,
        "others_cpu_share": others,
        "rss_before_mib": rss_before,
        "peak_rss_mib": peak,
        "load_before": load_before,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    result.update(_log_times(Path(spec["run_dir"]) / "log.jsonl", warmup, warmup + iterations, s_per_iter))
    if counted:
        result["gflop_per_iter"] = statistics.mean(c.flops for c in counted) / 1e9
        result["roi_pool_mb_per_iter"] = statistics.mean(c.roi_pool_bytes for c in counted) / 1e6
    return result


def _log_times(log: Path, warmup: int, last: int, s_per_iter: float) -> dict[str, float]:
    """Mean mining and data seconds of the timed steps, if the log records them (field names vary)."""
    steps = []
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "eval" not in record and warmup < record.get("iteration", 0) <= last:  # the timed steps
            steps.append(record)
    out: dict[str, float] = {}
    for name, keys in (("mining", ("time_mining", "ohem_mining_time")), ("data", ("time_data",))):
        values = [next(r[k] for k in keys if k in r) for r in steps if any(k in r for k in keys)]
        if values:
            out[f"{name}_s_per_iter"] = statistics.mean(values)
            out[f"{name}_share"] = statistics.mean(values) / s_per_iter
    return out


def tree_cpu_seconds() -> float:
    """CPU seconds of this process (all threads) and of its live children (``/proc``; own only elsewhere)."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        tasks = Path("/proc/self/task").iterdir()
        children = {pid for task in tasks for pid in (task / "children").read_text().split()}
    except OSError:
        return total
    for pid in children:
        try:  # utime and stime: fields 14 and 15, after the parenthesised command name
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):  # ended meanwhile
            continue
    return total


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores, ``/proc/stat``); NaN where unknown."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle and iowait
    return (sum(values[:8]) - idle) / (os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)


def _rss_mib() -> float:
    """Resident memory now (Linux's /proc; NaN elsewhere)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    result = measure(spec)
    Path(spec["result"]).write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
