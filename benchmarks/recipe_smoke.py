"""A paper recipe end to end on small synthetic data, through the command line; and the recipe cards.

    python benchmarks/recipe_smoke.py            # export, proposals, 50 iterations of voc07_vgg16_ohem, eval
    python benchmarks/recipe_smoke.py --cards    # only rewrite the cards section of docs/RECIPES.md

The run: ``ohem export --layout voc`` writes the synthetic data as a VOC devkit (40 train / 20 test
images of 128 px), ``ohem proposals`` computes selective-search proposals (fast mode) for both
splits, then ``ohem train`` trains the recipe with only what small CPU data needs overridden (the
data, random init instead of ImageNet weights, 128 px, 50 iterations with a schedule that fits them,
CPU, one evaluation at the end) and evaluates it. Everything else (sampler, solver, test settings)
is the recipe's. It checks that the recipe runs, not what it reaches: 50 iterations from random
weights detect little. Work files go to ``--work`` (default runs/recipe_smoke/).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ohem.data.synthetic import SyntheticShapes
from ohem.evaluation.score import format_metrics
from ohem.recipe_card import DOC, recipe_files, write_cards
from ohem.recipes import PAPER_DIR

ROOT = Path(__file__).resolve().parent.parent  # the repository: relative paths and the recipes are under it


def run(args: list[str], env: dict[str, str]) -> float:
    """Run ``ohem ARGS`` (printed first), failing loudly; returns the seconds it took."""
    print(f"$ ohem {shlex.join(args)}", flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ohem", *args], cwd=ROOT, env=env, check=True)
    return time.perf_counter() - start


def train_overrides(work: Path, iterations: int, size: int) -> list[str]:
    """What a small CPU run changes in the recipe; the rest stays the recipe's."""
    classes = ", ".join(SyntheticShapes.classes)
    steps = max(1, iterations * 4 // 5)
    return [
        f"data.root={work / 'VOCdevkit'}",
        "data.train_split=2007:train",
        "data.test_split=2007:test",
        f"data.classes=[{classes}]",
        f"data.proposals={work / 'proposals' / 'train.npz'}",
        f"data.test_proposals={work / 'proposals' / 'test.npz'}",
        "model.backbone_weights=null",
        f"model.min_size={size}",
        f"model.max_size={size}",
        f"solver.iterations={iterations}",
        f"solver.warmup_iterations={max(1, iterations // 10)}",
        f"solver.steps=[{steps}]",
        "train.device=cpu",
        "train.eval_every=0",
        f"train.checkpoint_every={iterations}",
        "train.vis_images=2",
    ]


def smoke(recipe: Path, work: Path, num_train: int, num_test: int, size: int, iterations: int) -> dict:
    """Export, proposals, train + evaluate; returns the run's metrics and the seconds per step."""
    env = dict(os.environ, TQDM_DISABLE="1")
    devkit = work / "VOCdevkit" / "VOC2007"
    data = [f"data.num_train={num_train}", f"data.num_test={num_test}", f"data.image_size={size}"]
    seconds = {}
    for split in ("train", "test"):
        sets = [a for o in data for a in ("--set", o)]
        seconds[f"export {split}"] = run(
            ["export", "--layout", "voc", "--split", split, "--out", str(devkit), *sets], env
        )
    classes = ",".join(SyntheticShapes.classes)
    for split in ("train", "test"):
        out = work / "proposals" / f"{split}.npz"
        seconds[f"proposals {split}"] = run(
            [
                "proposals",
                "--data",
                f"voc:{work / 'VOCdevkit'}",
                "--split",
                f"2007:{split}",
                "--classes",
                classes,
                "--mode",
                "fast",
                "--processes",
                "2",
                "--out",
                str(out),
            ],
            env,
        )
    run_dir = work / "run"
    shutil.rmtree(ROOT / run_dir, ignore_errors=True)  # a fresh run each time (paths are relative to ROOT)
    sets = [a for o in train_overrides(work, iterations, size) for a in ("--set", o)]
    seconds["train + eval"] = run(["train", "--config", str(recipe), "--out", str(run_dir), *sets], env)
    metrics = json.loads((ROOT / run_dir / "metrics.json").read_text())
    return {"metrics": metrics, "seconds": seconds}


def _from_root(path: str) -> Path:
    """``path`` relative to the repository (where the commands run), if it lies inside it."""
    resolved = Path(path).resolve()
    return resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cards", action="store_true", help="only rewrite the cards section of docs/RECIPES.md")
    parser.add_argument("--recipe", default=str(PAPER_DIR / "voc07_vgg16_ohem.yaml"))
    parser.add_argument("--work", default=str(ROOT / "runs" / "recipe_smoke"), help="work folder (data, run)")
    parser.add_argument("--num-train", type=int, default=40)
    parser.add_argument("--num-test", type=int, default=20)
    parser.add_argument("--size", type=int, default=128, help="image side, px")
    parser.add_argument("--iterations", type=int, default=50)
    args = parser.parse_args()
    if args.cards:
        path = write_cards(DOC)
        print(f"wrote the cards of {len(recipe_files())} recipes to {path.relative_to(ROOT)}")
        return 0
    recipe, work = _from_root(args.recipe), _from_root(args.work)
    result = smoke(recipe, work, args.num_train, args.num_test, args.size, args.iterations)
    print(
        f"\n== {recipe.name}: {args.iterations} iterations on {args.num_train} train / {args.num_test} test "
        f"synthetic images of {args.size} px, CPU =="
    )
    print(format_metrics(result["metrics"]))
    print("seconds: " + ", ".join(f"{step} {s:.0f}" for step, s in result["seconds"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
