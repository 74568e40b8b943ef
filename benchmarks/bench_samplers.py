"""Equal-budget benchmark of OHEM against the heuristic baselines on the built-in synthetic data:
``ohem bench`` on ``configs/bench.yaml`` with the arms and seeds of ``docs/BENCHMARKS.md``.

    python benchmarks/bench_samplers.py                # heuristic, tv-default, ohem x 3 seeds
    python benchmarks/bench_samplers.py --ablations    # ohem-no-nms, ohem-cls, all-rois, ohem-1img, ohem-zeroing,
                                                       # heuristic-bg0, beside heuristic and ohem: seed 0
    python benchmarks/bench_samplers.py --quick        # a CI-sized smoke run; its numbers are not the claim

is the same as

    ohem bench --config configs/bench.yaml --arms heuristic,tv-default,ohem --seeds 0 1 2 --jobs 2 --out runs/bench

(arms: ``ohem bench --list-arms``; any other ``ohem bench`` option can follow, e.g.
``--budget seconds``). Both calls share ``--out``: the main arms' seed-0 runs serve the ablations
too. Writes ``OUT/cost.csv``, ``OUT/accuracy.csv``, ``OUT/curves.csv``, ``OUT/summary.md`` (table
with ratios against the heuristic and tv-default arms, and a verdict) and the plots
``map_vs_iteration.png``, ``map_vs_seconds.png``, ``roi_loss_vs_iteration.png``; the runs are in
``OUT/runs/accuracy-ARM-seedN`` as ``benchmarks/analyze_errors.py`` expects.

What changed from the earlier script: the cost phase runs first (``--budget seconds`` needs it),
from random initial weights unless ``--cost-init CKPT`` is given. The step times in
``docs/BENCHMARKS.md`` were measured from the trained OHEM seed-0 weights, after the accuracy runs
(the trained RPN passes more RoIs); for those, delete ``OUT/cost.csv`` and rerun with
``--cost-init runs/bench/runs/accuracy-ohem-seed0/checkpoint_last.pt``. tv-default now gets every
seed, as the other arms (it had one).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ohem.cli import main as ohem  # noqa: E402

MAIN = ["heuristic", "tv-default", "ohem"]
ABLATIONS = ["ohem-no-nms", "ohem-cls", "all-rois", "ohem-1img", "ohem-zeroing", "heuristic-bg0"]
QUICK = [
    "solver.iterations=150", "solver.warmup_iterations=20", "solver.steps=[120]", "data.num_train=100",
    "data.num_test=40", "train.eval_every=75", "train.checkpoint_every=75", "train.roi_loss_images=20",
]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description="ohem bench on configs/bench.yaml with the documented arms; "
                                     "other ohem bench options pass through")  # fmt: skip
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--ablations", action="store_true", help=f"the ablation arms ({', '.join(ABLATIONS)}), seed 0")
    parser.add_argument("--quick", action="store_true", help="tiny budget smoke run")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 for the main arms")
    parser.add_argument("--jobs", type=int, default=2)
    args, rest = parser.parse_known_args()  # the rest goes to ohem bench as it is (--set, --budget ...)
    # The ablations are compared with the heuristic and OHEM on the same seed (done already by the main call).
    arms, seeds = (["heuristic", "ohem", *ABLATIONS], [0]) if args.ablations else (MAIN, list(range(args.seeds)))
    command = ["bench", "--config", str(ROOT / "configs" / "bench.yaml"), "--arms", ",".join(arms),
               "--seeds", *map(str, seeds), "--jobs", str(args.jobs), "--out", args.out]  # fmt: skip
    if args.quick:
        command += ["--cost-iters", "30", *[a for item in QUICK for a in ("--set", item)]]
    return ohem([*command, *rest])


if __name__ == "__main__":
    sys.exit(main())
