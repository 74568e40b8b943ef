"""What the trained detectors of a benchmark get wrong, per arm, on their own test split (any dataset).

    python benchmarks/analyze_errors.py [--runs runs/bench/runs] [--score 0.5] [--out FILE.csv]

For every ``accuracy-ARM-seedN`` run of an ``ohem bench`` output (its ``runs/`` folder) that has a
``checkpoint_last.pt``: its detections on the test split of its own config (synthetic, VOC or COCO,
with its test proposals for Fast R-CNN), scoring at least ``--score``, sorted into kinds of error by
``ohem.evaluation.errors`` (TP, difficult, look-alike, duplicate, wrong class, mislocalized,
background, missed; look-alikes only where the data marks distractors, as the synthetic data does).
Counts are per run and averaged over an arm's seeds. Writes ``errors.csv`` beside the runs folder
(or ``--out``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ohem.bench.run import write_csv  # noqa: E402
from ohem.data import build_dataset  # noqa: E402
from ohem.evaluation import KINDS, classify_detections  # noqa: E402
from ohem.inference import model_from_checkpoint, predict  # noqa: E402


def run_errors(run: Path, score: float, device: torch.device) -> dict[str, int]:
    """Counts of each kind over the test split of ``run``'s config, from its last checkpoint."""
    model, cfg, _ = model_from_checkpoint(run / "checkpoint_last.pt", device)
    test_set = build_dataset(cfg.data, "test")
    totals = dict.fromkeys(KINDS, 0)
    for i, det in enumerate(predict(model, test_set, device)):
        counts = classify_detections(det.boxes, det.scores, det.labels, test_set[i][1], score)
        for kind, n in counts.items():
            totals[kind] += n
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/bench/runs", help="an ohem bench output's runs/ folder")
    parser.add_argument("--score", type=float, default=0.5)
    parser.add_argument("--out", help="CSV to write (default: errors.csv beside --runs)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    rows = []
    for run in sorted(Path(args.runs).glob("accuracy-*-seed*")):
        if not (run / "checkpoint_last.pt").exists():
            continue
        totals = run_errors(run, args.score, torch.device(args.device))
        arm, seed = run.name.removeprefix("accuracy-").rsplit("-seed", 1)
        rows.append({"arm": arm, "seed": int(seed), **totals})
        print(f"{run.name}: {totals}", flush=True)
    if not rows:
        sys.exit(f"analyze_errors: no accuracy-ARM-seedN run with a checkpoint_last.pt in {args.runs}")
    out = Path(args.out) if args.out else Path(args.runs).parent / "errors.csv"
    write_csv(out, rows)  # the whole file, atomically
    print(f"\nscore >= {args.score}, test split, mean over seeds; wrote {out}")
    print(f"{'arm':<14}{'runs':>5}" + "".join(f"{k:>14}" for k in KINDS))
    for arm in dict.fromkeys(r["arm"] for r in rows):
        mine = [r for r in rows if r["arm"] == arm]
        print(f"{arm:<14}{len(mine):>5}" + "".join(f"{statistics.mean(r[k] for r in mine):>14.1f}" for k in KINDS))


if __name__ == "__main__":
    main()
