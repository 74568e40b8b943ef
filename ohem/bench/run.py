"""``ohem bench``: every arm x seed of one config, each trained in its own process; resumable.

First, with ``--pretrain CONFIG`` (the transfer regime), CONFIG is trained once into
``OUT/pretrain`` and every run starts from its weights (``model.init_weights``; the config says
which to leave fresh, ``model.init_weights_skip``). Then three phases. **Cost**: each arm alone
(one process, every core) for ``cost_repeats`` rounds of ``cost_warmup + cost_iters`` steps,
interleaved across the arms, timed on the wall clock (``ohem.bench.cost``). **Accuracy**: full
``ohem train`` runs, ``jobs`` at a time with ``cores // jobs`` threads each, for the config's
``solver.iterations`` (``budget="iterations"``) or, with ``budget="seconds"``, for
``seconds / s_per_iter`` iterations with the lr schedule scaled to match. **Errors** (unless
``--no-errors``): each finished run's detections on its test split scoring at least
``--error-score``, sorted into kinds of error by ``ohem.evaluation.errors`` (``ohem.bench.errors``,
one process per run). The folder ``OUT``:

* ``bench.json``: the config (after ``--set``), budget and seconds it measures; a rerun must match;
* ``cost_repeats.csv`` (a row per timing), ``cost.csv`` (a row per arm), ``accuracy.csv`` (a row
  per finished arm and seed), ``curves.csv`` (every evaluation of every finished run),
  ``errors.csv`` (a row per analysed arm and seed: the score threshold and the count of each kind),
  each rewritten whole and atomically as a run ends, so a rerun skips what is there (an
  ``errors.csv`` row at another score is redone); an unfinished run is resumed from its
  checkpoint, else restarted;
* ``summary.md`` and the plots (``ohem.bench.summary``); ``runs/`` the run folders
  (``runs/accuracy-ARM-seedN``, ``runs/cost-ARM``), ``pretrain/``; ``logs/`` each process's output.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from ohem.bench.cost import COUNTED_STEPS
from ohem.bench.jobs import Job, claim, run_jobs
from ohem.bench.pretrain import (
    check_pretrain_settings,
    check_pretrained,
    current_pretrain,
    filled,
    recorded_values,
    stored_values,
)
from ohem.bench.schedules import plot_schedules, schedule_markdown
from ohem.bench.spec import (
    Bench,
    read_run,
    run_key,
    run_name,
    run_overrides,
    schedule_name,
    schedule_of,
    schedule_overrides,
)
from ohem.bench.state import (
    MEDIANS,
    SCHEMAS,
    first_difference,
    read_csv,
    read_settings,
    write_csv,
)
from ohem.bench.summary import plot_curves, summary_markdown
from ohem.config import Config, load_config
from ohem.config_values import value_override
from ohem.evaluation.errors import KINDS
from ohem.util import (
    atomic_open,
    check_output_folder,
    has_module,
    install_hint,
    output_folder,
    remove_stale_temporaries,
)


def run_bench(b: Bench) -> int:
    """Both phases, then ``summary.md`` and the plots; 1 if a run failed (the others still count)."""
    base = prepare(b)
    with claim(b.out):
        return _run_claimed(b, base)


def prepare(b: Bench) -> Config:
    """Everything checked before anything runs or is written but ``OUT`` and its run and log folders:
    the options, the config with every arm's overrides, the folders. Returns the config."""
    b.check()
    if b.pretrain:  # every run starts from the pretrained weights, inside OUT
        load_config(b.pretrain_file)  # a bad pretrain config fails here, before anything runs
        start = value_override("model.init_weights", str(b.pretrained))  # a path: '--out b #1' stays whole
        b.overrides = [*b.overrides, start] if start not in b.overrides else b.overrides
    base = load_config(b.config_file, b.overrides)  # a bad config or --set fails here, before anything runs
    if base.model.init_weights_skip and not base.model.init_weights:
        raise ValueError(f"{b.config}: model.init_weights_skip without weights to start from; give --pretrain CONFIG")
    for arm in b.arms:
        load_config(b.config_file, b.arm_overrides(arm))
    output_folder(b.out)
    for sub in ("runs", "logs"):  # the folders the runs write into: no symlink to elsewhere, writable
        check_output_folder(b.out / sub, f"{sub} folder", inside=b.out)
    return base


def open_folder(b: Bench, base: Config) -> dict[str, Any]:
    """``OUT``'s settings checked against this call's and saved, its CSVs readable; the settings."""
    remove_stale_temporaries(b.out)  # a killed call's half-written CSV or bench.json (the caller holds the lock)
    settings = check_settings(b, base)
    for name in SCHEMAS:  # a hand-edited or broken row is an error now, not a traceback in a later phase
        read_csv(b.out / name)
    save_settings(b, settings)  # before any row: the rows always belong to the settings on file
    return settings


def run_threads(b: Bench) -> int:
    """Each training run's threads: ``--cpus-per-run``, else this machine's cores shared by ``--jobs``."""
    return b.executor.cpus_per_run or max(1, available_cores() // b.jobs)


def measured_cost(b: Bench, base: Config, settings: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The cost phase (here, on every core), and ``--seconds`` from it when ``--budget seconds`` has none."""
    cost, failed = cost_phase(b, available_cores())
    if failed and not any(arm in cost for arm in b.arms):  # e.g. a data error: every run would fail the same way
        raise ValueError(f"cost phase: every arm failed, first {failed[0]}")
    if b.budget == "seconds" and b.seconds is None:  # default: the first arm's time for the config's iterations
        if b.arms[0] not in cost:
            raise ValueError(f"--budget seconds: no --seconds and no cost row for {b.arms[0]} to derive it from")
        b.seconds = base.solver.iterations * float(cost[b.arms[0]]["s_per_iter"])
        print(f"ohem bench: --seconds {b.seconds:.1f} ({base.solver.iterations} iterations of {b.arms[0]})")
    save_settings(b, settings)
    return cost, failed


def _run_claimed(b: Bench, base: Config) -> int:
    settings = open_folder(b, base)
    pretrained_phase(b, settings)
    cores, threads = available_cores(), run_threads(b)
    print(
        f"ohem bench: {len(b.arms)} arm(s) x {len(b.seeds)} seed(s), budget: {b.budget}; cost phase on {cores} "
        f"thread(s), then {b.jobs} run(s) at a time on {threads} thread(s) each; {b.out}",
        flush=True,
    )
    cost, failed = measured_cost(b, base, settings)
    failed += accuracy_phase(b, cost, threads)
    failed += error_phase(b, threads)
    for path in write_summary(b, cost):
        print(f"wrote {path}")
    if failed:
        print(failure_summary(failed, b.out / "logs"), file=sys.stderr)
    return 1 if failed else 0


def failure_summary(failed: list[str], logs: Path) -> str:
    """One line: how many runs failed, and the first one's error (the last line of its log: e.g. its
    ``FILE: no space left on device``), so that a bench on a full disk says so."""
    return f"ohem bench: {len(failed)} run(s) failed; first {failed[0]}; logs in {logs} (rerun to retry them)"


def train_command(config: str, run_dir: Path) -> list[str]:
    """``ohem train`` of ``config`` into ``run_dir``; ``Job.command`` turns ``--force`` into ``--resume``
    when the run has a checkpoint by the time it starts (a run stopped before its first starts over)."""
    return [sys.executable, "-m", "ohem", "train", "--config", config, "--out", str(run_dir), "--force"]


def pretrain_job(b: Bench, threads: int) -> Job | None:
    """``--pretrain``'s training of its config into ``OUT/pretrain``; None when there is none to do
    (no ``--pretrain``, or it finished: its weights are kept)."""
    run_dir = b.pretrained.parent
    if not b.pretrain_file or (run_dir / "metrics.json").is_file():
        return None
    argv = [*train_command(b.pretrain_file, run_dir), "--set", f"train.num_threads={threads}"]
    return Job("pretrain", argv, b.out / "logs" / "pretrain.log", threads, lambda wall: f"done ({wall:.0f} s)", run_dir)


def pretrain_phase(b: Bench) -> None:
    """``--pretrain``: train its config once into ``OUT/pretrain`` (resumed if stopped; kept once finished)."""
    job = pretrain_job(b, available_cores())
    if job is None:
        return
    failed = b.executor.run([job], 1, b.out / "executor")
    if failed:
        raise ValueError(f"--pretrain {b.pretrain}: {failed[0]}")


def pretrained_phase(b: Bench, settings: dict[str, Any]) -> None:
    """``--pretrain``'s weights checked against the hash ``bench.json`` records, trained if not yet, and
    their hash recorded once trained."""
    check_pretrained(b, settings)  # before training anything: a replaced checkpoint is refused at once
    pretrain_phase(b)
    if check_pretrained(b, settings):
        save_settings(b, settings)


def check_settings(b: Bench, base: Config) -> dict[str, Any]:
    """What ``OUT`` measures; an ``OUT`` that measured something else is refused (its rows would mix)."""
    current = {"config": b.config, "budget": b.budget, "values": recorded_values(b, base), **current_pretrain(b)}
    path = b.out / "bench.json"
    if not path.exists():
        return current
    stored = read_settings(path)
    if stored.get("budget") != b.budget:
        raise ValueError(f"{path}: this folder holds a --budget {stored.get('budget')} benchmark; use another --out")
    check_pretrain_settings(b, stored, current)  # what the runs start from belongs to what is measured
    key = first_difference(filled(stored_values(stored), str(path)), current["values"])
    if key:
        raise ValueError(f"{path}: this folder benchmarks another config ({key} differs); use another --out")
    if b.seconds is None:
        b.seconds = stored.get("seconds")
    elif stored.get("seconds") not in (None, b.seconds):
        raise ValueError(f"{path}: this folder benchmarks --seconds {stored['seconds']}; use another --out")
    return current


def save_settings(b: Bench, settings: dict[str, Any]) -> None:
    with atomic_open(b.out / "bench.json") as f:
        f.write(json.dumps({**settings, "seconds": b.seconds}, indent=1) + "\n")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


CONTENDED = 0.15  # other processes used more than this share of the machine's CPU while a repeat was timed


def cost_phase(b: Bench, cores: int) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """A ``cost.csv`` row per arm (measured once: a rerun keeps them) from ``cost_repeats`` timings taken
    in rounds across the arms (A B A B ...: a machine that gets busy for a while slows one repeat of each
    arm, not every repeat of one); each timing is a ``cost_repeats.csv`` row as it ends, so a rerun
    resumes. Returns the rows by arm and the failures."""
    path, repeats_path = b.out / "cost.csv", b.out / "cost_repeats.csv"
    rows, repeats = read_csv(path), read_csv(repeats_path)
    todo = [arm for arm in b.arms if arm not in {r["arm"] for r in rows}] if b.cost_iters else []
    failed: list[str] = []
    for repeat in range(b.cost_repeats):
        timed = {(r["arm"], str(r["repeat"])) for r in repeats}
        broken = {f.partition(":")[0] for f in failed}  # an arm that failed once would fail again
        arms = [arm for arm in todo if (arm, str(repeat)) not in timed and f"cost {arm}" not in broken]
        failed += run_jobs([cost_job(b, arm, repeat, cores, repeats, repeats_path) for arm in arms], parallel=1)
    finished = [arm for arm in todo if sum(r["arm"] == arm for r in repeats) >= b.cost_repeats]
    if finished:
        rows += [cost_row(arm, [r for r in repeats if r["arm"] == arm], b.cost_iters, cores) for arm in finished]
        write_csv(path, rows)
    return {r["arm"]: r for r in rows}, failed


def cost_row(arm: str, repeats: list[dict[str, Any]], iterations: int, cores: int) -> dict[str, Any]:
    """One arm's cost from its repeats: medians over the repeats timed on a quiet machine (over all of
    them, marked ``contended``, when none was), the spread of s/iter as (max - min) / median."""
    quiet = [r for r in repeats if not float(r["others_cpu_share"]) > CONTENDED]  # NaN (unknown): quiet
    used = quiet or repeats
    per_iter = [float(r["s_per_iter"]) for r in used]
    middle = statistics.median(per_iter)
    row: dict[str, Any] = {"arm": arm, "s_per_iter": round(middle, 6)}
    row["s_per_iter_spread"] = round((max(per_iter) - min(per_iter)) / middle, 4)
    for key in MEDIANS:
        values = [float(r[key]) for r in used if r.get(key) not in (None, "")]
        if values:
            row[key] = round(statistics.median(values), 6)
    row["peak_rss_mib"] = max(float(r["peak_rss_mib"]) for r in repeats)
    row["rss_before_mib"] = min(float(r["rss_before_mib"]) for r in repeats)
    row["others_cpu_share"] = round(max(float(r["others_cpu_share"]) for r in repeats), 4)
    row.update(repeats=len(repeats), contended_repeats=len(repeats) - len(quiet), contended=int(not quiet))
    return {**row, "timed_iterations": iterations, "threads": cores}


def cost_job(b: Bench, arm: str, repeat: int, cores: int, repeats: list[dict[str, Any]], path: Path) -> Job:
    cfg = load_config(b.config_file, b.arm_overrides(arm))
    # the timer stops at the start of the step after the last; then the steps counted in operations
    steps = b.cost_warmup + b.cost_iters + 1 + COUNTED_STEPS
    overrides = [*b.arm_overrides(arm), f"train.seed={b.seeds[0]}", f"train.num_threads={cores}"]
    if cfg.solver.iterations < steps:
        overrides += schedule_overrides(cfg, steps)
    overrides += ["train.eval_every=0", "train.checkpoint_every=0"]  # nothing but training is timed
    if b.cost_init:  # a trained model's RPN passes its steady-state number of RoIs
        overrides.append(value_override("model.init_weights", b.cost_init))
    result = b.out / "logs" / f"cost-{arm}-{repeat}.json"
    spec = {
        "config": b.config_file,
        "overrides": overrides,
        "run_dir": str(b.out / "runs" / f"cost-{arm}"),
        "result": str(result),
        "warmup": b.cost_warmup,
        "iterations": b.cost_iters,
    }

    def finish(wall: float) -> str:
        measured = json.loads(result.read_text(encoding="utf-8"))
        row = {"arm": arm, "repeat": repeat, **{k: round(v, 6) for k, v in measured.items()}}
        if not all(math.isfinite(v) and v > 0 for v in (row["s_per_iter"], row["cpu_s_per_iter"])):
            raise ValueError(f"{result}: s_per_iter {row['s_per_iter']}, cpu_s_per_iter {row['cpu_s_per_iter']}")
        repeats.append(row)
        write_csv(path, repeats)
        message = (
            f"repeat {repeat + 1}/{b.cost_repeats}: {row['s_per_iter']:.4f} s/iter ({row['cpu_s_per_iter']:.4f} "
            f"CPU s), peak RSS {row['peak_rss_mib']:.0f} MiB ({wall:.0f} s)"
        )
        if "gflop_per_iter" in row:
            message += f"; {row['gflop_per_iter']:.2f} GFLOP, RoI pooling {row['roi_pool_mb_per_iter']:.0f} MB per step"
        if row["others_cpu_share"] > CONTENDED:  # measured, during the timed steps
            message += (
                f"; other processes used {row['others_cpu_share']:.0%} of the machine's CPU meanwhile: "
                "this repeat is left out of the arm's time if another repeat was quiet"
            )
        return message

    result.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "ohem.bench.cost", json.dumps(spec)]
    return Job(f"cost {arm}", argv, b.out / "logs" / f"cost-{arm}-{repeat}.log", cores, finish)


def accuracy_phase(b: Bench, cost: dict[str, dict[str, Any]], threads: int) -> list[str]:
    """An ``accuracy.csv`` row (and its ``curves.csv`` points) per arm, seed and schedule; returns failures."""
    jobs, failed = accuracy_jobs(b, cost, threads)
    return failed + b.executor.run(jobs, b.jobs, b.out / "executor")


def accuracy_jobs(b: Bench, cost: dict[str, dict[str, Any]], threads: int) -> tuple[list[Job], list[str]]:
    """A job per run of this call without an ``accuracy.csv`` row, and the runs that cannot run (why)."""
    path = b.out / "accuracy.csv"
    rows = read_csv(path)
    done = {run_key(r) for r in rows}
    jobs, failed = [], []
    # seed-major: every arm has a first seed at every schedule before any has a second
    for seed, k, arm in ((seed, k, arm) for seed in b.seeds for k in b.schedules for arm in b.arms):
        if (arm, str(seed), schedule_name(k)) in done:
            continue
        s_per_iter = float(cost[arm]["s_per_iter"]) if arm in cost else None
        if b.budget == "seconds" and s_per_iter is None:
            failed.append(f"accuracy {arm} seed {seed}: skipped: --budget seconds needs its cost row")
            print(f"ohem bench: {failed[-1]}", flush=True)
            continue
        jobs.append(accuracy_job(b, arm, seed, k, threads, s_per_iter, rows))
    kept = sum(run_key(r) in b.wanted() for r in rows)
    if kept:
        print(f"ohem bench: {kept} finished run(s) kept from {path}", flush=True)
    return jobs, failed


def accuracy_job(
    b: Bench, arm: str, seed: int, schedule: float, threads: int, s_per_iter: float | None, rows: list
) -> Job:
    name = run_name("accuracy", arm, seed, schedule)
    run_dir = b.out / "runs" / name
    iterations, overrides = run_overrides(b, arm, seed, threads, s_per_iter, schedule)
    key = (arm, str(seed), schedule_name(schedule))
    argv = [*train_command(b.config_file, run_dir), *[a for o in overrides for a in ("--set", o)]]

    def finish(wall: float) -> str:
        row = record_run(b, run_dir, key, iterations, s_per_iter, rows, wall_s=round(wall, 1), threads=threads)
        score = "none (no class measured)" if row["mAP"] is None else f"{row['mAP']:.4f}"
        return f"mAP {score} after {iterations} iterations ({wall:.0f} s)"

    label = f"accuracy {arm} seed {seed}" + ("" if schedule == 1 else f" x{schedule_name(schedule)}")
    return Job(label, argv, b.out / "logs" / f"{name}.log", threads, finish, run_dir=run_dir)


def record_run(
    b: Bench,
    run_dir: Path,
    key: tuple[str, str, str],
    iterations: int,
    s_per_iter: float | None,
    rows: list[dict[str, Any]],
    **extra: Any,
) -> dict[str, Any]:
    """A finished run's ``accuracy.csv`` row (with ``extra``) and ``curves.csv`` points written; its
    stale ``errors.csv`` row dropped. Returns the row."""
    arm, seed, schedule = key
    row, points = read_run(run_dir, arm, int(seed), iterations, s_per_iter, float(schedule))
    row.update(**extra, run=str(run_dir.relative_to(b.out)))
    curves = [r for r in read_csv(b.out / "curves.csv") if run_key(r) != key]
    write_csv(b.out / "curves.csv", curves + points)  # before the row: a row's curve is always there
    errors = read_csv(b.out / "errors.csv")  # counts of an earlier run in this folder no longer hold
    if any(run_key(r) == key for r in errors):
        write_csv(b.out / "errors.csv", [r for r in errors if run_key(r) != key])
    rows.append(row)
    write_csv(b.out / "accuracy.csv", rows)
    return row


def error_phase(b: Bench, threads: int) -> list[str]:
    """An ``errors.csv`` row per finished run of this call's arms, seeds and schedules, at ``--error-score``
    (a row at another score is redone); returns failures. Nothing with ``--no-errors``."""
    if b.error_score is None:
        return []
    rows = read_csv(b.out / "errors.csv")
    done = {run_key(r) for r in rows if _float(r.get("score")) == b.error_score}
    runs = [r for r in read_csv(b.out / "accuracy.csv") if run_key(r) in b.wanted() - done]
    return b.executor.run([error_job(b, r, threads, rows) for r in runs], b.jobs, b.out / "executor")


def error_job(b: Bench, run: dict[str, Any], threads: int, rows: list[dict[str, Any]]) -> Job:
    arm, seed, schedule = run["arm"], run["seed"], schedule_of(run)
    name = run_name("errors", arm, seed, schedule)
    result = b.out / "logs" / f"{name}.json"
    spec = {"run_dir": str(b.out / run["run"]), "score": b.error_score, "result": str(result)}

    def finish(wall: float) -> str:
        counts = json.loads(result.read_text(encoding="utf-8"))
        row = {"arm": arm, "seed": seed, "schedule": schedule_name(schedule), "score": b.error_score}
        row.update({kind: int(counts[kind]) for kind in KINDS})
        rows[:] = [r for r in rows if run_key(r) != run_key(row)] + [row]
        write_csv(b.out / "errors.csv", rows)
        return f"{', '.join(f'{row[kind]} {kind}' for kind in KINDS)} at score >= {b.error_score} ({wall:.0f} s)"

    result.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "ohem.bench.errors", json.dumps(spec)]
    label = f"errors {arm} seed {seed}" + ("" if schedule == 1 else f" x{schedule_name(schedule)}")
    return Job(label, argv, b.out / "logs" / f"{name}.log", threads, finish)


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def write_summary(b: Bench, cost: dict[str, dict[str, Any]]) -> list[Path]:
    """``summary.md`` (also printed) and the plots, for this call's arms and seeds (error counts at this
    call's ``--error-score``; none with ``--no-errors``)."""
    wanted = b.wanted()
    acc = [r for r in read_csv(b.out / "accuracy.csv") if run_key(r) in wanted]
    curves = [r for r in read_csv(b.out / "curves.csv") if run_key(r) in wanted]
    errors = [
        r for r in read_csv(b.out / "errors.csv") if run_key(r) in wanted and _float(r.get("score")) == b.error_score
    ]
    for rows in (acc, errors):
        rows.sort(key=lambda r: (b.arms.index(r["arm"]), b.seeds.index(int(r["seed"])), schedule_of(r)))
    budget = f"{b.seconds:.1f} s of training per run" if b.budget == "seconds" else "equal iterations"
    title = f"ohem bench: {b.config}, {budget}"
    cost = {a: r for a, r in cost.items() if a in b.arms}
    descriptions = {a: b.arm(a).description for a in b.arms}
    if len(b.schedules) == 1:
        text = summary_markdown(title, b.arms, acc, curves, cost, b.budget, errors, descriptions=descriptions)
    else:  # the tables and verdict of the longest runs, then the arms across schedules
        longest = max(b.schedules)
        title += (
            f"; {', '.join(map(schedule_name, b.schedules))} × the run (tables: the {schedule_name(longest)}× runs)"
        )
        acc_longest, curves_longest, errors_longest = (
            [r for r in rows if schedule_of(r) == longest] for rows in (acc, curves, errors)
        )
        extra = schedule_markdown(acc, b.arms)
        text = summary_markdown(
            title, b.arms, acc_longest, curves_longest, cost, b.budget, errors_longest, extra, descriptions
        )
    with atomic_open(b.out / "summary.md") as f:
        f.write(text)
    print(text)
    if not has_module("matplotlib"):
        hint = install_hint("matplotlib")
        print(f"ohem bench: note: no curve plots (matplotlib is not installed: {hint})", file=sys.stderr)
        return [b.out / "summary.md"]
    plots = plot_curves(b.out, [r for r in curves if schedule_of(r) == max(b.schedules)], b.arms)  # longest runs
    if len(b.schedules) > 1:
        plots += plot_schedules(b.out, acc, b.arms)
    return [b.out / "summary.md", *plots]
