"""``ohem bench``: the sampler benchmark for any config. The arms (``ohem.bench.arms``: YAML files,
built in or your own) are the sampler settings compared; ``run_bench`` trains every arm x seed and
writes the CSVs, the tables, a verdict, the error counts and the plots (``ohem.bench.run``, ``ohem.bench.summary``);
``ohem.bench.cost`` times one arm's steps in its own process, ``ohem.bench.errors`` sorts one
finished run's test detections into kinds of error in its own."""

from ohem.bench.arms import Arm, builtin_arms, format_arms, parse_arms, read_arm
from ohem.bench.executors import Executor
from ohem.bench.plan import collect_bench, plan_bench
from ohem.bench.run import run_bench
from ohem.bench.spec import Bench, budget_iterations, schedule_overrides
from ohem.bench.summary import Comparison, comparisons, verdict

__all__ = [
    "Arm",
    "Bench",
    "Comparison",
    "Executor",
    "collect_bench",
    "budget_iterations",
    "comparisons",
    "builtin_arms",
    "format_arms",
    "parse_arms",
    "read_arm",
    "plan_bench",
    "run_bench",
    "schedule_overrides",
    "verdict",
]
