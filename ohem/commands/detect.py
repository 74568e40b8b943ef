"""``ohem detect``: a checkpoint's detections on image files, drawn, and detections.json."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import typing
from pathlib import Path

import torch
from tqdm import tqdm

from ohem.commands.common import check_outputs_not_inputs, same_file
from ohem.config import Config, ConfigError
from ohem.output_folder import OutputFolder
from ohem.util import (
    check_output_folder,
    output_folder,
    progress_bar,
    refuse_symlink,
    require,
    strict_json,
)

if typing.TYPE_CHECKING:
    from ohem.data.proposals import ProposalFile

# What ``detect --set`` may change: the test-time keys. The rest of the model is fixed by its weights,
# and a key that does nothing at detection (solver.lr) is refused rather than silently ignored.
DETECT_KEYS = (
    "model.box_score_thresh",
    "model.box_nms_thresh",
    "model.box_detections_per_img",
    "model.test_min_size",
    "model.box_voting",
    "model.rpn_pre_nms_top_n_test",
    "model.rpn_post_nms_top_n_test",
    "data.max_proposals",
    "test.images_per_batch",
)
SEARCH_MAX_BOXES = 2000  # selective search's boxes per image when data.max_proposals is null (ohem proposals')

ProposalsFor = typing.Callable[[str, torch.Tensor], torch.Tensor]  # (image path, its pixels) -> (n, 4) boxes


def cmd_detect(args: argparse.Namespace) -> int:
    from ohem.data.common import read_image_size
    from ohem.engine.trainer import resolve_device
    from ohem.inference import TestTime, check_image_size, model_from_checkpoint

    require("matplotlib", "drawing detections")
    if not math.isfinite(args.score_thresh):
        raise ValueError(f"--score-thresh: must be a finite number, got {args.score_thresh}")
    check_detect_overrides(args.overrides)
    device = resolve_device(args.device, what="--device")
    # Every input checked from its header (photos turned upright by their EXIF orientation) before
    # anything is written; the pixels are decoded a batch at a time below.
    sizes = [read_image_size(path, "image", exif_orientation=True) for path in args.images]
    model, cfg, classes = model_from_checkpoint(args.checkpoint, device, args.overrides)
    test_time = TestTime.from_config(cfg.model)
    for path, (height, width) in zip(args.images, sizes):
        check_image_size(model, height, width, test_time, f"image {path}")
    with contextlib.ExitStack() as stack:
        proposals_for = proposal_source(args.proposals, model, cfg, args.images, stack)
        out = check_output_folder(args.out)  # before any work: not a link, not a file, writable
        pngs = output_names(args.images, out)
        inputs = [("--checkpoint", args.checkpoint), ("--proposals", args.proposals)]
        inputs += [("image", path) for path in args.images]
        check_outputs_not_inputs("--out", args.out, [out / "detections.json", *pngs], inputs)
        output_folder(out)
        folder = stack.enter_context(OutputFolder(out))  # every drawing goes into it, or stops (a swapped folder)
        results: list[dict[str, typing.Any]] = []
        batch = cfg.test.images_per_batch
        with progress_bar(len(args.images), "detect", unit="img") as bar:
            for start in range(0, len(args.images), batch):
                # one batch of images decoded at a time: a dozen 7000x7000 photos would take 14 GB at once
                paths, drawings = args.images[start : start + batch], pngs[start : start + batch]
                results += _detect_batch(
                    model, paths, drawings, device, test_time, classes, args.score_thresh, proposals_for, folder
                )
                bar.update(len(paths))
        with folder.open(out / "detections.json") as f:
            f.write(strict_json(results))
    return 0


def check_detect_overrides(overrides: list[str]) -> None:
    """Refuse a ``--set`` key that is not a test-time key (``DETECT_KEYS``), naming the item."""
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key not in DETECT_KEYS:
            raise ConfigError(f"override {item!r}: detect takes only the test-time keys {', '.join(DETECT_KEYS)}")


def proposal_source(
    proposals: str | None, model: typing.Any, cfg: Config, images: list[str], stack: contextlib.ExitStack
) -> ProposalsFor | None:
    """None for a model that makes its own proposals (an RPN); for a Fast R-CNN model, the function giving
    an image's proposals: its boxes in the ``--proposals`` file (every image's entry found before any work),
    else selective search's (as ``ohem proposals --mode fast``); the first ``data.max_proposals`` either way."""
    needs = getattr(model, "needs_proposals", False)
    if not needs:
        if proposals is not None:
            raise ValueError(
                f"--proposals: model.name {cfg.model.name} makes its own proposals (an RPN); "
                "the option is for Fast R-CNN models"
            )
        return None
    limit = cfg.data.max_proposals
    from ohem.data.proposals import ProposalFile, clip_boxes, require_selective_search, selective_search

    if proposals is None:
        require_selective_search()  # a missing OpenCV is one line now, not after the first image
        most = limit or SEARCH_MAX_BOXES
        print(
            f"ohem detect: note: {cfg.model.name} reads proposals: computing them with selective search "
            f"(fast, at most {most} per image); --proposals FILE.npz reads them from a file",
            file=sys.stderr,
        )
        return lambda path, image: torch.from_numpy(selective_search(image, "fast", most))
    data = cfg.data
    file = stack.enter_context(ProposalFile(proposals, data.max_proposal_boxes_per_image, data.max_proposal_boxes))
    keys = {path: proposal_key(file, path) for path in images}

    def read(path: str, image: torch.Tensor) -> torch.Tensor:
        boxes = clip_boxes(file.boxes(keys[path])[0], int(image.shape[-2]), int(image.shape[-1]))[0]
        return boxes if limit is None else boxes[:limit]

    return read


def proposal_key(file: ProposalFile, path: str) -> str:
    """The name ``path``'s boxes have in a proposal file: the path as given, its file name, or its stem
    (``ohem proposals`` names a VOC image by its stem); a one-line error naming the image if none is there."""
    candidates = list(dict.fromkeys([path, Path(path).name, Path(path).stem]))
    for name in candidates:
        if name in file:
            return name
    some = ", ".join(repr(n) for n in file.names()[:3])
    raise ValueError(
        f"--proposals {file.path}: no boxes for image {path} (looked for {', '.join(map(repr, candidates))}; "
        f"the file has {len(file)} images, e.g. {some})"
    )


def _detect_batch(
    model: typing.Any,
    paths: list[str],
    pngs: list[Path],
    device: typing.Any,
    test_time: typing.Any,
    classes: list[str],
    score_thresh: float,
    proposals_for: ProposalsFor | None = None,
    folder: OutputFolder | None = None,
) -> list[dict[str, typing.Any]]:
    """Decode ``paths`` (turned upright by their EXIF orientation), detect, draw each into its PNG (in
    ``folder``, the output folder held open);
    their ``detections.json`` records. The decoded images are dropped when this returns."""
    from ohem.data.common import read_image
    from ohem.inference import predict
    from ohem.visualize import draw_detections

    images = [read_image(path, "image", exif_orientation=True) for path in paths]
    targets = [{} if proposals_for is None else {"proposals": proposals_for(p, im)} for p, im in zip(paths, images)]
    detections = predict(model, list(zip(images, targets)), device, len(images), test_time=test_time)
    records = []
    for path, image, png, det, target in zip(paths, images, pngs, detections, targets):
        draw_detections([image], [det], classes, png, score_thresh, titles=[Path(path).name], folder=folder)
        records.append(_detection_record(path, png, image, det, classes, score_thresh))
        said = detected(det, classes, score_thresh, getattr(model.roi_heads, "score_thresh", None))
        if "proposals" in target and not len(target["proposals"]):  # not the model's doing
            said = "0 detections (no proposal box lies inside the image)"
        tqdm.write(f"{path}: {said} -> {png}")  # above the bar
    return records


def detected(det: typing.Any, classes: list[str], score_thresh: float, model_thresh: float | None = None) -> str:
    """How many boxes an image kept at ``--score-thresh``; with none kept, the best score the model
    gave (so a threshold set too high shows), or that it gave none (above ``model.box_score_thresh``,
    its own cut, where known: ``--set`` may have raised it)."""
    kept = int((det.scores >= score_thresh).sum())
    if kept:
        return f"{kept} detection{'s' if kept != 1 else ''}"
    if not len(det.scores):
        cut = "" if model_thresh is None else f": none scored above model.box_score_thresh {model_thresh:g}"
        return f"0 detections (the model kept no box{cut})"
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
        return candidate.exists() and any(same_file(candidate, p) for p in sources)

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
