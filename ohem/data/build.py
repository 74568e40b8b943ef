"""The dataset a run trains or evaluates on, as its ``data`` config section describes it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ohem.config import DataConfig
from ohem.data.coco import COCODetection
from ohem.data.proposals import DEFAULT_MAX_BOXES, DEFAULT_MAX_BOXES_PER_IMAGE, ProposalFile
from ohem.data.synthetic import SyntheticShapes
from ohem.data.voc import VOCDetection
from ohem.structures import DetectionDataset

DEFAULT_SPLITS = {  # dataset: (train split, test split)
    "synthetic": ("train", "test"),
    "voc": ("2007:trainval", "2007:test"),
    "coco": ("train2017", "val2017"),
}


def build_dataset(cfg: DataConfig, role: str, split: str | None = None) -> DetectionDataset:
    """The dataset for ``role`` "train" (difficult objects and empty images as configured) or
    "test" (everything kept, difficult flagged); ``split`` overrides the configured split name.
    With ``data.proposals`` / ``data.test_proposals`` set, targets carry their ``proposals``.
    A split without images is an error naming its file: nothing to train on or to evaluate."""
    dataset = _images_and_annotations(cfg, role, split)
    if len(dataset) == 0:
        raise ValueError(f"{_source(dataset)}: no images to {'train on' if role == 'train' else 'evaluate on'}")
    proposals = cfg.proposals if role == "train" else cfg.test_proposals
    if proposals:
        return WithProposals(
            dataset,
            proposals,
            cfg.max_proposals,
            allow_empty=role == "test",
            max_boxes_per_image=cfg.max_proposal_boxes_per_image,
            max_boxes=cfg.max_proposal_boxes,
        )
    return dataset


def _source(dataset: DetectionDataset) -> str:
    """The file (or setting) a dataset's image list comes from, for an error message."""
    if isinstance(dataset, COCODetection):
        return f"COCO annotations {dataset.ann_file}"
    if isinstance(dataset, VOCDetection):
        return f"VOC split file {', '.join(map(str, dataset.split_files))}"
    return f"synthetic {getattr(dataset, 'split', '')} split".replace("  ", " ")


def _images_and_annotations(cfg: DataConfig, role: str, split: str | None) -> DetectionDataset:
    """The dataset of ``build_dataset`` before any proposals are attached."""
    if cfg.dataset not in DEFAULT_SPLITS:
        raise ValueError(f"data.dataset: unknown dataset {cfg.dataset!r}; available: {', '.join(DEFAULT_SPLITS)}")
    if role not in ("train", "test"):
        raise ValueError(f"dataset role must be train or test, got {role!r}")
    configured = cfg.train_split if role == "train" else cfg.test_split
    key = "--split" if split else f"data.{role}_split"  # what names the split, for the messages
    split = split or configured or DEFAULT_SPLITS[cfg.dataset][role == "test"]
    if cfg.dataset == "synthetic":
        num = cfg.num_train if split == "train" else cfg.num_test
        return SyntheticShapes(split, num_images=num, image_size=cfg.image_size, seed=cfg.seed, task=cfg.synthetic_task)
    if not cfg.root:
        raise ValueError(f"data.root: the {cfg.dataset} dataset needs its folder (--data {cfg.dataset}:ROOT)")
    training = role == "train"
    if cfg.dataset == "voc":
        return VOCDetection(
            cfg.root,
            split,
            classes=cfg.classes,
            keep_difficult=cfg.use_difficult or not training,
            empty_images=cfg.empty_images if training else "keep",
            invalid_boxes=cfg.invalid_boxes,
            max_image_pixels=cfg.max_image_pixels,
            exif_orientation=cfg.exif_orientation,
        )
    if cfg.classes:
        raise ValueError("data.classes: a COCO file names its own categories; leave data.classes unset")
    check_coco_file(Path(cfg.root), split, key)
    return COCODetection(
        cfg.root,
        split,
        image_dir=cfg.image_dir,
        empty_images=cfg.empty_images if training else "keep",
        invalid_boxes=cfg.invalid_boxes,
        max_image_pixels=cfg.max_image_pixels,
        exif_orientation=cfg.exif_orientation,
    )


def check_coco_file(root: Path, split: str, key: str) -> None:
    """A missing annotation file of split ``split`` (set by ``key``) is an error saying what to set
    ``key`` to, from the files that are in ``root/annotations``: a user's own COCO-format folder
    rarely has the default ``instances_train2017.json``."""
    if split.endswith(".json"):
        ann_file = Path(split) if Path(split).is_absolute() else root / split
    else:
        ann_file = root / "annotations" / f"instances_{split}.json"
    if os.path.lexists(ann_file):
        return
    folder = root / "annotations"
    names = sorted(p.name for p in folder.glob("*.json")) if folder.is_dir() else []
    named = [n for n in names if n.startswith("instances_")] or names
    if named:
        shown = ", ".join(named[:10]) + (f" and {len(named) - 10} more" if len(named) > 10 else "")
        first = named[0]
        value = first[len("instances_") : -len(".json")] if first.startswith("instances_") else f"annotations/{first}"
        found = f"{folder} holds {shown} (e.g. {key}={value})"
    else:
        found = f"{folder} holds no .json file" if folder.is_dir() else f"{root} has no annotations/ folder"
    raise FileNotFoundError(
        f"COCO annotations {ann_file}: no such file; set {key} to a split NAME "
        f"(reads annotations/instances_NAME.json under data.root) or a .json file's path; {found}"
    )


class WithProposals(torch.utils.data.Dataset):
    """A dataset whose targets also carry ``proposals`` (n, 4) read from a proposal file: Fast
    R-CNN's input (a ``ProposalDataset``). The file is checked against the dataset once, when this
    is built; the rest of ``DetectionDataset`` is the wrapped dataset's."""

    def __init__(
        self,
        dataset: DetectionDataset,
        path: str,
        max_proposals: int | None,
        allow_empty: bool,
        max_boxes_per_image: int | None = DEFAULT_MAX_BOXES_PER_IMAGE,
        max_boxes: int | None = DEFAULT_MAX_BOXES,
    ) -> None:
        self.dataset, self.max_proposals = dataset, max_proposals
        self.file = ProposalFile(path, max_boxes_per_image=max_boxes_per_image, max_boxes=max_boxes)
        self.file.check_against(dataset, allow_empty=allow_empty)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, target = self.dataset[index]
        h, w = image.shape[-2:]
        return image, {**target, "proposals": self.proposals(index, (int(h), int(w)))}

    def proposals(self, index: int, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Image ``index``'s proposals (clipped to its (H, W) ``size``, first ``max_proposals``), no pixels read."""
        h, w = size or self.dataset.image_size(index)
        boxes = self.file.proposals_for(self.dataset.image_name(index), int(h), int(w))
        return boxes if self.max_proposals is None else boxes[: self.max_proposals]

    def __getattr__(self, name: str) -> Any:
        """The wrapped dataset's attributes: ``classes``, ``image_name``, ``annotations``, ..."""
        if name == "dataset":  # not set yet (unpickling): avoid recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)
