"""PASCAL VOC average precision, with the devkit's matching rules.

No maintained library computes VOC AP, so it is written here:

* detections of a class are taken in descending score (ties: input order);
* each is matched to the ground-truth box of its class and image with the highest IoU; it is a
  true positive if that IoU is >= ``iou_thresh`` and that box is not yet matched, else a false
  positive (a second detection of a matched box is a false positive, as in the devkit);
* a detection whose best box is ``difficult`` is neither; difficult boxes do not count as positives;
* AP is the area under the precision envelope (VOC 2010+), or the 11-point mean (VOC 2007).

Boxes are continuous ``x1, y1, x2, y2`` (IoU without the devkit's +1 pixel convention).

It runs as array operations over all images and classes at once (no loop per detection); the
plain devkit-style loop it must agree with is ``ohem/evaluation/voc_reference.py``, and
``benchmarks/bench_voc_eval.py`` times the two.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ohem.structures import ImageAnnotations, ImageDetections


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


def voc_evaluate(
    detections: list[ImageDetections],
    annotations: list[ImageAnnotations],
    class_names: Sequence[str],
    iou_thresh: float = 0.5,
    use_07_metric: bool = False,
) -> dict:
    """``{"mAP": float, "AP": {class: float}}`` over images given in the same order in both lists.

    A class with no (non-difficult) ground truth has AP NaN and is left out of the mean. Labels
    outside ``1..len(class_names)`` are ignored.
    """
    if len(detections) != len(annotations):
        raise ValueError(f"voc_evaluate: {len(detections)} detection lists for {len(annotations)} images")
    num_classes = len(class_names)
    det_boxes, det_scores, det_labels, det_images = _flatten_detections(detections, num_classes)
    gt_boxes, gt_labels, gt_difficult, gt_images = _flatten_annotations(annotations, num_classes)
    best_gt, best_iou = _best_ground_truth(det_boxes, det_labels, det_images, gt_boxes, gt_labels, gt_images)

    matched = best_iou >= iou_thresh
    ignored = np.zeros(det_labels.shape[0], bool)
    ignored[matched] = gt_difficult[best_gt[matched]]
    candidate = matched & ~ignored

    # One sort for all classes: by label, then descending score; lexsort is stable, so ties keep
    # input order (image, then position in the image), as the devkit's per-class sort does.
    order = np.lexsort((-det_scores, det_labels))
    # The devkit's sequential "box already taken" rule, without the loop: a detection only ever
    # looks at its single best box, so of the candidates sharing a box, the first in score order
    # is the true positive and every later one a false positive.
    cand_pos = np.flatnonzero(candidate[order])
    _, first = np.unique(best_gt[order[cand_pos]], return_index=True)
    is_tp = np.zeros(order.shape[0], bool)
    is_tp[cand_pos[first]] = True
    counts = ~ignored[order]
    bounds = np.searchsorted(det_labels[order], np.arange(1, num_classes + 2))
    num_pos = np.bincount(gt_labels[~gt_difficult], minlength=num_classes + 1)

    ap = {}
    for label, name in enumerate(class_names, start=1):
        if num_pos[label] == 0:
            ap[name] = float("nan")
            continue
        span = slice(bounds[label - 1], bounds[label])
        tp_flags = is_tp[span][counts[span]]
        tp = np.cumsum(tp_flags)
        fp = np.cumsum(~tp_flags)
        recall = tp / num_pos[label]
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        ap[name] = average_precision(recall, precision, use_07_metric)
    valid = [v for v in ap.values() if not np.isnan(v)]
    return {"mAP": float(np.mean(valid)) if valid else float("nan"), "AP": ap}


def _flatten_detections(
    detections: list[ImageDetections], num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All images' detections as flat arrays (boxes float64, scores, labels, image index), in
    input order, with labels outside ``1..num_classes`` dropped."""
    boxes = _cat([d.boxes for d in detections], (0, 4)).double().numpy().reshape(-1, 4)
    scores = _cat([d.scores for d in detections], (0,)).double().numpy().reshape(-1)
    labels = _cat([d.labels for d in detections], (0,)).long().numpy().reshape(-1)
    images = np.repeat(np.arange(len(detections)), [d.labels.numel() for d in detections])
    keep = (labels >= 1) & (labels <= num_classes)
    return boxes[keep], scores[keep], labels[keep], images[keep]


def _flatten_annotations(
    annotations: list[ImageAnnotations], num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All images' ground truth as flat arrays (boxes float64, labels, difficult, image index)."""
    boxes = _cat([a.boxes for a in annotations], (0, 4)).double().numpy().reshape(-1, 4)
    labels = _cat([a.labels for a in annotations], (0,)).long().numpy().reshape(-1)
    difficult_rows = _cat(
        [
            a.difficult.bool() if a.difficult is not None else torch.zeros(a.labels.numel(), dtype=torch.bool)
            for a in annotations
        ],
        (0,),
    )
    difficult = difficult_rows.bool().numpy().reshape(-1)
    images = np.repeat(np.arange(len(annotations)), [a.labels.numel() for a in annotations])
    keep = (labels >= 1) & (labels <= num_classes)
    return boxes[keep], labels[keep], difficult[keep], images[keep]


def _cat(tensors: list[torch.Tensor], empty_shape: tuple[int, ...]) -> torch.Tensor:
    """One CPU tensor from per-image tensors (concatenated first: one device copy, not one per image)."""
    if not tensors:
        return torch.zeros(empty_shape)
    return torch.cat([t.detach().reshape(-1, *empty_shape[1:]) for t in tensors]).cpu()


def _best_ground_truth(
    det_boxes: np.ndarray,
    det_labels: np.ndarray,
    det_images: np.ndarray,
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    gt_images: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """For each detection, the index of its max-IoU ground-truth box of the same image and class
    (the first such box on ties, -1 if there is none) and that IoU (-inf if none)."""
    num_dets = det_labels.shape[0]
    best_gt = np.full(num_dets, -1, np.int64)
    best_iou = np.full(num_dets, -np.inf)
    if num_dets == 0 or gt_labels.shape[0] == 0:
        return best_gt, best_iou
    # Only (detection, box) pairs of the same image and class are compared: sort the boxes by that
    # key (stably, so a key's boxes keep input order) and give each detection its key's range.
    stride = int(max(det_labels.max(), gt_labels.max())) + 1
    gt_keys = gt_images * stride + gt_labels
    gt_order = np.argsort(gt_keys, kind="stable")
    sorted_keys = gt_keys[gt_order]
    det_keys = det_images * stride + det_labels
    start = np.searchsorted(sorted_keys, det_keys, "left")
    count = np.searchsorted(sorted_keys, det_keys, "right") - start
    if count.sum() == 0:
        return best_gt, best_iou
    seg_start = np.cumsum(count) - count
    pair_det = np.repeat(np.arange(num_dets), count)
    pair_gt = gt_order[np.repeat(start - seg_start, count) + np.arange(pair_det.shape[0])]
    iou = _elementwise_iou(det_boxes[pair_det], gt_boxes[pair_gt])

    has_gt = count > 0
    seg_max = np.maximum.reduceat(iou, seg_start[has_gt])
    # First pair reaching its segment's max = first box on ties (the devkit keeps the first).
    at_max = np.flatnonzero(iou == np.repeat(seg_max, count[has_gt]))
    _, first = np.unique(pair_det[at_max], return_index=True)
    best_gt[pair_det[at_max[first]]] = pair_gt[at_max[first]]
    best_iou[has_gt] = seg_max
    return best_gt, best_iou


def _elementwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ``a[i]`` with ``b[i]`` (same formula and operation order as torchvision's box_iou)."""
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    # Two zero-area boxes have no defined IoU; count it as no overlap instead of NaN.
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)
