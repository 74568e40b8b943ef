"""``ohem proposals``: selective search, dense boxes, or Fast R-CNN's .mat boxes into a proposal file."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ohem.commands.common import check_outputs_not_inputs, data_config, data_inputs
from ohem.config import load_config
from ohem.structures import DetectionDataset
from ohem.util import check_writable, one_line


def cmd_proposals(args: argparse.Namespace) -> int:
    from ohem.data import build_dataset

    mode = _check_proposal_flags(args)
    if Path(args.out).is_dir():
        raise ValueError(f"--out {args.out}: is a folder; give the .npz file to write")
    check_writable(Path(args.out).absolute().parent, "--out's folder")  # before any work
    data = data_config(load_config(), args).data
    inputs = [("--import-mat", args.import_mat), *data_inputs(data)]  # the output would replace what it reads
    check_outputs_not_inputs("--out", args.out, [Path(args.out)], inputs, "file to write")
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
    check_outputs_not_inputs("--out", args.out, [Path(args.out)], data_inputs(data, dataset), "file to write")
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
