"""``ohem bench --plan`` and ``--collect``: a bench as plain jobs that run anywhere.

``--plan`` writes ``OUT/plan.sh``, one shell command per training run this call still needs (the
``--pretrain`` source task first: the runs start from its weights), as ``ohem bench`` would start it,
and prints it; nothing trains. With ``--budget seconds`` the cost phase runs first, here (the
iteration counts come from this machine's time per step). ``--collect`` reads whatever runs have
finished, however they were run, into the CSVs, ``summary.md`` and the plots; a run not finished is
listed, never guessed; a finished run trained with other settings than the plan's is refused. Both
hold the folder's lock and its rules (``bench.json``) like any ``ohem bench`` call.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from ohem.bench.jobs import Job, claim
from ohem.bench.pretrain import check_pretrained
from ohem.bench.run import (
    accuracy_jobs,
    measured_cost,
    open_folder,
    prepare,
    pretrain_job,
    pretrained_phase,
    record_run,
    run_threads,
    save_settings,
    write_summary,
)
from ohem.bench.spec import Bench, run_key, run_name, run_overrides, schedule_name
from ohem.bench.state import first_difference, read_csv
from ohem.config import load_config
from ohem.util import atomic_open, output_folder

# Keys that say where and how fast a run executes, not what it computes: a run collected from a
# cluster may have used other values.
EXECUTION_KEYS = ("train.num_threads", "train.device", "data.workers")


def shell_line(job: Job) -> str:
    """One pasteable line: the job's environment, then its command (``--force`` or ``--resume`` as now)."""
    env = [f"{key}={value}" for key, value in job.environment().items()]
    return shlex.join(["env", *env, *job.command()]) + f" > {shlex.quote(str(job.log))} 2>&1"


def plan_bench(b: Bench) -> int:
    """Write and print ``OUT/plan.sh``; 0."""
    base = prepare(b)
    with claim(b.out):
        settings = open_folder(b, base)
        cost: dict[str, dict[str, Any]] = {}
        if b.budget == "seconds":  # iteration counts need this machine's s/iter, which needs the source weights
            pretrained_phase(b, settings)
            cost, _ = measured_cost(b, base, settings)
        jobs, skipped = accuracy_jobs(b, cost, run_threads(b))
        output_folder(b.out / "logs", "log folder")  # where the commands write their output
        lines = ["#!/bin/sh", f"# ohem bench --plan: {len(jobs)} training run(s) of {b.out}; then --collect"]
        source = pretrain_job(b, run_threads(b))
        if source is not None:
            lines += ["# first, the source task: every run below starts from its weights", shell_line(source)]
            lines.append("# then, in any order, anywhere that sees this folder at the same path:")
        lines += [shell_line(job) for job in jobs]
        lines += [f"# not planned: {reason}" for reason in skipped]
        text = "\n".join(lines) + "\n"
        with atomic_open(b.out / "plan.sh") as f:
            f.write(text)
    print(text, end="")
    print(f"wrote {b.out / 'plan.sh'}", file=sys.stderr)
    return 0


def collect_bench(b: Bench) -> int:
    """Rows from every finished run of this call, then ``summary.md`` and the plots; 0 when every run
    had finished, 1 when some had not (listed)."""
    base = prepare(b)
    with claim(b.out):
        settings = open_folder(b, base)
        if check_pretrained(b, settings):  # the pretraining the plan ran: its hash, for the next call
            save_settings(b, settings)
        cost = {r["arm"]: r for r in read_csv(b.out / "cost.csv")}
        rows = read_csv(b.out / "accuracy.csv")
        done = {run_key(r) for r in rows}
        unfinished = []
        for seed, k, arm in ((seed, k, arm) for seed in b.seeds for k in b.schedules for arm in b.arms):
            key = (arm, str(seed), schedule_name(k))
            if key in done:
                continue
            run_dir = b.out / "runs" / run_name("accuracy", arm, seed, k)
            s_per_iter = float(cost[arm]["s_per_iter"]) if arm in cost else None
            if not (run_dir / "metrics.json").is_file() or (b.budget == "seconds" and s_per_iter is None):
                unfinished.append(str(run_dir))
                continue
            iterations, overrides = run_overrides(b, arm, seed, run_threads(b), s_per_iter, k)
            check_trained_as_planned(run_dir, b.config_file, overrides, pretrained=bool(b.pretrain))
            record_run(b, run_dir, key, iterations, s_per_iter, rows)
        for path in write_summary(b, cost):
            print(f"wrote {path}")
    if unfinished:
        print(f"ohem bench: {len(unfinished)} run(s) not finished: {', '.join(unfinished)}", file=sys.stderr)
    return 1 if unfinished else 0


def check_trained_as_planned(run_dir: Path, config: str, overrides: list[str], pretrained: bool = False) -> None:
    """The run's saved config is the plan's (but for ``EXECUTION_KEYS`` and, with ``pretrained``, the
    path of ``OUT/pretrain``'s weights, which moves with the folder); else a one-line error."""
    planned = load_config(config, overrides).to_dict()
    trained = load_config(str(run_dir / "config.yaml")).to_dict()
    for key in (*EXECUTION_KEYS, "model.init_weights") if pretrained else EXECUTION_KEYS:
        section, name = key.split(".")
        planned[section].pop(name, None)
        trained[section].pop(name, None)
    differs = first_difference(trained, planned)
    if differs:
        raise ValueError(f"{run_dir}: trained with other settings than this bench plans ({differs} differs)")
