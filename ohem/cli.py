"""Command line: ``ohem train``, ``ohem eval``, ``ohem detect``.

ohem train  --config FILE [--set key=value ...] --out DIR [--resume]
ohem eval   --checkpoint CKPT --out DIR [--split test|train] [--set data.key=value ...]
ohem detect --checkpoint CKPT IMAGE [IMAGE ...] --out DIR [--score-thresh 0.5]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ohem import engine
from ohem.config import ConfigError, apply_overrides, load_config
from ohem.data import build_dataset
from ohem.visualize import draw_detections


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ohem", description="Train region-based detectors with OHEM.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a detector, evaluate it, draw detections")
    p.add_argument("--config", required=True, help="YAML config file")
    _add_overrides(p, "dotted override, e.g. --set solver.lr=0.01 (repeatable)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint_last.pt")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint (mAP@0.5 per class)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--data", help="dataset to evaluate on (default: the checkpoint's own; now: synthetic)")
    p.add_argument("--split", default="test", help="split of that dataset (default: test)")
    _add_overrides(p, "override the checkpoint's data config, e.g. --set data.num_test=500")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("detect", help="draw a checkpoint's detections on image files")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out", required=True)
    p.add_argument("--score-thresh", type=float, default=0.5)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("report", help="plots of what OHEM mined in a run, and its hardest RoIs")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", help="output folder (default: RUN_DIR/report)")
    p.set_defaults(func=cmd_report)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError, engine.NonFiniteLossError) as e:
        print(f"ohem {args.command}: error: {e}", file=sys.stderr)
        return 1


def _add_overrides(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    out = Path(args.out)
    metrics = engine.train(cfg, out, resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return 0
    print(engine.format_metrics(metrics))
    model, _, classes = engine.model_from_checkpoint(
        out / "checkpoint_last.pt", engine.resolve_device(cfg.train.device)
    )
    test_set = build_dataset(cfg.data, "test")
    _draw_test_images(
        model, test_set, classes, cfg.train.vis_images, cfg.train.vis_score_thresh, out / "detections.png"
    )
    print(f"wrote {out / 'metrics.json'}, {out / 'detections.png'}, {out / 'checkpoint_last.pt'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    device = engine.resolve_device(args.device)
    model, cfg, classes = engine.model_from_checkpoint(args.checkpoint, device)
    for item in args.overrides:
        if not item.startswith("data."):
            raise ConfigError(f"override {item!r}: eval takes only data.key=value overrides")
    cfg = apply_overrides(cfg, ([f"data.dataset={args.data}"] if args.data else []) + args.overrides)
    dataset = build_dataset(cfg.data, args.split)
    if list(dataset.classes) != classes:
        raise ValueError(f"dataset classes {list(dataset.classes)} differ from the checkpoint's {classes}")
    metrics = engine.evaluate(model, dataset, device, cfg.solver.images_per_batch)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    engine.write_json_atomic(out / "metrics.json", metrics)
    print(engine.format_metrics(metrics))
    print(f"wrote {out / 'metrics.json'}")
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    device = engine.resolve_device(args.device)
    images = [_read_image(path) for path in args.images]  # all read before any output is written
    model, _, classes = engine.model_from_checkpoint(args.checkpoint, device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for path, image in zip(args.images, images):
        det = engine.predict(model, [(image, {})], device, batch_size=1)[0]
        png = out / f"{Path(path).stem}.png"
        draw_detections([image], [det], classes, png, args.score_thresh, titles=[Path(path).name])
        keep = det.scores >= args.score_thresh
        results.append(
            {
                "image": str(path),
                "boxes": det.boxes[keep].tolist(),
                "labels": [classes[i - 1] for i in det.labels[keep].tolist()],
                "scores": det.scores[keep].tolist(),
            }
        )
        print(f"{path}: {int(keep.sum())} detections -> {png}")
    engine.write_json_atomic(out / "detections.json", results)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ohem.report import write_report

    for path in write_report(args.run_dir, args.out):
        print(f"wrote {path}")
    return 0


def _draw_test_images(model, dataset, classes, count, score_thresh, path) -> None:  # noqa: ANN001
    subset = [dataset[i] for i in range(min(count, len(dataset)))]
    device = next(model.parameters()).device
    detections = engine.predict(model, subset, device, batch_size=2)
    draw_detections(
        [image for image, _ in subset],
        detections,
        classes,
        path,
        score_thresh,
        titles=[dataset.image_name(i) for i in range(len(subset))],
        ground_truth=[target["boxes"] for _, target in subset],
    )


def _read_image(path: str) -> torch.Tensor:
    try:
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB"), dtype=np.float32) / 255
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"image {path}: cannot be read as an image ({' '.join(str(e).split())})") from None
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
