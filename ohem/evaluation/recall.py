"""How well a proposals file covers a dataset's objects: boxes per image and the fraction of
ground-truth boxes with a proposal at IoU >= 0.5 and >= 0.7 (difficult objects included)."""

from __future__ import annotations

import torch
from torchvision.ops import box_iou

from ohem.data.proposals import ProposalFile
from ohem.structures import DetectionDataset


def proposal_recall(
    dataset: DetectionDataset, proposals: ProposalFile, max_proposals: int | None = None
) -> dict[str, float]:
    """``dataset`` needs ``image_name(i)`` and ``annotations(i)["boxes"]``; every image must be in
    ``proposals``. ``max_proposals`` counts only each image's first boxes, as training does."""
    best, counts = [], []
    for i in range(len(dataset)):
        name = dataset.image_name(i)
        if name not in proposals:
            raise ValueError(f"proposals file {proposals.path}: no boxes for image {name!r}")
        found = proposals.boxes(name)[0][:max_proposals]
        gt = dataset.annotations(i)["boxes"]
        counts.append(len(found))
        if len(gt):
            best.append(box_iou(gt, found).max(dim=1).values if len(found) else torch.zeros(len(gt)))
    if not counts:
        raise ValueError("proposal recall: the dataset has no images")
    best_iou = torch.cat(best) if best else torch.zeros(0)
    return {
        "images": len(counts),
        "objects": len(best_iou),
        "proposals_per_image": sum(counts) / len(counts),
        "min_per_image": min(counts),
        "max_per_image": max(counts),
        "recall@0.5": (best_iou >= 0.5).float().mean().item() if len(best_iou) else float("nan"),
        "recall@0.7": (best_iou >= 0.7).float().mean().item() if len(best_iou) else float("nan"),
    }
