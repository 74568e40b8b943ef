"""One ``ohem bench`` call (``Bench``: its arms, seeds, schedules, budget, phases' settings) and what
each of its runs is: its folder name, its key in every CSV (arm, seed, schedule), its iterations and
``--set`` list (``run_overrides``), and its rows once finished (``read_run``). Everything here is
arithmetic on settings and reading finished folders; nothing starts a process."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ohem.bench.arms import Arm, builtin_arms, parse_arms
from ohem.bench.executors import Executor
from ohem.bench.jobs import CHECKPOINT, read_jsonl
from ohem.bench.state import MAX_SECONDS
from ohem.config import Config, load_config
from ohem.recipes import resolved_config

COST_WARMUP = 10  # untimed steps first: allocator and thread pools settle
ERROR_SCORE = 0.5  # the error phase's default score threshold
MAX_JOBS = 256  # --jobs: processes at a time; far more than any machine's cores is a typo


@dataclass
class Bench:
    """One ``ohem bench`` call."""

    config: str
    out: Path
    arms: list[str]
    seeds: list[int] = field(default_factory=lambda: [0])
    overrides: list[str] = field(default_factory=list)  # the user's --set, under every arm's own
    budget: str = "iterations"  # iterations | seconds
    seconds: float | None = None  # budget seconds: training seconds per run
    jobs: int = 1
    cost_iters: int = 20  # timed steps per repeat
    cost_repeats: int = 3  # timings per arm, interleaved across arms
    cost_warmup: int = COST_WARMUP
    cost_init: str | None = None  # cost phase: start from these weights
    pretrain: str | None = None  # a config trained once into OUT/pretrain; every run starts from its weights
    error_score: float | None = ERROR_SCORE  # error phase: detections scoring at least this; None: no phase
    executor: Executor = field(default_factory=Executor)  # where the training runs execute (not the cost phase)
    schedules: list[float] = field(default_factory=lambda: [1.0])  # multiples of the run length (iterations or seconds)
    arm_files: dict[str, Arm] = field(default_factory=dict)  # --arms given as files, by name (else built-in)
    # --config and --pretrain as files, resolved once: a folder named like a recipe (``--out bench``)
    # must not change what a later phase, a run or a rerun reads
    config_file: str = field(init=False)
    pretrain_file: str | None = field(init=False)

    def __post_init__(self) -> None:
        self.config_file = resolved_config(self.config)
        self.pretrain_file = resolved_config(self.pretrain) if self.pretrain else None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Bench:
        missing = [flag for flag, value in (("--config", args.config), ("--out", args.out)) if not value]
        if missing:
            raise ValueError(f"{' and '.join(missing)} required (or --list-arms)")
        if args.no_errors and args.error_score is not None:
            raise ValueError("--error-score and --no-errors: give one (--no-errors skips the error phase)")
        error_score = None if args.no_errors else ERROR_SCORE if args.error_score is None else args.error_score
        arms = parse_arms(args.arms)
        builtin = builtin_arms()
        return cls(
            config=args.config,
            out=Path(args.out),
            arms=[arm.name for arm in arms],
            arm_files={arm.name: arm for arm in arms if builtin.get(arm.name) != arm},
            seeds=list(dict.fromkeys(args.seeds)),
            overrides=list(args.overrides),
            budget=args.budget,
            seconds=args.seconds,
            jobs=args.jobs,
            cost_init=args.cost_init,
            pretrain=args.pretrain,
            error_score=error_score,
            schedules=list(dict.fromkeys(args.schedules)),
            executor=Executor.parse(
                args.executor,
                partition=args.partition,
                account=args.account,
                time_limit=args.time_limit,
                gpus_per_run=args.gpus_per_run,
                cpus_per_run=args.cpus_per_run,
            ),
            # the cost phase's own defaults (above) unless given
            **{
                k: v for k, v in (("cost_iters", args.cost_iters), ("cost_repeats", args.cost_repeats)) if v is not None
            },
        )

    def check(self) -> None:
        for flag, value, low in (
            ("--jobs", self.jobs, 1),
            ("--cost-iters", self.cost_iters, 0),
            ("--cost-repeats", self.cost_repeats, 1),
        ):
            if value < low:
                raise ValueError(f"{flag} must be >= {low}, got {value}")
        if self.jobs > MAX_JOBS:
            raise ValueError(f"--jobs must be <= {MAX_JOBS} (training processes at a time), got {self.jobs}")
        if self.budget not in ("iterations", "seconds"):
            raise ValueError(f"--budget must be iterations or seconds, got {self.budget!r}")
        if self.cost_iters == 0 and self.budget == "seconds":
            raise ValueError("--cost-iters 0 (no cost phase) leaves --budget seconds nothing to divide the time by")
        if self.seconds is not None and (self.budget != "seconds" or not 0 < self.seconds <= MAX_SECONDS):
            raise ValueError(
                f"--seconds {self.seconds}: needs --budget seconds and a number in (0, {MAX_SECONDS:g}] "
                "(training seconds per run)"
            )
        if not self.seeds:
            raise ValueError("--seeds: give at least one seed")
        bad = [k for k in self.schedules if not 0 < k <= MAX_SCHEDULE]  # NaN too
        if not self.schedules or bad:
            raise ValueError(
                f"--schedules: give multiples of the run length in (0, {MAX_SCHEDULE:g}], got {schedule_name(bad[0])}"
                if bad
                else "--schedules: give at least one multiple of the run length (e.g. 1 2 4)"
            )
        if self.error_score is not None and not 0 <= self.error_score <= 1:  # scores are probabilities
            raise ValueError(f"--error-score must be in [0, 1], got {self.error_score}")

    @property
    def pretrained(self) -> Path:
        return self.out / "pretrain" / CHECKPOINT

    def wanted(self) -> set[tuple[str, str, str]]:
        """The runs this call is about, as ``run_key`` gives them."""
        return {(a, str(s), schedule_name(k)) for a in self.arms for s in self.seeds for k in self.schedules}

    def arm(self, name: str) -> Arm:
        """The arm of that name: given as a file, else built in."""
        return self.arm_files.get(name) or builtin_arms()[name]

    def arm_overrides(self, name: str) -> list[str]:
        """The user's --set, then the arm's (arms apply on top)."""
        arm = self.arm(name)
        overrides = [*self.overrides, *arm.overrides]
        if arm.start_fraction:
            iterations = load_config(self.config_file, overrides).solver.iterations
            overrides.append(f"sampler.start={math.floor(iterations * arm.start_fraction + 0.5)}")
        return overrides


MAX_SCHEDULE = 1000.0  # --schedules: a thousand times the config's run is a typo


def schedule_name(k: float) -> str:
    """A schedule multiple as the summary and the run folders write it: 1, 2, 0.5."""
    return f"{k:g}"


def schedule_of(row: dict[str, Any]) -> float:
    """A row's schedule multiple; rows written before schedules existed ran the config's run length (1)."""
    return float(row.get("schedule") or 1)


def run_key(row: dict[str, Any]) -> tuple[str, str, str]:
    """What identifies a run in every CSV: arm, seed, schedule."""
    return row["arm"], str(row["seed"]), schedule_name(schedule_of(row))


def run_name(kind: str, arm: str, seed: int | str, k: float) -> str:
    """``accuracy-ohem-seed0`` at the config's run length, ``accuracy-ohem-seed0-x2`` at twice it."""
    return f"{kind}-{arm}-seed{seed}" + ("" if k == 1 else f"-x{schedule_name(k)}")


MAX_ITERATIONS = 10**9  # a run's iterations under --budget seconds: more is a broken s/iter or --seconds


def budget_iterations(seconds: float, s_per_iter: float) -> int:
    """Iterations that take ``seconds`` at ``s_per_iter`` (nearest, at least 1)."""
    iterations = seconds / s_per_iter if s_per_iter > 0 else math.inf
    if not iterations <= MAX_ITERATIONS:  # NaN and infinity too
        raise ValueError(
            f"--seconds {seconds:g} at {s_per_iter:g} s/iter is {iterations:.3g} iterations, "
            f"more than {MAX_ITERATIONS:,} (give fewer --seconds)"
        )
    return max(1, math.floor(iterations + 0.5))


def schedule_overrides(cfg: Config, iterations: int) -> list[str]:
    """``cfg``'s run stretched to ``iterations``: lr steps, warm-up, the sampler's settings counted in
    iterations (its ``stretched``) and the evaluation interval scaled by the same factor (so every arm
    drops its lr and is evaluated at the same fractions of its run)."""
    factor = iterations / cfg.solver.iterations
    steps = [max(1, math.floor(step * factor + 0.5)) for step in cfg.solver.steps]
    overrides = [
        f"solver.iterations={iterations}",
        f"solver.steps=[{', '.join(map(str, steps))}]",
        f"solver.warmup_iterations={math.floor(cfg.solver.warmup_iterations * factor + 0.5)}",
    ]
    stretched = cfg.sampler.stretched(factor).to_dict()
    overrides += [f"sampler.{k}={json.dumps(v)}" for k, v in stretched.items() if cfg.sampler.to_dict()[k] != v]
    if cfg.train.eval_every:
        overrides.append(f"train.eval_every={max(1, math.floor(cfg.train.eval_every * factor + 0.5))}")
    return overrides


def run_overrides(
    b: Bench, arm: str, seed: int, threads: int, s_per_iter: float | None, schedule: float = 1.0
) -> tuple[int, list[str]]:
    """One accuracy run's iterations and ``--set`` list: the user's, the arm's, seed and threads and,
    at a ``schedule`` other than 1 or with ``--budget seconds``, the run length and lr schedule
    stretched to ``schedule`` x the config's iterations or x ``--seconds`` at ``s_per_iter``."""
    cfg = load_config(b.config_file, b.arm_overrides(arm))
    overrides = [*b.arm_overrides(arm), f"train.seed={seed}", f"train.num_threads={threads}"]
    if b.budget != "seconds":
        if schedule == 1:
            return cfg.solver.iterations, overrides
        iterations = max(1, math.floor(cfg.solver.iterations * schedule + 0.5))
        if iterations > MAX_ITERATIONS:
            raise ValueError(
                f"--schedules {schedule_name(schedule)}: {iterations:,} iterations, more than {MAX_ITERATIONS:,}"
            )
        return iterations, overrides + schedule_overrides(cfg, iterations)
    assert b.seconds is not None and s_per_iter is not None  # Bench.check and the cost phase set them
    iterations = budget_iterations(b.seconds * schedule, s_per_iter)
    return iterations, overrides + schedule_overrides(cfg, iterations)


def read_run(
    run_dir: Path, arm: str, seed: int, iterations: int, s_per_iter: float | None, schedule: float = 1.0
) -> tuple[dict, list]:
    """A finished run's ``accuracy.csv`` row and ``curves.csv`` points, from its metrics and log."""
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    records = read_jsonl(run_dir / "log.jsonl")
    evals = {r["iteration"]: r for r in records if "eval" in r}  # the last entry per iteration
    points = [
        {
            "arm": arm,
            "seed": seed,
            "schedule": schedule_name(schedule),
            "iteration": it,
            "seconds": round(it * s_per_iter, 3) if s_per_iter else "",
            "mAP": r["eval"].get("mAP"),
            "train_roi_loss": r.get("train_roi_loss", ""),
        }
        for it, r in sorted(evals.items())
    ]
    steps = [r for r in records if "eval" not in r]
    fg = [r["ohem_mined_fg_fraction"] for r in steps[-200:] if "ohem_mined_fg_fraction" in r]
    row = {
        "arm": arm,
        "seed": seed,
        "schedule": schedule_name(schedule),
        "iterations": iterations,
        "seconds": round(iterations * s_per_iter, 2) if s_per_iter else "",
        "mAP": metrics.get("mAP"),
        "metric": metrics.get("metric", ""),
        "train_roi_loss": points[-1]["train_roi_loss"] if points else "",
        "mined_fg_fraction": round(sum(fg) / len(fg), 4) if fg else "",
    }
    return row, points
