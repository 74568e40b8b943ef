"""What the parts of ohem hand each other: a model's detections on an image (``ImageDetections``),
an image's ground truth (``ImageAnnotations``), and what a dataset must offer (``DetectionDataset``).

Data, inference, evaluation and drawing all import these from here, so none of them imports
another just for a type. This module imports nothing else from ohem.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

Target = dict[str, torch.Tensor]  # boxes (n, 4) x1, y1, x2, y2 pixels; labels (n,) in 1..C; image_id; ...


@dataclass
class ImageDetections:
    boxes: torch.Tensor  # (n, 4)
    scores: torch.Tensor  # (n,)
    labels: torch.Tensor  # (n,) in 1..num_classes


@dataclass
class ImageAnnotations:
    boxes: torch.Tensor  # (m, 4)
    labels: torch.Tensor  # (m,)
    difficult: torch.Tensor | None = None  # (m,) bool


class Images(Protocol):
    """What the loaders read: ``(image (3, H, W) float in [0, 1], target)`` by index. A list of such
    pairs is one (``ohem detect``: image files, no targets)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]: ...


class DetectionDataset(Images, Protocol):
    """What training and evaluation need of a dataset (``SyntheticShapes``, ``VOCDetection``,
    ``COCODetection``, and ``WithProposals`` around any of them)."""

    @property
    def classes(self) -> Sequence[str]: ...  # label i is classes[i - 1]

    @property
    def image_ids(self) -> Sequence[str | int]: ...  # what detection files call the images

    @property
    def category_ids(self) -> Sequence[int]: ...  # what detection files call labels 1..C

    def image_name(self, index: int) -> str: ...  # the key of the image in a proposals file

    def image_size(self, index: int) -> tuple[int, int]: ...  # (H, W), without decoding the image

    def annotations(self, index: int) -> Target: ...  # the target, without reading the pixels

    def coco_ground_truth(self) -> dict[str, Any] | None: ...  # its own COCO file; None: build one


class ProposalDataset(DetectionDataset, Protocol):
    """A dataset whose targets carry ``proposals`` (Fast R-CNN's input: ``WithProposals``)."""

    def proposals(self, index: int, size: tuple[int, int] | None = None) -> torch.Tensor: ...


class DetectionDatasetBase(torch.utils.data.Dataset):
    """The defaults of ``DetectionDataset``'s optional parts, for the datasets to inherit."""

    def annotations(self, index: int) -> Target:
        return self[index][1]

    def coco_ground_truth(self) -> dict[str, Any] | None:
        """None: evaluation builds a COCO ground truth from ``annotations`` (only COCO has its own)."""
        return None
