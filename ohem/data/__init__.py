"""Datasets and batching. Every dataset yields ``(image (3, H, W) float in [0, 1], target dict)``
with ``boxes`` (n, 4) ``x1, y1, x2, y2`` pixels, ``labels`` (n,) int64 in 1..C, ``image_id``, and
has ``classes``, ``image_ids`` / ``category_ids`` (what detection files call images and labels),
``image_name(i)``, ``image_size(i)`` -> (H, W) and ``annotations(i)`` (the target, no pixels): the
``DetectionDataset`` protocol of ``ohem.structures``."""

from ohem.data.batching import aspect_groups, batch_indices, grouped_batch_indices
from ohem.data.build import DEFAULT_SPLITS, WithProposals, build_dataset
from ohem.data.coco import COCODetection
from ohem.data.proposals import ProposalFile, compute_proposals
from ohem.data.synthetic import SyntheticShapes
from ohem.data.transforms import hflip
from ohem.data.voc import VOC_CLASSES, VOCDetection

__all__ = [
    "COCODetection",
    "DEFAULT_SPLITS",
    "ProposalFile",
    "SyntheticShapes",
    "VOCDetection",
    "VOC_CLASSES",
    "WithProposals",
    "aspect_groups",
    "batch_indices",
    "build_dataset",
    "compute_proposals",
    "grouped_batch_indices",
    "hflip",
]
