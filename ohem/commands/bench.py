"""``ohem bench``: run, plan or collect a benchmark (``ohem.bench``)."""

from __future__ import annotations

import argparse

from ohem.config import check_range


def cmd_bench(args: argparse.Namespace) -> int:
    from ohem import bench

    if args.list_arms:  # the built-in arms, and the files given with --arms
        files = [arm for arm in bench.parse_arms(args.arms) if arm.name not in bench.builtin_arms()]
        print(bench.format_arms([*bench.builtin_arms().values(), *files]), end="")
        return 0
    for seed in args.seeds:  # each becomes a run's train.seed: held to its range before anything runs
        check_range("--seeds", seed, 0, 2**64 - 1)
    if args.pretrain == "":
        raise ValueError("--pretrain '': empty; give the config (or recipe) to pretrain with")
    b = bench.Bench.from_args(args)
    if args.plan:
        return bench.plan_bench(b)
    return bench.collect_bench(b) if args.collect else bench.run_bench(b)
