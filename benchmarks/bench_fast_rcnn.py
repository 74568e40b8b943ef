"""The paper's setting end to end on the built-in data: Fast R-CNN on selective-search proposals,
heuristic sampler vs OHEM, through the CLI and the file loaders.

    python benchmarks/bench_fast_rcnn.py [--out runs/bench_fast_rcnn] [--iterations 3000] [--seeds 0 1 2]
                                         [--arms heuristic,ohem] [any ohem bench option, e.g. --budget seconds]

1. ``ohem export`` writes the synthetic train/test splits in the VOC layout (PNG images);
2. ``ohem proposals`` computes selective-search boxes (fast mode) for both splits; their recall of
   the ground truth at IoU 0.5 and 0.7 is printed;
3. ``ohem bench`` trains ``fast_rcnn_small`` (the demo model's backbone and heads, no RPN) on the
   proposal files for each arm and seed, two runs at a time (``--jobs``), and scores each run with
   the VOC07 11-point metric (the paper's).

Resumable: finished steps are skipped. The benchmark is in ``OUT/bench-ITERATIONS/`` (``accuracy.csv``
with a row per finished arm and seed, ``summary.md``, curves and plots: see ``ohem bench``). What
changed from the earlier script (``OUT/results-ITERATIONS.csv``): the VOC area metric is no longer
computed beside VOC07 (``ohem eval --checkpoint OUT/bench-ITERATIONS/runs/accuracy-ARM-seedN/
checkpoint_last.pt --metric voc`` gives it), and s/iter comes from ``ohem bench``'s cost phase (each
arm alone on every core) instead of the 1-thread training runs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ohem.cli import main as ohem_main  # noqa: E402
from ohem.data import VOCDetection  # noqa: E402
from ohem.data.proposals import ProposalFile  # noqa: E402
from ohem.data.synthetic import CLASSES  # noqa: E402
from ohem.evaluation import proposal_recall  # noqa: E402


def ohem(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "ohem", *args], check=True, cwd=ROOT)


def recall(tree: Path, split: str, proposals: Path) -> dict[str, float]:
    with ProposalFile(proposals) as boxes:
        return proposal_recall(VOCDetection(tree, split, classes=CLASSES, keep_difficult=True), boxes)


def main() -> int:
    parser = argparse.ArgumentParser(description="Fast R-CNN on selective-search proposals of the synthetic "
                                     "data: export, proposals, then ohem bench")  # fmt: skip
    parser.add_argument("--out", default="runs/bench_fast_rcnn")
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", default="heuristic,ohem")
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--num-test", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2, help="selective-search processes")
    parser.add_argument("--jobs", type=int, default=2, help="training runs at a time")
    args, rest = parser.parse_known_args()  # the rest goes to ohem bench as it is
    out = (ROOT / args.out).resolve()
    tree = out / "voc"
    classes = ",".join(CLASSES)
    for split, num in (("train", args.num_train), ("test", args.num_test)):
        if not (tree / "ImageSets" / "Main" / f"{split}.txt").exists():
            ohem("export", "--layout", "voc", "--split", split, "--out", str(tree), "--set", f"data.num_{split}={num}")
        npz = out / f"ss_{split}.npz"
        if not npz.exists():
            data = ["--data", f"voc:{tree}", "--split", split, "--classes", classes]
            ohem("proposals", *data, "--mode", "fast", "--processes", str(args.workers), "--out", str(npz))
        print(f"selective search on {split}: {recall(tree, split, npz)}", flush=True)

    n = args.iterations
    common = [
        "model.name=fast_rcnn_small", "data.dataset=voc", f"data.root={tree}", "data.train_split=train",
        "data.test_split=test", f"data.classes=[{classes}]", f"data.proposals={out / 'ss_train.npz'}",
        f"data.test_proposals={out / 'ss_test.npz'}", "data.hflip=true", f"solver.iterations={n}",
        f"solver.steps=[{n * 2 // 3}, {n * 13 // 15}]", f"train.eval_every={n // 3}", "train.checkpoint_every=250",
        "train.eval_metric=voc07",
    ]  # fmt: skip
    command = ["bench", "--config", str(ROOT / "configs" / "demo.yaml"), "--arms", args.arms, "--seeds",
               *map(str, args.seeds), "--jobs", str(args.jobs), "--out", str(out / f"bench-{n}")]  # fmt: skip
    return ohem_main([*command, *[a for item in common for a in ("--set", item)], *rest])


if __name__ == "__main__":
    sys.exit(main())
