"""Has a checkpoint's box head collapsed? Its RoI features and class scores, measured over the RoIs
of a few test images: a healthy head gives each RoI its own features; a collapsed one gives every
RoI (nearly) the same, so its scores cannot rank objects above background.

    PYTHONPATH=. python benchmarks/head_collapse.py RUN_DIR [RUN_DIR ...] [--images 4]

Prints, per run: the share of the head's output units active on at least one RoI, the mean over
units of their standard deviation across RoIs, and the same for the class logits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ohem.data import build_dataset  # noqa: E402
from ohem.inference import model_from_checkpoint  # noqa: E402
from ohem.models import FastRCNN, backbone_features  # noqa: E402


@torch.no_grad()
def head_spread(run_dir: Path, images: int) -> tuple[float, float, float]:
    """(active unit share, feature std across RoIs, logit std across RoIs) of the run's checkpoint."""
    model, cfg, _ = model_from_checkpoint(run_dir / "checkpoint_last.pt", torch.device("cpu"))
    data = build_dataset(cfg.data, "test")
    pictures, targets = zip(*[data[i] for i in range(min(images, len(data)))])
    image_list, targets, features = backbone_features(model, list(pictures), list(targets))
    if getattr(model, "needs_proposals", False):
        sizes = [tuple(p.shape[-2:]) for p in pictures]
        proposals = FastRCNN.resize_proposals([t["proposals"] for t in targets], sizes, image_list)
    else:
        proposals, _ = model.rpn(image_list, features)
    heads = model.roi_heads
    hidden = heads.box_head(heads.box_roi_pool(features, proposals, image_list.image_sizes))
    logits, _ = heads.box_predictor(hidden)
    active = (hidden > 0).any(dim=0).float().mean().item()
    return active, hidden.std(dim=0).mean().item(), logits.std(dim=0).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--images", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'run':<28} {'active units':>12} {'feature std':>11} {'logit std':>9}")
    for run in args.runs:
        active, feature_std, logit_std = head_spread(run, args.images)
        print(f"{str(run):<28} {active:12.1%} {feature_std:11.4f} {logit_std:9.4f}")


if __name__ == "__main__":
    main()
