"""``ohem bench``."""

from __future__ import annotations

import argparse


def cmd_bench(args: argparse.Namespace) -> int:
    from ohem import bench

    if args.list_arms:
        print(bench.format_arms(), end="")
        return 0
    return bench.run_bench(bench.Bench.from_args(args))
