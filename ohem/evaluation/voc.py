"""PASCAL VOC average precision, with the devkit's matching rules.

No maintained library computes VOC AP, so it is written here:

* detections of a class are taken in descending score (ties: input order);
* each is matched to the ground-truth box of its class and image with the highest IoU; it is a
  true positive if that IoU is >= ``iou_thresh`` and that box is not yet matched, else a false
  positive (a second detection of a matched box is a false positive, as in the devkit);
* a detection whose best box is ``difficult`` is neither; difficult boxes do not count as positives;
* AP is the area under the precision envelope (VOC 2010+), or the 11-point mean (VOC 2007).

Boxes are continuous ``x1, y1, x2, y2`` (IoU without the devkit's +1 pixel convention).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_iou


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


def average_precision(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = False) -> float:
    """AP from a recall/precision curve ordered by descending score."""
    if use_07_metric:
        points = [precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in np.linspace(0, 1, 11)]
        return float(np.mean(points))
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    changes = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))


def match_detections(
    detections: ImageDetections, annotations: ImageAnnotations, label: int, iou_thresh: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, is_tp, counts) of one image's detections of ``label``; ``counts`` marks the ones
    that count at all (not matched to a difficult box)."""
    det_mask = detections.labels == label
    scores = detections.scores[det_mask]
    order = torch.sort(scores, descending=True, stable=True).indices
    det_boxes, scores = detections.boxes[det_mask][order], scores[order].numpy()
    gt_mask = annotations.labels == label
    gt_boxes = annotations.boxes[gt_mask]
    difficult = (
        annotations.difficult[gt_mask].numpy().astype(bool)
        if annotations.difficult is not None
        else np.zeros(gt_boxes.shape[0], bool)
    )
    is_tp = np.zeros(scores.shape[0], bool)
    counts = np.ones(scores.shape[0], bool)
    if gt_boxes.shape[0] == 0 or scores.shape[0] == 0:
        return scores, is_tp, counts
    best_iou, best_gt = box_iou(det_boxes.double(), gt_boxes.double()).max(dim=1)
    taken = np.zeros(gt_boxes.shape[0], bool)
    for d, (iou, g) in enumerate(zip(best_iou.tolist(), best_gt.tolist())):
        if iou >= iou_thresh:
            if difficult[g]:
                counts[d] = False
            elif not taken[g]:
                is_tp[d] = taken[g] = True
    return scores, is_tp, counts


def voc_evaluate(
    detections: list[ImageDetections],
    annotations: list[ImageAnnotations],
    class_names: list[str] | tuple[str, ...],
    iou_thresh: float = 0.5,
    use_07_metric: bool = False,
) -> dict:
    """``{"mAP": float, "AP": {class: float}}`` over images given in the same order in both lists.

    A class with no (non-difficult) ground truth has AP NaN and is left out of the mean.
    """
    if len(detections) != len(annotations):
        raise ValueError(f"voc_evaluate: {len(detections)} detection lists for {len(annotations)} images")
    ap = {}
    for label, name in enumerate(class_names, start=1):
        per_image = [match_detections(d, a, label, iou_thresh) for d, a in zip(detections, annotations)]
        num_pos = sum(_num_positives(a, label) for a in annotations)
        scores = np.concatenate([s[c] for s, _, c in per_image]) if per_image else np.zeros(0)
        is_tp = np.concatenate([t[c] for _, t, c in per_image]) if per_image else np.zeros(0, bool)
        if num_pos == 0:
            ap[name] = float("nan")
            continue
        order = np.argsort(-scores, kind="stable")
        tp = np.cumsum(is_tp[order])
        fp = np.cumsum(~is_tp[order])
        recall = tp / num_pos
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        ap[name] = average_precision(recall, precision, use_07_metric)
    valid = [v for v in ap.values() if not np.isnan(v)]
    return {"mAP": float(np.mean(valid)) if valid else float("nan"), "AP": ap}


def _num_positives(annotations: ImageAnnotations, label: int) -> int:
    mask = annotations.labels == label
    if annotations.difficult is not None:
        mask &= ~annotations.difficult.bool()
    return int(mask.sum())
