"""The paper's setting end to end on the built-in data: Fast R-CNN on selective-search proposals,
heuristic sampler vs OHEM, everything through the CLI and the file loaders.

    python benchmarks/bench_fast_rcnn.py [--out runs/bench_fast_rcnn] [--iterations 3000] [--seeds 0 1 2]

1. ``ohem export`` writes the synthetic train/test splits in the VOC layout (PNG images);
2. ``ohem proposals`` computes selective-search boxes (fast mode) for both splits; their recall of
   the ground truth at IoU 0.5 and 0.7 is printed;
3. ``ohem train`` trains ``fast_rcnn_small`` (the demo model's backbone and heads, no RPN) on the
   proposal files with each sampler and training seed, two runs at once in separate processes, one
   thread each (same data, proposals, schedule and seeds for both arms);
4. ``ohem eval`` scores each checkpoint with the VOC07 11-point and the area metric.

Resumable: finished steps are skipped; ``OUT/results-ITERATIONS.csv`` gets one row per finished
arm and seed.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import torch
from torchvision.ops import box_iou

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ohem.data import VOCDetection  # noqa: E402
from ohem.data.proposals import ProposalFile  # noqa: E402
from ohem.data.synthetic import CLASSES  # noqa: E402

ARMS = {
    "heuristic": ["sampler.method=heuristic", "sampler.fg_fraction=0.25", "sampler.bg_iou_low=0.1"],
    "ohem": ["sampler.method=ohem", "sampler.nms_iou=0.7", "sampler.mining_loss=cls+box"],
}


def ohem(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "ohem", *args], check=True, cwd=ROOT)


def recall(tree: Path, split: str, proposals: Path) -> dict[str, float]:
    ds = VOCDetection(tree, split, classes=CLASSES, keep_difficult=True)
    boxes = ProposalFile(proposals)
    best, counts = [], []
    for i in range(len(ds)):
        gt = ds.annotations(i)["boxes"]
        found = boxes.boxes(ds.image_name(i))[0]
        counts.append(len(found))
        if len(gt):
            best.append(box_iou(gt, found).max(dim=1).values if len(found) else torch.zeros(len(gt)))
    best = torch.cat(best)
    return {
        "proposals_per_image": sum(counts) / len(counts),
        "recall@0.5": (best >= 0.5).float().mean().item(),
        "recall@0.7": (best >= 0.7).float().mean().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/bench_fast_rcnn")
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--num-test", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    out = (ROOT / args.out).resolve()
    tree = out / "voc"
    classes = ",".join(CLASSES)
    for split, num in (("train", args.num_train), ("test", args.num_test)):
        if not (tree / "ImageSets" / "Main" / f"{split}.txt").exists():
            ohem("export", "--layout", "voc", "--split", split, "--out", str(tree), "--set", f"data.num_{split}={num}")
        npz = out / f"ss_{split}.npz"
        if not npz.exists():
            data = ["--data", f"voc:{tree}", "--split", split, "--classes", classes]
            ohem("proposals", *data, "--mode", "fast", "--workers", str(args.workers), "--out", str(npz))
        print(f"selective search on {split}: {recall(tree, split, npz)}", flush=True)

    results = out / f"results-{args.iterations}.csv"
    done = {(r["arm"], int(r["seed"])) for r in csv.DictReader(results.open())} if results.exists() else set()
    common = [
        "model.name=fast_rcnn_small", "data.dataset=voc", f"data.root={tree}", "data.train_split=train",
        "data.test_split=test", f"data.classes=[{classes}]", f"data.proposals={out / 'ss_train.npz'}",
        f"data.test_proposals={out / 'ss_test.npz'}", "data.hflip=true", f"solver.iterations={args.iterations}",
        f"solver.steps=[{args.iterations * 2 // 3}, {args.iterations * 13 // 15}]", "train.num_threads=1",
        f"train.eval_every={args.iterations // 3}", "train.checkpoint_every=250",
    ]  # fmt: skip
    todo = [(arm, seed) for seed in args.seeds for arm in ARMS if (arm, seed) not in done]
    for start in range(0, len(todo), 2):  # two runs at a time: one per core
        running = {}
        for arm, seed in todo[start : start + 2]:
            run = out / f"{arm}-seed{seed}-{args.iterations}"
            sets = [a for o in [*common, *ARMS[arm], f"train.seed={seed}"] for a in ("--set", o)]
            resume = ["--resume"] if (run / "checkpoint_last.pt").exists() else []
            command = [sys.executable, "-m", "ohem", "train", "--config", "configs/demo.yaml", "--out", str(run)]
            log = (run.parent / f"{run.name}.log").open("a")
            process = subprocess.Popen([*command, *sets, *resume], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            running[(arm, seed, run)] = process
        for (arm, seed, run), process in running.items():
            if process.wait() != 0:
                raise SystemExit(f"{arm} seed {seed}: training failed, see {run}.log")
            row = {"arm": arm, "seed": seed}
            for metric in ("voc07", "voc"):
                checkpoint = str(run / "checkpoint_last.pt")
                ohem("eval", "--checkpoint", checkpoint, "--metric", metric, "--out", str(run / metric))
                row[f"mAP_{metric}"] = round(json.loads((run / metric / "metrics.json").read_text())["mAP"] * 100, 2)
            steps = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
            times = [r["time"] for r in steps if "time" in r][10:]
            row["s_per_iter_1_thread"] = round(sum(times) / len(times), 4)
            new = not results.exists()
            with results.open("a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(row))
                if new:
                    writer.writeheader()
                writer.writerow(row)
    print(results.read_text())


if __name__ == "__main__":
    main()
