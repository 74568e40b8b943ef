"""Does a change keep every logged number? Trains the demo's sampler arms with the code of a git ref
and with this tree's, then compares every value of their ``log.jsonl`` and ``mining.jsonl``.

    python benchmarks/same_numbers.py --ref b24d28d --out runs/same [--iterations 300]

Each arm is ``ohem train`` of the demo recipe (``configs/demo.yaml`` in trees before the recipes
moved into the package) for ``--iterations`` steps on one thread (so
the sums run in one order), two runs at a time, data in the training process. The ref's code is
checked out with ``git worktree add`` into ``OUT/ref-src``. A run folder that holds a finished run
is reused, so a stopped call resumes. Prints one line per arm: values identical / compared, the
largest relative difference and where the first one is, the final mAP of both.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEURISTIC = ["sampler.method=heuristic", "sampler.fg_fraction=0.25", "sampler.batch_size_per_image=64"]
OHEM = ["sampler.method=ohem", "sampler.batch_size_per_image=64", "sampler.nms_iou=0.7", "sampler.bg_iou_low=0.0"]
ARMS = {
    "heuristic": [*HEURISTIC, "sampler.bg_iou_low=0.1"],
    "tv-default": [*HEURISTIC[:2], "sampler.batch_size_per_image=512", "sampler.bg_iou_low=0.0"],
    "ohem": OHEM,
    "ohem-warm": [*OHEM, "sampler.ohem_start={third}"],
}
TIMES = {"time_data", "time_step", "time_mining"}  # wall-clock fields: never equal twice
RENAMED = {"sampler.ohem_start": "sampler.start"}  # trees where each sampler owns its settings (0.2.0)


def in_keys_of(source: Path, sets: list[str]) -> list[str]:
    """``sets`` in the key names of the tree at ``source``."""
    if not (source / "ohem" / "config_sections.py").exists():
        return sets
    return [RENAMED.get(item.partition("=")[0], item.partition("=")[0]) + "=" + item.partition("=")[2] for item in sets]


def train(source: Path, out: Path, sets: list[str]) -> None:
    if (out / "metrics.json").exists():
        return
    config = "configs/demo.yaml" if (source / "configs" / "demo.yaml").exists() else "demo"  # older trees: a path
    command = [sys.executable, "-m", "ohem", "train", "--config", config, "--out", str(out), "--force"]
    command += [arg for item in sets for arg in ("--set", item)]
    env = {**os.environ, "PYTHONPATH": str(source), "TQDM_DISABLE": "1"}
    with open(f"{out}.log", "w") as log:
        subprocess.run(command, cwd=source, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)


def compare(a: Path, b: Path) -> str:
    """One line: how many logged values are equal, the largest relative difference, the final mAPs."""
    same = total = 0
    worst, first = 0.0, None
    for name in ("log.jsonl", "mining.jsonl"):
        if not (a / name).exists():
            continue
        rows_a, rows_b = ((p / name).read_text().splitlines() for p in (a, b))
        for line_a, line_b in zip(rows_a, rows_b):
            for key, value, other in flat(json.loads(line_a), json.loads(line_b)):
                total += 1
                if value == other:
                    same += 1
                    continue
                first = first or f"{name} {key}"
                if isinstance(value, (int, float)) and isinstance(other, (int, float)):
                    worst = max(worst, abs(value - other) / max(abs(value), 1e-12))
    maps = [json.loads((p / "metrics.json").read_text())["mAP"] for p in (a, b)]
    difference = f"largest relative difference {worst:.1e} (first: {first})"
    return f"{same}/{total} identical, {difference}, mAP {maps[0]:.4f} / {maps[1]:.4f}"


def flat(a: object, b: object, key: str = "") -> list[tuple[str, object, object]]:
    """Leaf values of two JSON records side by side (timings left out)."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = [k for k in dict.fromkeys([*a, *b]) if k not in TIMES]
        return [item for k in keys for item in flat(a.get(k), b.get(k), f"{key}.{k}" if key else k)]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [item for i, (x, y) in enumerate(zip(a, b)) for item in flat(x, y, f"{key}[{i}]")]
    return [(key, a, b)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", required=True, help="the git ref whose code gives the reference numbers")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iterations", type=int, default=300)
    args = parser.parse_args()
    ref_src = args.out / "ref-src"
    if not ref_src.exists():
        args.out.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(ref_src), args.ref], check=True)
    common = [f"solver.iterations={args.iterations}", "train.eval_every=0", "train.num_threads=1", "data.workers=0"]
    common += ["train.vis_images=0", "train.checkpoint_every=0"]
    jobs = []
    for arm, sets in ARMS.items():
        sets = [s.format(third=args.iterations // 3) for s in sets]
        for tree, source in (("ref", ref_src.resolve()), ("this", ROOT)):
            jobs.append((source, (args.out / f"{tree}-{arm}").resolve(), [*common, *in_keys_of(source, sets)]))
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda job: train(*job), jobs))
    for arm in ARMS:
        print(f"{arm:<11}{compare(args.out / f'ref-{arm}', args.out / f'this-{arm}')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
