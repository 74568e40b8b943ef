"""What a detector gets wrong: each detection of an image put in one kind of error, for any dataset.

Detections scoring at least ``score`` are taken in descending score order and each is put in the
first kind that fits (IoU 0.5 as VOC's AP, so that the kinds add up to what AP counts):

- **difficult**: its best gt box of its class (IoU >= 0.5) is flagged ``difficult`` (VOC: neither
  right nor wrong);
- **TP**: its best gt box of its class has IoU >= 0.5 and no earlier detection matched it;
- **look-alike**: IoU >= 0.5 with a distractor (only where the dataset marks them:
  ``target["distractor_boxes"]``, the synthetic data's look-alike shapes);
- **duplicate**: its best gt box of its class (IoU >= 0.5) was matched by an earlier detection;
- **wrong class**: IoU >= 0.5 with a gt box of another class;
- **mislocalized**: IoU in [0.1, 0.5) with a gt box of its class;
- **background**: anything else;

and **missed**: the gt boxes (not difficult) that no detection matched.

``count_errors`` sums the kinds over a data set's images (``ohem bench``'s error phase).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision.ops import box_iou

KINDS = ["TP", "difficult", "look-alike", "duplicate", "wrong class", "mislocalized", "background", "missed"]
MATCH_IOU, NEAR_IOU = 0.5, 0.1


def classify_detections(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, target: dict, score: float = 0.5
) -> dict[str, int]:
    """Counts of each kind in ``KINDS`` for one image's detections against its ``target``."""
    keep = scores >= score
    boxes, labels, scores = boxes[keep], labels[keep], scores[keep]
    gt, gt_labels = target["boxes"], target["labels"]
    difficult = target.get("difficult", torch.zeros(len(gt), dtype=torch.bool))
    distractors = target.get("distractor_boxes", gt.new_zeros((0, 4)))
    gt_iou = box_iou(boxes, gt) if len(gt) else boxes.new_zeros((len(boxes), 0))
    distractor_iou = box_iou(boxes, distractors) if len(distractors) else boxes.new_zeros((len(boxes), 0))
    counts = dict.fromkeys(KINDS, 0)
    taken = torch.zeros(len(gt), dtype=torch.bool)
    for d in torch.argsort(scores, descending=True, stable=True).tolist():
        # As VOC's AP: the best gt box of the detection's class decides, taken or not.
        same_iou = torch.where(gt_labels == labels[d], gt_iou[d], -1.0)
        best = int(same_iou.argmax()) if len(gt) else -1
        if best >= 0 and same_iou[best] >= MATCH_IOU and difficult[best]:
            kind = "difficult"
        elif best >= 0 and same_iou[best] >= MATCH_IOU and not taken[best]:
            taken[best] = True
            kind = "TP"
        elif len(distractors) and distractor_iou[d].max() >= MATCH_IOU:
            kind = "look-alike"
        elif best >= 0 and same_iou[best] >= MATCH_IOU:
            kind = "duplicate"
        elif len(gt) and gt_iou[d].max() >= MATCH_IOU:
            kind = "wrong class"
        elif len(gt) and same_iou.max() >= NEAR_IOU:
            kind = "mislocalized"
        else:
            kind = "background"
        counts[kind] += 1
    counts["missed"] = int((~taken & ~difficult).sum())
    return counts


def count_errors(detections: Sequence[Any], targets: Sequence[dict], score: float = 0.5) -> dict[str, int]:
    """Counts of each kind in ``KINDS`` over all images: ``detections[i]`` (anything with ``boxes``,
    ``scores`` and ``labels``, e.g. ``ImageDetections``) against ``targets[i]``."""
    if len(detections) != len(targets):
        raise ValueError(f"{len(detections)} detection lists for {len(targets)} images")
    totals = dict.fromkeys(KINDS, 0)
    for det, target in zip(detections, targets):
        for kind, n in classify_detections(det.boxes, det.scores, det.labels, target, score).items():
            totals[kind] += n
    return totals
