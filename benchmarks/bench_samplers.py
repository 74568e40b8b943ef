"""Equal-budget benchmark of OHEM against the heuristic baselines on the built-in synthetic data.

    python benchmarks/bench_samplers.py                # heuristic and ohem x 3 seeds, tv-default x 1
    python benchmarks/bench_samplers.py --ablations    # ohem-no-nms, ohem-cls, all-rois, ohem-1img,
                                                       # ohem-zeroing, heuristic-bg0: one seed each
    python benchmarks/bench_samplers.py --quick        # a CI-sized smoke run; its numbers are not the claim

Every arm trains ``configs/bench.yaml`` (same model, data, seeds, iterations); only sampler keys
differ. Two phases, both resumable (finished rows are kept in the CSVs and skipped on a rerun):

* **accuracy**: full training runs, ``--jobs`` at a time in separate processes with 1 thread each
  (their step times are not used): final and intermediate test mAP@0.5, and the mean loss over all
  RoIs of 100 training images at each evaluation (the paper's convergence measure).
* **cost**: then each arm alone, in its own process, on all threads, for ``--cost-iters``
  iterations after a warm-up, every arm starting from the same trained weights (OHEM seed 0), so
  that the RPN gives its steady-state number of RoIs: s/iter, the read-only mining share of the
  OHEM step, and peak resident memory (``ru_maxrss`` of that process, and its rise over the RSS
  before training).

Writes ``OUT/cost.csv``, ``OUT/accuracy.csv`` (a row per finished arm/seed), ``OUT/curves.csv``,
``OUT/map_curve.png``, ``OUT/roi_loss_curve.png`` (``*_ablations.png`` for ``--ablations``) and
prints one table with ratios against the heuristic and tv-default arms, then the targets: OHEM minus
heuristic mAP >= +3.0 on average and >= 0 for every seed; OHEM s/iter <= 1.5 x heuristic and
<= 1.0 x tv-default; OHEM peak RSS <= 1.15 x heuristic.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HEURISTIC = ["sampler.method=heuristic", "sampler.fg_fraction=0.25", "sampler.bg_iou_low=0.1"]
ARMS = {  # name: (its row number in the printed table and the plot legends, overrides of configs/bench.yaml)
    "heuristic": (1, HEURISTIC + ["sampler.batch_size_per_image=64"]),
    "tv-default": (2, ["sampler.method=heuristic", "sampler.batch_size_per_image=512", "sampler.bg_iou_low=0.0"]),
    "ohem": (3, ["sampler.method=ohem", "sampler.nms_iou=0.7", "sampler.mining_loss=cls+box"]),
    "ohem-no-nms": (4, ["sampler.method=ohem", "sampler.nms_iou=null"]),
    "ohem-cls": (5, ["sampler.method=ohem", "sampler.mining_loss=cls"]),
    # 2048 RoIs per 2-image batch is more than the 400 + gt each image has: every RoI.
    "all-rois": (6, ["sampler.method=heuristic", "sampler.batch_size_per_image=1024", "sampler.bg_iou_low=0.0"]),
    "ohem-1img": (7, ["sampler.method=ohem", "solver.images_per_batch=1", "sampler.batch_size_per_image=128"]),
    "ohem-zeroing": (8, ["sampler.method=ohem", "sampler.implementation=loss-zeroing"]),
    # heuristic-bg0: the heuristic with the paper's other ablation, bg_lo = 0.
    "heuristic-bg0": (9, HEURISTIC + ["sampler.batch_size_per_image=64", "sampler.bg_iou_low=0.0"]),
}
MAIN = {"heuristic": 3, "ohem": 3, "tv-default": 1}  # arm: number of seeds
ABLATIONS = ["ohem-no-nms", "ohem-cls", "all-rois", "ohem-1img", "ohem-zeroing", "heuristic-bg0"]
QUICK = [
    "solver.iterations=150", "solver.warmup_iterations=20", "solver.steps=[120]", "data.num_train=100",
    "data.num_test=40", "train.eval_every=75", "train.checkpoint_every=75", "train.roi_loss_images=20",
]  # fmt: skip


def worker(args: argparse.Namespace) -> None:
    """One arm and seed in this process; writes ``result.json`` into its run directory."""
    import torch

    from ohem import train as training
    from ohem.config import load_config

    torch.set_num_threads(args.threads)
    run = Path(args.run_dir)
    overrides = ARMS[args.worker][1] + args.extra + [f"train.seed={args.seed}"]
    if args.phase == "cost":
        overrides += [
            f"solver.iterations={args.cost_iters + 20}", "train.eval_every=0", "train.checkpoint_every=0",
            "data.num_test=10", "train.roi_loss_images=0",
        ]  # fmt: skip
        if args.init:  # a trained model: steady-state proposals, the same for every arm
            overrides.append(f"model.init_weights={args.init}")
    cfg = load_config(ROOT / "configs" / "bench.yaml", overrides)
    rss_before = _rss_mib()
    resume = (run / "checkpoint_last.pt").exists() and args.phase == "accuracy"
    # a rerun of the cost phase, or an accuracy run stopped before its first checkpoint, starts over
    # (the earlier files are moved to previous-N/, not deleted)
    metrics = training.train(cfg, run, resume=resume, force=not resume)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "eval" not in r][20:]  # skip warm-up
    result = {"arm": args.worker, "seed": args.seed, "phase": args.phase, "mAP": metrics["mAP"]}
    if args.phase == "cost":
        mining = [r["ohem_mining_time"] for r in steps if "ohem_mining_time" in r]
        result.update({
            "s_per_iter": statistics.mean(r["time"] for r in steps),
            "mining_share": statistics.mean(mining) / statistics.mean(r["time"] for r in steps) if mining else 0.0,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_mib": rss_before,
        })  # fmt: skip
    else:
        evals = [r for r in log if "eval" in r]
        result["curve"] = [
            {"iteration": r["iteration"], "mAP": r["eval"]["mAP"], "train_roi_loss": r.get("train_roi_loss")}
            for r in evals
        ]
        fg = [r["ohem_mined_fg_fraction"] for r in steps[-200:] if "ohem_mined_fg_fraction" in r]
        result["final_mined_fg_fraction"] = statistics.mean(fg) if fg else None
    (run / "result.json").write_text(json.dumps(result))


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict]) -> None:
    """The whole CSV, written atomically: a stopped run never leaves a truncated file."""
    fields = list(dict.fromkeys(k for row in rows for k in row))
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def launch(args: argparse.Namespace, phase: str, arm: str, seed: int, threads: int) -> subprocess.Popen:
    run_dir = Path(args.out) / "runs" / f"{phase}-{arm}-seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, __file__, "--worker", arm, "--seed", str(seed), "--phase", phase, "--run-dir", str(run_dir),
        "--threads", str(threads), "--cost-iters", str(args.cost_iters),
    ]  # fmt: skip
    if phase == "cost" and args.cost_init:
        cmd += ["--init", args.cost_init]
    for item in args.extra:
        cmd += ["--set", item]
    env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS=str(threads))
    log = (run_dir / "stdout.txt").open("a")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def run_phase(args: argparse.Namespace, phase: str, plan: list[tuple[str, int]], jobs: int, threads: int) -> None:
    path = Path(args.out) / f"{phase}.csv"
    rows = read_rows(path)
    done = {(r["arm"], int(r["seed"])) for r in rows}
    todo = [item for item in plan if item not in done]
    running: list[tuple[subprocess.Popen, str, int, float]] = []
    while todo or running:
        while todo and len(running) < jobs:
            arm, seed = todo.pop(0)
            print(f"[{phase}] start {arm} seed {seed}", flush=True)
            running.append((launch(args, phase, arm, seed, threads), arm, seed, time.time()))
        time.sleep(2)
        for item in list(running):
            proc, arm, seed, started = item
            if proc.poll() is None:
                continue
            running.remove(item)
            run_dir = Path(args.out) / "runs" / f"{phase}-{arm}-seed{seed}"
            if proc.returncode != 0:
                print(f"[{phase}] FAILED {arm} seed {seed} (exit {proc.returncode}); see {run_dir}/stdout.txt")
                continue
            result = json.loads((run_dir / "result.json").read_text())
            row = {k: v for k, v in result.items() if k not in ("curve", "phase")}
            row["wall_s"] = round(time.time() - started, 1)
            rows.append(row)
            write_rows(path, rows)
            if phase == "accuracy":
                curves = read_rows(Path(args.out) / "curves.csv")
                curves += [{"arm": arm, "seed": seed, **point} for point in result["curve"]]
                write_rows(Path(args.out) / "curves.csv", curves)
            print(f"[{phase}] done {arm} seed {seed}: mAP {result['mAP']:.4f}", flush=True)


def summarize(args: argparse.Namespace, arms: list[str]) -> None:
    out = Path(args.out)
    cost = {r["arm"]: r for r in read_rows(out / "cost.csv")}
    acc: dict[str, list[dict]] = {}
    for r in read_rows(out / "accuracy.csv"):
        acc.setdefault(r["arm"], []).append(r)

    def mean_map(arm: str) -> float | None:
        rows = acc.get(arm)
        return statistics.mean(float(r["mAP"]) for r in rows) * 100 if rows else None

    def ratio(arm: str, base: str, key: str) -> str:
        if arm in cost and base in cost:
            return f"{float(cost[arm][key]) / float(cost[base][key]):.2f}"
        return "-"

    header = (
        f"{'arm':<14}{'#':>2} {'seeds':>5} {'mAP':>6} {'sd':>5} {'s/iter':>7} {'xH':>5} {'xTV':>5} "
        f"{'peakMiB':>8} {'xH':>5} {'dRSS':>6} {'xH':>5} {'mine%':>6} {'fg%':>5}"
    )
    print(header)
    for arm in arms:
        rows = acc.get(arm, [])
        maps = [float(r["mAP"]) * 100 for r in rows]
        sd = f"{statistics.stdev(maps):5.1f}" if len(maps) > 1 else "    -"
        c = cost.get(arm)
        fg = [float(r["final_mined_fg_fraction"]) for r in rows if r.get("final_mined_fg_fraction")]
        delta = (lambda r: float(r["peak_rss_mib"]) - float(r["rss_before_mib"])) if c else None
        d_ratio = "-"
        if c and "heuristic" in cost:
            d_ratio = f"{delta(c) / delta(cost['heuristic']):.2f}"
        print(
            f"{arm:<14}{ARMS[arm][0]:>2} {len(rows):>5} {statistics.mean(maps) if maps else float('nan'):6.1f} {sd} "
            f"{float(c['s_per_iter']) if c else float('nan'):7.3f} {ratio(arm, 'heuristic', 's_per_iter'):>5} "
            f"{ratio(arm, 'tv-default', 's_per_iter'):>5} {float(c['peak_rss_mib']) if c else float('nan'):8.0f} "
            f"{ratio(arm, 'heuristic', 'peak_rss_mib'):>5} {delta(c) if c else float('nan'):6.0f} {d_ratio:>5} "
            f"{float(c['mining_share']) * 100 if c else float('nan'):6.1f} "
            f"{statistics.mean(fg) * 100 if fg else float('nan'):5.1f}"
        )
    print("xH / xTV: ratio to the heuristic / tv-default arms; dRSS: peak RSS minus RSS before training;")
    print("mine%: read-only pass + selection share of the OHEM step; fg%: fg among mined RoIs, last 200 its")
    by_seed = {a: {int(r["seed"]): float(r["mAP"]) * 100 for r in acc.get(a, [])} for a in ("heuristic", "ohem")}
    common = sorted(set(by_seed["heuristic"]) & set(by_seed["ohem"]))
    if common:
        diffs = [by_seed["ohem"][s] - by_seed["heuristic"][s] for s in common]
        ok = statistics.mean(diffs) >= 3.0 and min(diffs) >= 0
        per_seed = ", ".join(f"{d:+.1f}" for d in diffs)
        print(
            f"target OHEM - heuristic mAP >= +3.0 mean and >= 0 every seed: per seed {per_seed}, "
            f"mean {statistics.mean(diffs):+.1f} -> {'MET' if ok else 'MISSED'}"
        )
    for label, arm, base, key, limit in [
        ("OHEM s/iter <= 1.5 x heuristic", "ohem", "heuristic", "s_per_iter", 1.5),
        ("OHEM s/iter <= 1.0 x tv-default", "ohem", "tv-default", "s_per_iter", 1.0),
        ("OHEM peak RSS <= 1.15 x heuristic", "ohem", "heuristic", "peak_rss_mib", 1.15),
    ]:
        if arm in cost and base in cost:
            r = float(cost[arm][key]) / float(cost[base][key])
            print(f"target {label}: {r:.2f} -> {'MET' if r <= limit else 'MISSED'}")
    plot_curves(out, arms, suffix="_ablations" if args.ablations else "")


def plot_curves(out: Path, arms: list[str], suffix: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = read_rows(out / "curves.csv")
    for key, name, ylabel in [
        ("mAP", f"map_curve{suffix}.png", "test mAP@0.5 (%)"),
        ("train_roi_loss", f"roi_loss_curve{suffix}.png", "mean loss over all RoIs, 100 train images"),
    ]:
        fig, ax = plt.subplots(figsize=(8, 5))
        for i, arm in enumerate(arms):
            points = [r for r in curves if r["arm"] == arm and r.get(key) not in (None, "", "None")]
            if not points:
                continue
            colour = plt.get_cmap("tab10")(i)
            per_seed: dict[str, list[tuple[int, float]]] = {}
            for r in points:
                value = float(r[key]) * (100 if key == "mAP" else 1)
                per_seed.setdefault(r["seed"], []).append((int(r["iteration"]), value))
            for series in per_seed.values():
                ax.plot(*zip(*sorted(series)), color=colour, alpha=0.25, lw=1)
            its = sorted({p[0] for s in per_seed.values() for p in s})
            mean = [statistics.mean(v for s in per_seed.values() for i2, v in s if i2 == it) for it in its]
            ax.plot(its, mean, "o-", color=colour, label=f"{ARMS[arm][0]}. {arm} ({len(per_seed)} seeds)")
        ax.set(xlabel="iteration", ylabel=ylabel)
        if key != "mAP":
            ax.set_yscale("log")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument(
        "--ablations", action="store_true", help=f"the ablation arms ({', '.join(ABLATIONS)}), one seed each"
    )
    parser.add_argument("--quick", action="store_true", help="tiny budget smoke run")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2, help="accuracy runs at a time (1 thread each)")
    parser.add_argument("--cost-iters", type=int, default=150)
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument(
        "--cost-init",
        help="start the cost runs from this checkpoint (default: the trained OHEM seed-0 run, once it exists)",
    )
    parser.add_argument("--set", dest="extra", action="append", default=[], help="override for every arm")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--phase", default="accuracy", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--init", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.quick:
        args.extra = QUICK + args.extra
        args.cost_iters = min(args.cost_iters, 30)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.ablations:
        arms = ["heuristic", "ohem", *ABLATIONS]
        plan = [(arm, 0) for arm in ABLATIONS]
    else:
        arms = list(MAIN)
        plan = [(arm, seed) for seed in range(args.seeds) for arm, n in MAIN.items() if seed < min(n, args.seeds)]
    run_phase(args, "accuracy", plan, jobs=args.jobs, threads=1)
    # Cost after accuracy: timed from a trained model, whose RPN gives the steady-state RoI count.
    trained = Path(args.out) / "runs" / "accuracy-ohem-seed0" / "checkpoint_last.pt"
    args.cost_init = args.cost_init or (str(trained) if trained.exists() else None)
    cost_arms = arms if args.ablations else list(MAIN)
    if not args.skip_cost:
        run_phase(args, "cost", [(arm, 0) for arm in cost_arms], jobs=1, threads=os.cpu_count() or 1)
    summarize(args, arms)


if __name__ == "__main__":
    main()
