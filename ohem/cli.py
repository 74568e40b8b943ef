"""Command line: ``ohem train | eval | detect | report | proposals | recipe | export | bench``.

Every command and option is in docs/CLI.md, generated from ``build_parser`` (``python -m ohem.cli_doc``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import signal
import sys
import threading
import typing
from pathlib import Path

from tqdm import tqdm

from ohem.config import Config, ConfigError, Metric, Range, apply_overrides, cut, load_config
from ohem.structures import DetectionDataset
from ohem.util import (
    MissingExtra,
    atomic_open,
    check_output_folder,
    check_writable,
    one_line,
    output_folder,
    progress_bar,
    refuse_symlink,
    regular_file,
    require,
    strict_json,
)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with terminate_as_exit():
        return run_command(args)


@contextlib.contextmanager
def terminate_as_exit() -> typing.Iterator[None]:
    """SIGTERM (``kill``, a bench stopping its runs or dying, a job scheduler) ends the command with
    exit code 143 the way an exception would: ``finally`` blocks and exit handlers run (a run folder's
    lock file, the loader's temporary folder are removed). Only in the main thread; restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signal_number: int, frame: object) -> None:
        raise SystemExit(128 + signal_number)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def build_parser() -> argparse.ArgumentParser:
    """The ``ohem`` command's parser (docs/CLI.md is generated from it: ``python -m ohem.cli_doc``)."""
    parser = argparse.ArgumentParser(prog="ohem", description="Train region-based detectors with OHEM.")
    parser.add_argument("--debug", action="store_true", help="on an error, show the traceback, not one line")
    common = argparse.ArgumentParser(add_help=False)  # --debug after the command works too
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser = functools.partial(sub.add_parser, parents=[common])

    _add_run_commands(add_parser)
    _add_data_commands(add_parser)
    _add_bench_command(add_parser)
    return parser


def _add_run_commands(add_parser: typing.Callable[..., argparse.ArgumentParser]) -> None:
    """train, eval, detect, report."""
    p = add_parser("train", help="train a detector, evaluate it, draw detections")
    p.add_argument("--config", required=True, help="YAML config file, or a shipped recipe's name (ohem recipe --list)")
    _add_overrides(p, "dotted override, e.g. --set solver.lr=0.01 (repeatable)")
    p.add_argument("--out", required=True, help="run directory (one run at a time: it is locked while training)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoint_last.pt (same config, bar "
        "the run length, evaluation, logging, threads and device: docs/RELIABILITY.md)",
    )
    p.add_argument("--force", action="store_true", help="OUT holds a run: move it to OUT/previous-N/ and start afresh")
    _add_workers(p)
    p.set_defaults(func=cmd_train)

    p = add_parser("eval", help="score a checkpoint, or a detections file, on a dataset split (AP per class)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="run the model; its detections are also written to OUT/results.json")
    source.add_argument("--detections", help="a COCO-results JSON file (image_id, category_id, bbox x,y,w,h, score)")
    p.add_argument("--out", required=True, help="folder for metrics.json (and results.json with --checkpoint)")
    _add_data_arguments(p, checkpoint=True)
    p.add_argument(
        "--metric",
        default="voc",
        choices=typing.get_args(Metric),
        help="voc (area AP@0.5) | voc07 (11-point) | coco (pycocotools: ohem[coco])",
    )
    _add_overrides(p, "override the data or test config, e.g. --set data.num_test=500 --set test.images_per_batch=8")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    _add_workers(p)
    p.set_defaults(func=cmd_eval)

    p = add_parser("detect", help="draw a checkpoint's detections on image files")
    p.add_argument("--checkpoint", required=True, help="a run's checkpoint_last.pt (or any ohem checkpoint)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (drawn, never overwritten)")
    p.add_argument("--out", required=True, help="folder for one PNG per image and detections.json")
    p.add_argument("--score-thresh", type=float, default=0.5, help="draw and list detections scoring at least this")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    p.set_defaults(func=cmd_detect)

    p = add_parser(
        "export-model", help="a checkpoint's weights for the plain torchvision detector, and how to load them"
    )
    p.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="an ohem checkpoint (checkpoint_best.pt, checkpoint_last.pt)"
    )
    p.add_argument(
        "--format",
        default="torchvision",
        choices=["torchvision"],
        help="torchvision: a state dict for torchvision.models.detection.MODEL_NAME (tensors only)",
    )
    p.add_argument("--out", required=True, help="the file to write (e.g. model.pt)")
    p.set_defaults(func=cmd_export_model)

    p = add_parser("report", help="plots of what OHEM mined in a run, and its hardest RoIs")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder of ohem train (log.jsonl, mining.jsonl)")
    p.add_argument("--out", help="output folder (default: RUN_DIR/report)")
    p.set_defaults(func=cmd_report)


def _add_data_commands(add_parser: typing.Callable[..., argparse.ArgumentParser]) -> None:
    """proposals, export, recipe."""
    p = add_parser(
        "proposals",
        help="compute selective-search proposals for a dataset split, or import Fast R-CNN's .mat ones (.npz)",
    )
    _add_data_arguments(p)
    p.add_argument(
        "--import-mat",
        metavar="FILE.mat",
        help="convert Fast R-CNN's selective-search boxes of the split "
        "(selective_search_data/*.mat) instead of computing them; see docs/PROPOSALS.md",
    )
    p.add_argument(
        "--method",
        choices=["selective-search", "dense"],
        help="(computing) default: selective-search; "
        "dense: boxes around each ground-truth box plus random ones, for benchmarks "
        "(docs/PROPOSALS.md)",
    )
    # No argparse defaults below: a flag is "given" when it is not None, and one given to a mode that
    # does not use it is an error (PROPOSAL_FLAG_MODES), not silently ignored.
    p.add_argument("--copies", type=int, help="(dense) boxes around each ground-truth box (default 20)")
    p.add_argument(
        "--jitter",
        type=float,
        help="(dense) their coordinates' normal noise, as a fraction of the box's width or height (default 0.15)",
    )
    p.add_argument("--mode", choices=["fast", "quality"], help="(computing) default: fast")
    p.add_argument(
        "--max-boxes", type=int, help="(computing) boxes kept per image, in selective search's order; default: 2000"
    )
    p.add_argument("--processes", type=int, help="(computing) selective-search processes; default: one per core")
    p.add_argument("--workers", type=int, dest="processes", help=argparse.SUPPRESS)  # the old name of --processes
    p.add_argument(
        "--min-size",
        type=int,
        help="(selective search, --import-mat) drop boxes narrower or lower than this, px (default 2)",
    )
    p.add_argument(
        "--small-boxes",
        choices=["min-size", "fast-rcnn"],
        help="(--import-mat) fast-rcnn: "
        "py-faster-rcnn's filter_small_boxes, as the authors trained (default); "
        "min-size: width and height >= --min-size",
    )
    p.add_argument("--out", required=True, help="the .npz file; an interrupted run resumes from FILE.parts/")
    _add_overrides(p, "override the data config")
    p.set_defaults(func=cmd_proposals)

    p = add_parser("export", help="write the synthetic dataset in the VOC or COCO layout")
    p.add_argument("--layout", required=True, choices=["voc", "coco"], help="VOC devkit or COCO folder layout")
    p.add_argument("--split", default="train", choices=["train", "test"], help="which synthetic split")
    p.add_argument(
        "--out",
        required=True,
        help="the folder to write (PNG images and annotations); OUT/.ohem-export.json lists what it wrote",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace files of the same names that ohem export did not write (else: an error, nothing written)",
    )
    _add_overrides(p, "synthetic data config, e.g. --set data.num_train=500")
    p.set_defaults(func=cmd_export)

    p = add_parser("recipe", help="a config's settings next to the paper's and the authors' code's (Markdown)")
    p.add_argument(
        "config", metavar="RECIPE", nargs="?", help="a shipped recipe's name, e.g. voc07_vgg16_ohem, or a config file"
    )
    p.add_argument("--list", action="store_true", help="print the shipped recipes' names and what each is, then exit")
    _add_overrides(p, "dotted override applied before the card is made (repeatable)")
    p.add_argument("--check", action="store_true", help="exit 1 if a setting differs from its source without a reason")
    p.set_defaults(func=cmd_recipe)


def _add_bench_command(add_parser: typing.Callable[..., argparse.ArgumentParser]) -> None:
    p = add_parser("bench", help="train sampler arms x seeds on a config: mAP and cost tables, curves, a verdict")
    p.add_argument("--config", help="YAML config every arm trains, or a shipped recipe's name (e.g. bench)")
    p.add_argument("--arms", default="heuristic,tv-default,ohem", help="comma-separated arm names (--list-arms)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (initial weights, data order)")
    p.add_argument(
        "--budget",
        choices=["iterations", "seconds"],
        default="iterations",
        help="iterations: "
        "every arm trains solver.iterations; seconds: --seconds at its measured s/iter, lr schedule "
        "scaled",
    )
    p.add_argument(
        "--seconds",
        type=float,
        help="--budget seconds: training seconds per run (default: solver.iterations at the first arm's s/iter)",
    )
    p.add_argument(
        "--schedules",
        type=float,
        nargs="+",
        default=[1.0],
        metavar="K",
        help="run every arm at these multiples of the run length (solver.iterations, or --seconds), lr steps, "
        "warm-up and evaluations scaled; summary.md adds mAP against schedule length (e.g. 1 2 4; default 1)",
    )
    _add_overrides(p, "override for every arm, under the arm's own (repeatable)")
    p.add_argument("--jobs", type=int, default=1, help="training runs at a time, each on cores/jobs threads")
    p.add_argument(
        "--cost-iters",
        type=int,
        help="timed iterations per repeat in the cost phase (default 20; 0: no cost phase, equal iterations "
        "only, no seconds axis)",
    )
    p.add_argument(
        "--cost-repeats",
        type=int,
        help="timings per arm in the cost phase, taken in rounds across the arms; s/iter is their median (default 3)",
    )
    p.add_argument(
        "--pretrain",
        metavar="CONFIG",
        help="the transfer regime: train CONFIG once into OUT/pretrain and start every run from its weights",
    )
    p.add_argument(
        "--cost-init",
        metavar="CKPT",
        help="cost phase: start from these weights (a trained RPN passes its steady-state number of RoIs)",
    )
    p.add_argument(
        "--error-score",
        type=float,
        help="error phase: sort the test detections scoring at least "
        "this into kinds of error, errors.csv (default 0.5)",
    )
    p.add_argument("--no-errors", action="store_true", help="skip the error phase (one test-split pass per run)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--plan",
        action="store_true",
        help="write OUT/plan.sh (one shell command per training run still to do) and print it; train nothing",
    )
    mode.add_argument(
        "--collect",
        action="store_true",
        help="read the finished runs into the CSVs, summary.md and plots; list the unfinished; train nothing",
    )
    p.add_argument(
        "--executor",
        default="local",
        help="where the training runs execute: local (this machine's processes), submitit[:slurm|:local] "
        "(Slurm jobs of one array; local: submitit's local cluster), ray[:ADDRESS] (Ray tasks; no address: a "
        "local Ray instance). The cost phase always runs here",
    )
    p.add_argument("--partition", help="submitit on Slurm: the partition")
    p.add_argument("--account", help="submitit on Slurm: the account")
    p.add_argument("--time-limit", type=int, metavar="MIN", help="submitit: minutes per run (default 1440)")
    p.add_argument("--gpus-per-run", type=int, help="submitit, ray: GPUs each run asks for (default 0)")
    p.add_argument(
        "--cpus-per-run", type=int, help="submitit, ray: CPUs each run asks for and its threads (default cores/jobs)"
    )
    p.add_argument("--out", help="benchmark folder; rerun into it to resume")
    p.add_argument("--list-arms", action="store_true", help="print the arms and what each sets, then exit")
    p.set_defaults(func=cmd_bench)


def run_command(args: argparse.Namespace) -> int:
    """``args.func(args)``; the project's errors and the expected library errors (bad files, bad
    input) are one line on stderr and exit code 1; ``--debug`` shows their traceback instead. Any
    other exception is a bug: its traceback is shown."""
    import yaml
    from PIL import Image

    from ohem.engine.trainer import NonFiniteLossError  # torch and the models: imported once a command runs

    expected = (
        ConfigError,
        MissingExtra,  # an optional extra not installed: the message names it
        ValueError,
        OSError,
        NonFiniteLossError,
        yaml.YAMLError,
        RecursionError,
        MemoryError,
        Image.DecompressionBombError,
    )
    try:
        _refuse_empty_out(args)
        return args.func(args)
    except expected as e:
        if args.debug:
            raise
        print(f"ohem {args.command}: error: {error_message(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"ohem {args.command}: interrupted", file=sys.stderr)
        return 130


def _refuse_empty_out(args: argparse.Namespace) -> None:
    """``--out ''`` would be the current directory (``Path('')`` is ``.``): refused by every command."""
    out = getattr(args, "out", None)
    if out is not None and not out.strip():
        what = "the .npz file" if args.command == "proposals" else "the folder"
        raise ValueError(f"--out {out!r}: empty; give {what} to write")


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


def _add_overrides(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def _add_workers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        dest="loader_workers",
        help="image-loading processes, "
        "as --set data.workers=N (0: in this process; default: the config's, else one per 4 cores, "
        "at most 4)",
    )


def _workers_override(args: argparse.Namespace) -> list[str]:
    workers = getattr(args, "loader_workers", None)
    return [] if workers is None else [f"data.workers={workers}"]


def cmd_train(args: argparse.Namespace) -> int:
    from ohem.engine.trainer import train
    from ohem.evaluation.score import format_metrics, metrics_note

    cfg = load_config(args.config, args.overrides + _workers_override(args))
    out = Path(args.out)
    metrics = train(cfg, out, resume=args.resume, force=args.force)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return 0
    print(format_metrics(metrics))
    if note := metrics_note(metrics):
        print(f"ohem {args.command}: note: {note}", file=sys.stderr)
    written = [out / name for name in ("metrics.json", "detections.png", "checkpoint_last.pt", "checkpoint_best.pt")]
    print(f"wrote {', '.join(str(path) for path in written if path.exists())}")
    return 0


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
        cfg = _data_config(cfg, args)
        if cfg.data.dataset == "voc" and not cfg.data.classes:  # a VOC tree is read with the model's classes
            cfg.data.classes = list(classes)
        dataset = build_dataset(cfg.data, "test", args.split)
        _check_not_empty(dataset)
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
        dataset = build_dataset(_data_config(load_config(), args).data, "test", args.split)
        _check_not_empty(dataset)
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


def _check_not_empty(dataset: DetectionDataset) -> None:
    if len(dataset) == 0:
        raise ValueError(f"--split {getattr(dataset, 'split', '')}: the split has no images to evaluate on")


def cmd_proposals(args: argparse.Namespace) -> int:
    from ohem.data import build_dataset

    mode = _check_proposal_flags(args)
    if Path(args.out).is_dir():
        raise ValueError(f"--out {args.out}: is a folder; give the .npz file to write")
    check_writable(Path(args.out).absolute().parent, "--out's folder")  # before any work
    data = _data_config(load_config(), args).data
    inputs = (("--import-mat", args.import_mat), ("data.proposals", data.proposals))
    for what, given in ((w, p) for w, p in inputs if p):  # the output would replace the file it is made from
        if _same_file(Path(args.out), Path(given)):
            raise ValueError(f"--out {args.out}: is this command's input ({what} {given}); give another file to write")
    max_boxes = 2000 if args.max_boxes is None else args.max_boxes
    limit = data.max_proposal_boxes_per_image
    if mode != "import-mat" and limit is not None and max_boxes > limit:  # the readers would refuse the file
        raise ValueError(
            f"--max-boxes {max_boxes:,}: more than data.max_proposal_boxes_per_image = {limit:,} boxes per image "
            "allows (the limit proposal files are read with; raise it with --set, or null for no limit)"
        )
    min_size = 2 if args.min_size is None else args.min_size
    if mode == "selective-search":
        from ohem.data.proposals import require_selective_search

        require_selective_search()
    dataset = build_dataset(data, "test", args.split)
    if mode == "dense":
        from ohem.data.dense_proposals import dense_proposals

        copies = 20 if args.copies is None else args.copies
        jitter = 0.15 if args.jitter is None else args.jitter
        path = dense_proposals(
            dataset, args.out, max_boxes, copies, jitter, max_boxes_per_image=limit, max_boxes=data.max_proposal_boxes
        )
        print(f"wrote {path} ({len(dataset)} images, {max_boxes} boxes each)")
        return _print_recall(dataset, path)
    if mode == "selective-search":
        from ohem.data.proposals import compute_proposals

        processes = (os.cpu_count() or 1) if args.processes is None else args.processes
        try:
            path = compute_proposals(dataset, args.out, args.mode or "fast", max_boxes, min_size, workers=processes)
        except RuntimeError as e:
            if not _bad_input_in_worker(e):
                raise
            raise ValueError(one_line(str(e))) from e  # the worker's message names the image and the problem
        print(f"wrote {path} ({len(dataset)} images)")
        return _print_recall(dataset, path)
    from ohem.data.mat_proposals import import_mat_proposals

    done = import_mat_proposals(
        args.import_mat,
        dataset,
        args.out,
        min_size,
        args.small_boxes or "fast-rcnn",
        max_boxes_per_image=data.max_proposal_boxes_per_image,  # the proposal readers' own limits
        max_boxes=data.max_proposal_boxes,
    )
    aligned = "by the file's image names" if done.by_name else "in the split's order (the file names no images)"
    print(
        f"wrote {done.path} ({done.images} images, {done.boxes} boxes, aligned {aligned}; removed "
        f"{done.duplicates} duplicates and {done.small} small boxes; {done.outside} boxes reach outside their image)"
    )
    return _print_recall(dataset, done.path)


# The modes of ohem proposals each flag applies to (a flag given to another mode is an error).
PROPOSAL_FLAG_MODES = {
    "--method": ("selective-search", "dense"),
    "--mode": ("selective-search",),
    "--max-boxes": ("selective-search", "dense"),
    "--processes": ("selective-search",),
    "--copies": ("dense",),
    "--jitter": ("dense",),
    "--min-size": ("selective-search", "import-mat"),
    "--small-boxes": ("import-mat",),
}
_MODE_NAMES = {"selective-search": "--method selective-search", "dense": "--method dense", "import-mat": "--import-mat"}


def _check_proposal_flags(args: argparse.Namespace) -> str:
    """The mode of ``ohem proposals`` (selective-search, dense or import-mat), after refusing any flag
    given that the mode does not use (it would be silently ignored)."""
    mode = "import-mat" if args.import_mat else (args.method or "selective-search")
    for flag, modes in PROPOSAL_FLAG_MODES.items():
        if getattr(args, flag[2:].replace("-", "_")) is not None and mode not in modes:
            used_by = " and ".join(_MODE_NAMES[m] for m in modes)
            raise ValueError(f"{flag} does not apply to {_MODE_NAMES[mode]}; it is for {used_by}")
    return mode


def _print_recall(dataset: DetectionDataset, path: str | Path) -> int:
    from ohem.data.proposals import ProposalFile
    from ohem.evaluation import proposal_recall

    with ProposalFile(path) as boxes:
        r = proposal_recall(dataset, boxes)
    counts = f"{r['proposals_per_image']:.0f} boxes per image (min {r['min_per_image']}, max {r['max_per_image']})"
    recall = f"{r['recall@0.5']:.1%} at IoU 0.5, {r['recall@0.7']:.1%} at 0.7"
    print(f"{counts}; recall of the {r['objects']} objects: {recall}")
    return 0


def _bad_input_in_worker(error: RuntimeError) -> bool:
    """Whether selective search failed on bad input (an image that cannot be read: the data's
    ValueError or OSError, quoted by the worker as ``Type: message``), not on a bug."""
    text = str(error)
    bad_input = (
        "ValueError",
        "OSError",
        "FileNotFoundError",
        "PermissionError",
        "IsADirectoryError",
        "UnidentifiedImageError",
        "DecompressionBombError",
        "MemoryError",
    )
    return text.startswith("selective search failed on image") and any(f": {t}: " in text for t in bad_input)


def cmd_export_model(args: argparse.Namespace) -> int:
    from ohem.export_model import export_torchvision

    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out {out}: is a folder; give the file to write")
    check_writable(out.absolute().parent, "--out's folder")  # before the checkpoint is read
    refuse_symlink(out)
    code = export_torchvision(args.checkpoint, out)
    print(f"wrote {out}; the plain torchvision detector with these weights (the sampler only acts in training):")
    print(code)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ohem.data import SyntheticShapes, build_dataset
    from ohem.data.export import export_synthetic

    check_output_folder(args.out)
    _check_data_overrides(args.overrides)
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


def _add_data_arguments(parser: argparse.ArgumentParser, checkpoint: bool = False) -> None:
    """--data, --split, --classes; ``checkpoint``: the command takes ``--checkpoint``, whose config
    and classes are the defaults (``eval``), else the built-in defaults are (``proposals``)."""
    data = "the checkpoint's own data; with --detections: synthetic" if checkpoint else "synthetic"
    parser.add_argument("--data", help=f"synthetic | voc:ROOT | coco:ROOT (default: {data})")
    split = "the checkpoint's test split, else the dataset's default" if checkpoint else "the dataset's default"
    parser.add_argument("--split", help=f"split name, e.g. test, 2007:test, val2017 (default: {split})")
    classes = "the checkpoint's classes; with --detections: the 20 VOC ones" if checkpoint else "the 20 VOC ones"
    parser.add_argument("--classes", help=f"comma-separated class list of a VOC-layout tree (default: {classes})")


def _data_config(cfg: Config, args: argparse.Namespace) -> Config:
    """``cfg`` with --data, --classes, --workers and the data.* and test.* overrides applied."""
    _check_data_overrides(args.overrides)
    overrides = _workers_override(args)
    if args.data:
        kind, _, root = args.data.partition(":")
        if kind not in ("synthetic", "voc", "coco") or (kind != "synthetic" and not root):
            raise ValueError(f"--data: expected synthetic, voc:ROOT or coco:ROOT, got {args.data!r}")
        overrides += [f"data.dataset={kind}", f"data.root={root}" if root else "data.root=null"]
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


def _check_data_overrides(overrides: list[str]) -> None:
    for item in overrides:
        if not item.startswith(("data.", "test.")):
            raise ConfigError(f"override {item!r}: this command takes only data.key=value and test.key=value overrides")


def cmd_detect(args: argparse.Namespace) -> int:
    from ohem.data.common import read_image_size
    from ohem.engine.trainer import resolve_device
    from ohem.inference import TestTime, check_image_size, model_from_checkpoint

    require("matplotlib", "drawing detections")
    if not math.isfinite(args.score_thresh):
        raise ValueError(f"--score-thresh: must be a finite number, got {args.score_thresh}")
    device = resolve_device(args.device, what="--device")
    # Every input checked from its header (photos turned upright by their EXIF orientation) before
    # anything is written; the pixels are decoded a batch at a time below.
    sizes = [read_image_size(path, "image", exif_orientation=True) for path in args.images]
    model, cfg, classes = model_from_checkpoint(args.checkpoint, device)
    test_time = TestTime.from_config(cfg.model)
    for path, (height, width) in zip(args.images, sizes):
        check_image_size(model, height, width, test_time, f"image {path}")
    out = check_output_folder(args.out)  # before any work: not a link, not a file, writable
    pngs = output_names(args.images, out)
    output_folder(out)
    results: list[dict[str, typing.Any]] = []
    batch = cfg.test.images_per_batch
    with progress_bar(len(args.images), "detect", unit="img") as bar:
        for start in range(0, len(args.images), batch):
            # one batch of images decoded at a time: a dozen 7000x7000 photos would take 14 GB at once
            paths, drawings = args.images[start : start + batch], pngs[start : start + batch]
            results += _detect_batch(model, paths, drawings, device, test_time, classes, args.score_thresh)
            bar.update(len(paths))
    with atomic_open(out / "detections.json") as f:
        f.write(strict_json(results))
    return 0


def _detect_batch(
    model: typing.Any,
    paths: list[str],
    pngs: list[Path],
    device: typing.Any,
    test_time: typing.Any,
    classes: list[str],
    score_thresh: float,
) -> list[dict[str, typing.Any]]:
    """Decode ``paths`` (turned upright by their EXIF orientation), detect, draw each into its PNG;
    their ``detections.json`` records. The decoded images are dropped when this returns."""
    from ohem.data.common import read_image
    from ohem.inference import predict
    from ohem.visualize import draw_detections

    images = [read_image(path, "image", exif_orientation=True) for path in paths]
    detections = predict(model, [(image, {}) for image in images], device, len(images), test_time=test_time)
    records = []
    for path, image, png, det in zip(paths, images, pngs, detections):
        draw_detections([image], [det], classes, png, score_thresh, titles=[Path(path).name])
        records.append(_detection_record(path, png, image, det, classes, score_thresh))
        tqdm.write(f"{path}: {detected(det, classes, score_thresh)} -> {png}")  # above the bar
    return records


def detected(det: typing.Any, classes: list[str], score_thresh: float) -> str:
    """How many boxes an image kept at ``--score-thresh``; with none kept, the best score the model
    gave (so a threshold set too high shows), or that it gave none."""
    kept = int((det.scores >= score_thresh).sum())
    if kept or not len(det.scores):
        return f"{kept} detection{'s' if kept != 1 else ''}" + ("" if kept else " (the model found no box)")
    best = int(det.scores.argmax())
    return (
        f"0 detections (none scored >= --score-thresh {score_thresh:g}; "
        f"best {float(det.scores[best]):.3f}, {classes[int(det.labels[best]) - 1]})"
    )


def _detection_record(
    path: str, png: Path, image: typing.Any, det: typing.Any, classes: list[str], score_thresh: float
) -> dict[str, typing.Any]:
    """One input's entry in ``detections.json``: its drawing, the size its boxes refer to (after
    EXIF orientation), and the detections scoring at least ``score_thresh``."""
    keep = det.scores >= score_thresh
    return {
        "image": str(path),
        "drawing": str(png),
        "width": int(image.shape[-1]),
        "height": int(image.shape[-2]),
        "boxes": det.boxes[keep].tolist(),
        "labels": [classes[i - 1] for i in det.labels[keep].tolist()],
        "scores": det.scores[keep].tolist(),
    }


def output_names(inputs: list[str], out: Path) -> list[Path]:
    """One drawing per input in ``out``: ``STEM.png``, or ``STEM-1.png``, ``STEM-2.png``, ... where that
    name is taken by an earlier input of the call (compared without case) or is one of the inputs
    themselves (same path or same file): no output overwrites an input or another output."""
    sources = [Path(p) for p in inputs]
    real = {os.path.realpath(p) for p in sources}

    def is_an_input(candidate: Path) -> bool:
        if os.path.realpath(candidate) in real:
            return True
        return candidate.exists() and any(_same_file(candidate, p) for p in sources)

    if is_an_input(out / "detections.json"):
        raise ValueError(f"--out {out}: its detections.json would overwrite an input; choose another --out")
    check_replaceable(out / "detections.json")
    taken = {"detections.json"}
    names = []
    for source in sources:
        stem, n = source.stem or "image", 0
        while True:
            candidate = out / (f"{stem}.png" if n == 0 else f"{stem}-{n}.png")
            if candidate.name.lower() not in taken and not is_an_input(candidate):
                break
            n += 1
        check_replaceable(candidate)
        taken.add(candidate.name.lower())
        names.append(candidate)
    return names


def check_replaceable(path: Path) -> None:
    """Raise unless ``path`` is missing or a regular file: checked before any output is written, so
    that a folder (or FIFO, link, ...) in the way fails the command before its work, not after."""
    refuse_symlink(path)
    if os.path.lexists(path) and not path.is_file():
        raise ValueError(f"{path}: exists and is not a regular file; ohem replaces only files (move it away)")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def cmd_report(args: argparse.Namespace) -> int:
    require("matplotlib", "plotting")
    from ohem.report import write_report

    written = write_report(args.run_dir, args.out)
    for path in written:
        print(f"wrote {path}")
    if not any(path.name == "hardest_rois.png" for path in written):
        print("ohem report: note: mining.jsonl records no hardest RoIs; hardest_rois.png not drawn", file=sys.stderr)
    return 0


def cmd_recipe(args: argparse.Namespace) -> int:
    from ohem.recipe_card import card_for_file, render_card
    from ohem.recipes import format_recipes

    if args.list:
        if args.config or args.check or args.overrides:
            raise ValueError("--list takes no recipe, --check or --set")
        print(format_recipes(), end="")
        return 0
    if not args.config:
        raise ValueError("give a recipe name or config file (ohem recipe --list names the shipped ones)")
    card = card_for_file(args.config, args.overrides)
    print(render_card(card), end="")
    if args.check and card.different:
        names = ", ".join(row.setting for row in card.different)
        print(f"ohem recipe: {len(card.different)} setting(s) differ from the source: {names}", file=sys.stderr)
        return 1
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from ohem import bench

    if args.list_arms:
        print(bench.format_arms(), end="")
        return 0
    for seed in args.seeds:  # each becomes a run's train.seed: held to its range before anything runs
        Range(0, 2**64 - 1).check("--seeds", seed)
    if args.pretrain == "":
        raise ValueError("--pretrain '': empty; give the config (or recipe) to pretrain with")
    b = bench.Bench.from_args(args)
    if args.plan:
        return bench.plan_bench(b)
    return bench.collect_bench(b) if args.collect else bench.run_bench(b)
