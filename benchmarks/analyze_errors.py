"""What the trained detectors of the sampler benchmark get wrong, per arm, on the synthetic test split.

    python benchmarks/analyze_errors.py [--runs runs/bench/runs] [--score 0.5]

For every ``accuracy-*`` run: detections scoring at least ``--score`` on the test images, each put
in the first class that fits, in score order per image: **TP** (IoU >= 0.5 with a not yet matched
gt box of its class), **look-alike** (IoU >= 0.5 with a distractor: ellipse, frame, down-triangle,
tee, c-shape), **duplicate** (its gt box already matched), **wrong class** (IoU >= 0.5 with a gt
box of another class), **mislocalized** (IoU in [0.1, 0.5) with a gt box of its class),
**background** (anything else); plus the gt boxes left unmatched (**missed**). Counts are per run
and averaged over an arm's seeds. Writes ``errors.csv`` beside the runs.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

import torch
from torchvision.ops import box_iou

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ohem.data import build_dataset  # noqa: E402
from ohem.inference import model_from_checkpoint, predict  # noqa: E402

KINDS = ["TP", "look-alike", "duplicate", "wrong class", "mislocalized", "background", "missed"]


def classify(det, target, score: float) -> dict[str, int]:  # noqa: ANN001
    counts = dict.fromkeys(KINDS, 0)
    keep = det.scores >= score
    boxes, labels = det.boxes[keep], det.labels[keep]
    order = torch.argsort(det.scores[keep], descending=True)
    gt, gt_labels, distractors = target["boxes"], target["labels"], target["distractor_boxes"]
    gt_iou = box_iou(boxes, gt) if len(gt) else torch.zeros(len(boxes), 0)
    lookalike_iou = box_iou(boxes, distractors) if len(distractors) else torch.zeros(len(boxes), 0)
    taken = torch.zeros(len(gt), dtype=torch.bool)
    for d in order.tolist():
        same = gt_labels == labels[d]
        same_iou = torch.where(same, gt_iou[d], torch.zeros_like(gt_iou[d])) if len(gt) else gt_iou[d]
        best = int(same_iou.argmax()) if len(gt) else -1
        if best >= 0 and same_iou[best] >= 0.5 and not taken[best]:
            taken[best] = True
            kind = "TP"
        elif len(distractors) and lookalike_iou[d].max() >= 0.5:
            kind = "look-alike"
        elif best >= 0 and same_iou[best] >= 0.5:
            kind = "duplicate"
        elif len(gt) and gt_iou[d].max() >= 0.5:
            kind = "wrong class"
        elif best >= 0 and same_iou[best] >= 0.1:
            kind = "mislocalized"
        else:
            kind = "background"
        counts[kind] += 1
    counts["missed"] = int((~taken).sum())
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/bench/runs")
    parser.add_argument("--score", type=float, default=0.5)
    args = parser.parse_args()
    device = torch.device("cpu")
    rows = []
    for run in sorted(Path(args.runs).glob("accuracy-*-seed*")):
        checkpoint = run / "checkpoint_last.pt"
        if not checkpoint.exists():
            continue
        model, cfg, _ = model_from_checkpoint(checkpoint, device)
        test_set = build_dataset(cfg.data, "test")
        detections = predict(model, test_set, device)
        totals = dict.fromkeys(KINDS, 0)
        for i, det in enumerate(detections):
            for kind, n in classify(det, test_set[i][1], args.score).items():
                totals[kind] += n
        arm, seed = run.name.removeprefix("accuracy-").rsplit("-seed", 1)
        rows.append({"arm": arm, "seed": int(seed), **totals})
        print(f"{run.name}: {totals}", flush=True)
    with (Path(args.runs).parent / "errors.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["arm", "seed", *KINDS])
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nscore >= {args.score}, test split, mean over seeds")
    print(f"{'arm':<14}{'runs':>5}" + "".join(f"{k:>14}" for k in KINDS))
    for arm in dict.fromkeys(r["arm"] for r in rows):
        mine = [r for r in rows if r["arm"] == arm]
        print(f"{arm:<14}{len(mine):>5}" + "".join(f"{statistics.mean(r[k] for r in mine):>14.1f}" for k in KINDS))


if __name__ == "__main__":
    main()
