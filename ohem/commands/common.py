"""What several commands share: one-line error messages, the data config from --data, --classes and --set,
the --workers override."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import typing
from pathlib import Path

from ohem.config import Config, ConfigError, DataConfig, apply_overrides, cut
from ohem.config_values import value_override
from ohem.structures import DetectionDataset
from ohem.util import one_line


@contextlib.contextmanager
def naming_the_file(what: str) -> typing.Iterator[None]:
    """Library errors that cannot know the file they read (bad UTF-8, JSON nested too deeply) get
    ``what`` (e.g. ``config FILE``) in front of their message."""
    try:
        yield
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{what}: {error_message(e)}") from e


def error_message(e: BaseException) -> str:
    """One line saying what went wrong: ``<file>: <item>: <what>`` where the error knows its file."""
    import yaml

    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        where = cut(f"{e.filename}") + (f" -> {cut(str(e.filename2))}" if e.filename2 is not None else "")
        return f"{where}: {e.strerror}"
    if isinstance(e, json.JSONDecodeError):
        return f"not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})"
    if isinstance(e, UnicodeDecodeError):
        return f"not UTF-8 text: {e.reason} at byte {e.start}"
    if isinstance(e, RecursionError):
        return "input nested too deeply to read (RecursionError)"
    if isinstance(e, MemoryError):
        return f"out of memory{': ' + one_line(str(e)) if str(e) else ''}"
    if isinstance(e, yaml.YAMLError):
        return f"not valid YAML: {one_line(str(e))}"
    return one_line(str(e)) or type(e).__name__


def workers_override(args: argparse.Namespace) -> list[str]:
    workers = getattr(args, "loader_workers", None)
    return [] if workers is None else [f"data.workers={workers}"]


def check_not_empty(dataset: DetectionDataset) -> None:
    if len(dataset) == 0:
        raise ValueError(f"--split {getattr(dataset, 'split', '')}: the split has no images to evaluate on")


def data_config(cfg: Config, args: argparse.Namespace) -> Config:
    """``cfg`` with --data, --classes, --workers and the data.* and test.* overrides applied."""
    check_data_overrides(args.overrides)
    overrides = workers_override(args)
    if args.data:
        kind, _, root = args.data.partition(":")
        if kind not in ("synthetic", "voc", "coco") or (kind != "synthetic" and not root):
            raise ValueError(f"--data: expected synthetic, voc:ROOT or coco:ROOT, got {args.data!r}")
        # typed values: a root such as '/d/my data #2', '2007' or 'yes' is a path, not YAML to parse
        overrides += [value_override("data.dataset", kind), value_override("data.root", root or None)]
        if kind != cfg.data.dataset:  # the checkpoint's split names mean nothing to another dataset
            overrides += [
                "data.train_split=null",
                "data.test_split=null",
                "data.classes=null",
                "data.proposals=null",
                "data.test_proposals=null",
            ]
    cfg = apply_overrides(cfg, overrides + args.overrides)
    if args.classes:
        cfg.data.classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    return cfg


def check_data_overrides(overrides: list[str]) -> None:
    for item in overrides:
        if not item.startswith(("data.", "test.")):
            raise ConfigError(f"override {item!r}: this command takes only data.key=value and test.key=value overrides")


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (both existing)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


Inputs = list[tuple[str, object]]  # (what names it: an option or config key, the path given); None: not given


def data_inputs(data: DataConfig, dataset: object = None) -> Inputs:
    """The files a data config (and the data set built from it) reads: proposals, splits, the COCO
    annotation JSON, the VOC split files."""
    found: Inputs = [(f"data.{key}", getattr(data, key)) for key in ("proposals", "test_proposals")]
    found += [(f"data.{key}", getattr(data, key)) for key in ("train_split", "test_split")]
    if getattr(dataset, "ann_file", None) is not None:
        found.append(("the split's annotations", dataset.ann_file))  # type: ignore[attr-defined]
    found += [("the split file", path) for path in getattr(dataset, "split_files", [])]
    return found


def check_outputs_not_inputs(flag: str, out: object, outputs: list[Path], inputs: Inputs, instead: str = "") -> None:
    """No output of a command may be one of its inputs (written over, moved aside or half-written while it
    is read): one line naming both, before any work. ``out``: what ``flag`` gave; ``outputs``: the files
    the command may write under it (or ``out`` itself)."""
    for path in outputs:
        for what, given in inputs:
            if given is None or given == "" or not same_file(path, Path(str(given))):
                continue
            written = "is" if Path(str(out)) == path else f"writes {path}, which is"
            raise ValueError(
                f"{flag} {out}: {written} this command's input ({what} {given}); give another {instead or flag}"
            )
