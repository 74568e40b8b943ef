"""Loader workers against in-process loading: the same training run with ``data.workers`` 0, 1, 2,
side by side in one call (each a fresh run, so every image is decoded again), reporting wall seconds
per iteration, the share spent waiting for data and the ratio to in-process loading.

    PYTHONPATH=. python benchmarks/bench_loader.py [--config bench] [--iterations 150]
        [--workers 0 1 2] [--set key=value ...]

The per-iteration numbers are ``time_data + time_step`` from each run's ``log.jsonl`` after 10
warm-up iterations (no evaluation or checkpoint inside the window).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ohem.config import load_config
from ohem.engine.runlog import step_seconds
from ohem.engine.trainer import train


def seconds_per_iteration(config: str, overrides: list[str], workers: int, iterations: int) -> tuple[float, float]:
    """(wall s/iter, data-wait share) of a run with ``workers`` loader processes."""
    sets = [
        *overrides,
        f"data.workers={workers}",
        f"solver.iterations={iterations}",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        "train.vis_images=0",
        "data.num_test=1",
        "train.roi_loss_images=0",
    ]
    with tempfile.TemporaryDirectory() as out:
        train(load_config(config, sets), out)
        return step_seconds(Path(out) / "log.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="bench")
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    print(f"{args.config}, {args.iterations} iterations {' '.join(args.overrides)}")
    print(f"{'workers':>7} {'s/iter':>8} {'data wait':>9} {'x in-process':>12}")
    base = None
    for workers in args.workers:
        per_iter, wait = seconds_per_iteration(args.config, args.overrides, workers, args.iterations)
        base = base or per_iter
        print(f"{workers:>7} {per_iter:8.4f} {wait:9.1%} {per_iter / base:12.2f}", flush=True)


if __name__ == "__main__":
    main()
