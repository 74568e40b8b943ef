"""``ohem train`` and ``ohem eval``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ohem.commands.common import (
    check_not_empty,
    check_outputs_not_inputs,
    data_config,
    data_inputs,
    naming_the_file,
    workers_override,
)
from ohem.config import Config, load_config
from ohem.util import atomic_open, check_output_folder, output_folder, regular_file, require, strict_json


def cmd_train(args: argparse.Namespace) -> int:
    from ohem.engine.trainer import train
    from ohem.evaluation.score import format_metrics, metrics_note

    cfg = load_config(args.config, args.overrides + workers_override(args))
    out = Path(args.out)
    check_train_inputs(args, cfg, out)
    metrics = train(cfg, out, resume=args.resume, force=args.force)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return 0
    print(format_metrics(metrics))
    if note := metrics_note(metrics):
        print(f"ohem {args.command}: note: {note}", file=sys.stderr)
    written = [out / name for name in ("metrics.json", "detections.png", "checkpoint_last.pt", "checkpoint_best.pt")]
    print(f"wrote {', '.join(str(path) for path in written if path.exists())}")
    return 0


def check_train_inputs(args: argparse.Namespace, cfg: Config, out: Path) -> None:
    """No file the run writes into ``--out`` (or moves aside with ``--force``) is one it reads. Its own
    ``config.yaml`` may be the config of a ``--resume``: it is rewritten with the run's config."""
    from ohem.engine.run_folder import RUN_FILES

    written = [out / name for name in RUN_FILES if not (args.resume and name == "config.yaml")]
    inputs = [("--config", args.config), ("model.init_weights", cfg.model.init_weights), *data_inputs(cfg.data)]
    check_outputs_not_inputs("--out", args.out, written, inputs)


def cmd_eval(args: argparse.Namespace) -> int:
    from ohem.data import build_dataset
    from ohem.data.loader import loader_workers
    from ohem.engine.trainer import resolve_device
    from ohem.evaluation.detections_file import read_detections, write_detections
    from ohem.evaluation.score import format_metrics, metrics_note, score_detections
    from ohem.inference import TestTime, model_from_checkpoint, predict

    if args.metric == "coco":
        require("pycocotools", "--metric coco")
    out = check_output_folder(args.out)  # before any work: not a link, not a file, writable
    if args.checkpoint:
        device = resolve_device(args.device, what="--device")
        model, cfg, classes = model_from_checkpoint(args.checkpoint, device)
        cfg = data_config(cfg, args)
        if cfg.data.dataset == "voc" and not cfg.data.classes:  # a VOC tree is read with the model's classes
            cfg.data.classes = list(classes)
        dataset = build_dataset(cfg.data, "test", args.split)
        check_not_empty(dataset)
        inputs = [("--checkpoint", args.checkpoint), *data_inputs(cfg.data, dataset)]
        check_outputs_not_inputs("--out", args.out, [out / "results.json", out / "metrics.json"], inputs)
        if list(dataset.classes) != classes:
            raise ValueError(f"dataset classes {list(dataset.classes)} differ from the checkpoint's {classes}")
        test_time = TestTime.from_config(cfg.model)
        workers = loader_workers(cfg.data.workers)
        detections = predict(
            model, dataset, device, cfg.test.images_per_batch, test_time=test_time, workers=workers, progress="eval"
        )
        output_folder(out)
        write_detections(out / "results.json", detections, dataset.image_ids, dataset.category_ids)
    else:
        regular_file(args.detections, "detections file")
        data = data_config(load_config(), args).data
        dataset = build_dataset(data, "test", args.split)
        check_not_empty(dataset)
        inputs = [("--detections", args.detections), *data_inputs(data, dataset)]
        check_outputs_not_inputs("--out", args.out, [out / "metrics.json"], inputs)
        with naming_the_file(f"detections file {args.detections}"):
            detections = read_detections(args.detections, dataset.image_ids, dataset.category_ids)
        output_folder(out)
    metrics = score_detections(dataset, detections, args.metric)
    with atomic_open(out / "metrics.json") as f:
        f.write(strict_json(metrics))
    print(format_metrics(metrics))
    if note := metrics_note(metrics):
        print(f"ohem {args.command}: note: {note}", file=sys.stderr)
    written = [out / "results.json"] if args.checkpoint else []
    print(f"wrote {', '.join(str(p) for p in [*written, out / 'metrics.json'])}")
    return 0
