"""``ohem export`` (the synthetic data as VOC or COCO files) and ``ohem export-model`` (a checkpoint for
torchvision)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ohem.commands.common import check_data_overrides
from ohem.config import ConfigError, apply_overrides, load_config
from ohem.util import check_output_folder, check_writable, refuse_symlink


def cmd_export_model(args: argparse.Namespace) -> int:
    from ohem.export_model import export_model

    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out {out}: is a folder; give the file to write")
    check_writable(out.absolute().parent, "--out's folder")  # before the checkpoint is read
    refuse_symlink(out)
    code = export_model(args.checkpoint, out, args.format)
    what = {
        "torchvision": "the plain torchvision detector with these weights (the sampler only acts in training)",
        "torchscript": "the plain torchvision detector as TorchScript (the sampler only acts in training)",
        "onnx": "the plain torchvision detector as ONNX, one image a call (the sampler only acts in training)",
    }[args.format]
    print(f"wrote {out}; {what}:")
    print(code)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ohem.data import SyntheticShapes, build_dataset
    from ohem.data.export import export_synthetic

    check_output_folder(args.out)
    check_data_overrides(args.overrides)
    cfg = apply_overrides(load_config(), args.overrides)
    dataset = build_dataset(cfg.data, "test", args.split)
    if not isinstance(dataset, SyntheticShapes):
        raise ConfigError(f"data.dataset: export writes the synthetic data, got {cfg.data.dataset}")
    for path in export_synthetic(dataset, args.out, args.layout, force=args.force):
        print(f"wrote {path}")
    if args.layout == "voc":
        classes = ",".join(dataset.classes)
        print(f"read it with: --data voc:{args.out} --split {args.split} --classes {classes}")
    else:
        print(f"read it with: --data coco:{args.out} --split {args.split}")
    return 0
