"""Datasets and batching. Every dataset yields ``(image (3, H, W) float in [0, 1], target dict)``
with ``boxes`` (n, 4) ``x1, y1, x2, y2`` pixels, ``labels`` (n,) int64 in 1..C, ``image_id``, and
has ``classes``, ``image_ids`` / ``category_ids`` (what detection files call images and labels),
``image_name(i)``, ``image_size(i)`` -> (H, W) and ``annotations(i)`` (the target, no pixels)."""

from __future__ import annotations

import torch

from ohem.config import DataConfig
from ohem.data.coco import COCODetection
from ohem.data.proposals import ProposalFile, compute_proposals
from ohem.data.synthetic import SyntheticShapes
from ohem.data.transforms import aspect_groups, grouped_batch_indices, hflip
from ohem.data.voc import VOC_CLASSES, VOCDetection

DATASETS = ("synthetic", "voc", "coco")
DEFAULT_SPLITS = {
    "synthetic": ("train", "test"),
    "voc": ("2007:trainval", "2007:test"),
    "coco": ("train2017", "val2017"),
}


class WithProposals(torch.utils.data.Dataset):
    """A dataset whose targets also carry ``proposals`` (n, 4) read from a proposal file: Fast
    R-CNN's input. The file is checked against the dataset once, when this is built."""

    def __init__(self, dataset: torch.utils.data.Dataset, path: str, max_proposals: int, allow_empty: bool) -> None:
        self.dataset, self.max_proposals = dataset, max_proposals
        self.file = ProposalFile(path)
        self.check = self.file.check_against(dataset, allow_empty=allow_empty)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, target = self.dataset[index]
        h, w = image.shape[-2:]
        boxes = self.file.proposals_for(self.dataset.image_name(index), int(h), int(w))
        return image, {**target, "proposals": boxes[: self.max_proposals]}

    def __getattr__(self, name: str):  # noqa: ANN204 - classes, image_name, annotations, ... of the dataset
        if name == "dataset":  # not set yet (unpickling): avoid recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


def build_dataset(cfg: DataConfig, role: str, split: str | None = None) -> torch.utils.data.Dataset:
    """The dataset for ``role`` "train" (difficult objects and empty images as configured) or
    "test" (everything kept, difficult flagged); ``split`` overrides the configured split name.
    With ``data.proposals`` / ``data.test_proposals`` set, targets carry their ``proposals``."""
    dataset = _build_dataset(cfg, role, split)
    proposals = cfg.proposals if role == "train" else cfg.test_proposals
    if proposals:
        return WithProposals(dataset, proposals, cfg.max_proposals, allow_empty=role == "test")
    return dataset


def _build_dataset(cfg: DataConfig, role: str, split: str | None) -> torch.utils.data.Dataset:
    if cfg.dataset not in DATASETS:
        raise ValueError(f"data.dataset: unknown dataset {cfg.dataset!r}; available: {', '.join(DATASETS)}")
    if role not in ("train", "test"):
        raise ValueError(f"dataset role must be train or test, got {role!r}")
    configured = cfg.train_split if role == "train" else cfg.test_split
    split = split or configured or DEFAULT_SPLITS[cfg.dataset][role == "test"]
    if cfg.dataset == "synthetic":
        num = cfg.num_train if split == "train" else cfg.num_test
        return SyntheticShapes(split, num_images=num, image_size=cfg.image_size, seed=cfg.seed)
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
        )
    if cfg.classes:
        raise ValueError("data.classes: a COCO file names its own categories; leave data.classes unset")
    return COCODetection(
        cfg.root,
        split,
        image_dir=cfg.image_dir,
        empty_images=cfg.empty_images if training else "keep",
        invalid_boxes=cfg.invalid_boxes,
    )


def batch_indices(iteration: int, dataset_size: int, batch_size: int, seed: int) -> list[int]:
    """Image indices of one iteration's batch: epochs of seeded permutations, last partial batch
    dropped. A pure function of the iteration, so a resumed run sees the same order."""
    per_epoch = dataset_size // batch_size
    if per_epoch == 0:
        raise ValueError(f"dataset of {dataset_size} images is smaller than one batch of {batch_size}")
    epoch, position = divmod(iteration, per_epoch)
    order = torch.randperm(dataset_size, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return order[position * batch_size : (position + 1) * batch_size].tolist()


__all__ = [
    "COCODetection",
    "SyntheticShapes",
    "VOCDetection",
    "ProposalFile",
    "VOC_CLASSES",
    "WithProposals",
    "aspect_groups",
    "batch_indices",
    "build_dataset",
    "compute_proposals",
    "grouped_batch_indices",
    "hflip",
]
