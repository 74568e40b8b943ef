"""The read-only pass's RoIs and the step time of ohem-presample against ohem, on dense proposals.

    python benchmarks/bench_presample.py [--config bench_dense] [--images 16]
        [--warmup 3] [--iterations 10] [--repeats 1] [--arms ohem,ohem-presample] [--set KEY=VALUE ...]

Writes dense proposals (those of ``ohem proposals --method dense``, 2000 per image by default) for the
first ``--images`` train and test images into a temporary folder, then times each arm of
``ohem.bench.builtin_arms()`` in a process of its own through ``ohem.bench.cost.measure`` (wall seconds per
step, between step starts, after ``--warmup`` steps), counting the RoIs each read-only pass runs on;
with ``--repeats`` the arms take turns. Prints per arm (medians over its runs): RoIs per image in the
read-only pass, s/step, mining s/step (``time_mining``), GFLOP and RoI pool MB per step (counted after the
timed steps, ``ohem.bench.opcount``), and RoIs, s/step and FLOPs as ratios to the first arm, with the time
ratio over the FLOP ratio (how far the step is from what its arithmetic predicts).
A measurement, not a test: the numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ohem.bench import builtin_arms


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One arm's cost, with the read-only pass's RoIs counted (runs in its own process)."""
    import ohem.mining.roi_heads as heads_module
    from ohem.bench.cost import measure

    counted = {"passes": 0, "rois": 0}
    readonly_pass = heads_module.readonly_pass

    def counting(heads, features, rois, *args, **kwargs):
        counted["passes"] += 1
        counted["rois"] += rois.boxes.shape[0]
        return readonly_pass(heads, features, rois, *args, **kwargs)

    heads_module.readonly_pass = counting
    result = measure(spec)
    images = spec["images_per_batch"] * max(counted["passes"], 1)
    return {**result, "readonly_rois_per_image": counted["rois"] / images if counted["passes"] else 0.0}


def write_proposals(config: str, images: int, folder: Path, overrides: list[str]) -> list[str]:
    """Dense proposals of the first ``images`` train and test images; the overrides that use them."""
    from ohem.config import load_config
    from ohem.data import build_dataset
    from ohem.data.dense_proposals import dense_proposals

    sizes = [f"data.num_train={images}", f"data.num_test={images}"]
    cfg = load_config(config, [*overrides, *sizes, "data.proposals=null", "data.test_proposals=null"])
    files = {}
    for role, key in (("train", "data.proposals"), ("test", "data.test_proposals")):
        files[key] = dense_proposals(build_dataset(cfg.data, role), folder / f"{role}.npz", cfg.data.max_proposals)
    return [*sizes, *(f"{key}={path}" for key, path in files.items())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="bench_dense")
    parser.add_argument("--images", type=int, default=16, help="train (and test) images given proposals")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--arms", default="ohem,ohem-presample", help="the first one is the baseline of the ratios")
    parser.add_argument("--repeats", type=int, default=1, help="runs per arm, the arms taking turns; medians shown")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one arm's spec (JSON)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    from ohem.config import load_config

    arms = [name.strip() for name in args.arms.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        data = write_proposals(args.config, args.images, Path(tmp), args.overrides)
        quiet = ["train.eval_every=0", "train.checkpoint_every=0", "train.roi_loss_images=0", "train.vis_images=0"]
        runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
        for arm in arms * args.repeats:  # taking turns: a change in the machine's load hits every arm
            overrides = [*args.overrides, *data, *quiet, *builtin_arms()[arm].overrides]
            spec = {
                "config": args.config,
                "overrides": overrides,
                "run_dir": str(Path(tmp) / f"{arm}-{len(runs[arm])}"),
                "result": str(Path(tmp) / f"{arm}-{len(runs[arm])}.json"),
                "warmup": args.warmup,
                "iterations": args.iterations,
                "images_per_batch": load_config(args.config, overrides).solver.images_per_batch,
            }
            done = subprocess.run(
                [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True
            )
            if done.returncode != 0:
                sys.exit(f"{arm}: failed\n{done.stderr[-2000:]}")
            runs[arm].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(report(runs))


def report(runs: dict[str, list[dict[str, Any]]]) -> str:
    """The table: per arm the medians over its runs, and ratios to the first arm: of RoIs, of time, of
    FLOPs (counted, forward and backward: the bound the time ratio would meet if the step were pure
    arithmetic) and time ratio ÷ FLOP ratio (1.00: at that bound)."""
    keys = ("readonly_rois_per_image", "s_per_iter", "mining_s_per_iter", "gflop_per_iter", "roi_pool_mb_per_iter")
    medians = {arm: [statistics.median(r.get(k, float("nan")) for r in rs) for k in keys] for arm, rs in runs.items()}
    base_rois, base_seconds, _, base_flops, _ = next(iter(medians.values()))
    header = ("arm", "read-only RoIs/img", "s/step", "mining s", "GFLOP", "RoI pool MB", "RoIs x", "time x", "FLOPs x")
    lines = ["{:<16}{:>19}{:>8}{:>10}{:>8}{:>13}{:>8}{:>8}{:>9}{:>18}".format(*header, "time x / FLOPs x")]
    for arm, (rois, seconds, mining, flops, roi_align) in medians.items():
        ratio = rois / base_rois if base_rois else float("nan")
        time_x, flops_x = seconds / base_seconds, flops / base_flops
        lines.append(
            f"{arm:<16}{rois:>19.0f}{seconds:>8.3f}{mining:>10.3f}{flops:>8.2f}{roi_align:>13.0f}{ratio:>8.3f}"
            f"{time_x:>8.3f}{flops_x:>9.3f}{time_x / flops_x:>18.2f}"
        )
    for arm, rs in runs.items():
        lines.append(f"{arm} s/step per run: " + ", ".join(f"{r['s_per_iter']:.3f}" for r in rs))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
