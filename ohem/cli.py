"""Command line: ``ohem train | eval | detect | report | proposals | recipe | export | bench``: the parser and
the dispatch; each command's body is in ``ohem/commands/``.

Every command and option is in docs/CLI.md, generated from ``build_parser`` (``python -m ohem.cli_doc``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import signal
import sys
import threading
import typing

from ohem.commands.bench import cmd_bench
from ohem.commands.common import error_message
from ohem.commands.detect import cmd_detect
from ohem.commands.export import cmd_export, cmd_export_model
from ohem.commands.proposals import cmd_proposals
from ohem.commands.report import cmd_recipe, cmd_report
from ohem.commands.train import cmd_eval, cmd_train
from ohem.config import ConfigError, Metric
from ohem.util import MissingExtra


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with terminate_as_exit():
        return run_command(args)


@contextlib.contextmanager
def terminate_as_exit() -> typing.Iterator[None]:
    """SIGTERM (``kill``, a bench stopping its runs or dying, a job scheduler) and SIGHUP end the command
    with exit code 143 (129) the way an exception would: ``finally`` blocks and exit handlers run (a run folder's
    lock file, the loader's temporary folder are removed). Only in the main thread; restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signal_number: int, frame: object) -> None:
        raise SystemExit(128 + signal_number)

    # SIGHUP (the terminal closed, an ssh session dropped) likewise: its default ends the process at once,
    # leaving the loader's pymp-* folder and the lock file behind
    hangups = (signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()
    previous = {number: signal.signal(number, stop) for number in (signal.SIGTERM, *hangups)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


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
    p.add_argument(
        "--proposals",
        metavar="FILE.npz",
        help="a Fast R-CNN model's proposals, from a file ohem proposals wrote (an image's boxes found by its "
        "path, file name or stem); default: selective search on each image (fast mode; ohem[proposals])",
    )
    _add_overrides(
        p,
        "a test-time key, e.g. --set model.box_score_thresh=0.3 (repeatable): model.box_score_thresh, "
        "box_nms_thresh, box_detections_per_img, test_min_size, box_voting, rpn_pre_nms_top_n_test, "
        "rpn_post_nms_top_n_test; data.max_proposals; test.images_per_batch",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    p.set_defaults(func=cmd_detect)

    p = add_parser(
        "export-model",
        help="a checkpoint as the plain torchvision detector (weights, TorchScript or ONNX), and how to run it",
    )
    p.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="an ohem checkpoint (checkpoint_best.pt, checkpoint_last.pt)"
    )
    p.add_argument(
        "--format",
        default="torchvision",
        choices=["torchvision", "torchscript", "onnx"],
        help="torchvision: a state dict for torchvision.models.detection.MODEL_NAME (tensors only); "
        "torchscript: the detector for torch.jit.load; onnx: one image in, boxes, labels, scores out "
        "(Faster R-CNN models; ohem[export])",
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
    p.add_argument(
        "--arms",
        default="heuristic,tv-default,ohem",
        help="comma-separated arm names (--list-arms) or YAML files of your own (config fragments: the sampler)",
    )
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
    _add_executor_options(p)
    p.add_argument("--out", help="benchmark folder; rerun into it to resume")
    p.add_argument("--list-arms", action="store_true", help="print the arms and what each sets, then exit")
    p.set_defaults(func=cmd_bench)


def _add_executor_options(p: argparse.ArgumentParser) -> None:
    """``ohem bench``'s options of where its training runs execute."""
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


def _add_data_arguments(parser: argparse.ArgumentParser, checkpoint: bool = False) -> None:
    """--data, --split, --classes; ``checkpoint``: the command takes ``--checkpoint``, whose config
    and classes are the defaults (``eval``), else the built-in defaults are (``proposals``)."""
    data = "the checkpoint's own data; with --detections: synthetic" if checkpoint else "synthetic"
    parser.add_argument("--data", help=f"synthetic | voc:ROOT | coco:ROOT (default: {data})")
    split = "the checkpoint's test split, else the dataset's default" if checkpoint else "the dataset's default"
    parser.add_argument("--split", help=f"split name, e.g. test, 2007:test, val2017 (default: {split})")
    classes = "the checkpoint's classes; with --detections: the 20 VOC ones" if checkpoint else "the 20 VOC ones"
    parser.add_argument("--classes", help=f"comma-separated class list of a VOC-layout tree (default: {classes})")
