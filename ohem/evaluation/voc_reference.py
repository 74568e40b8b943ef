"""A plain devkit-style VOC AP (per class, per detection loops), the reference the vectorized
``ohem.evaluation.voc_evaluate`` is checked (``tests/test_voc_eval.py``) and timed
(``benchmarks/bench_voc_eval.py``) against. Kept deliberately simple: it is written from the
devkit's rules, not from the vectorized code. Slow: for checking, not for scoring."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def reference_voc_evaluate(
    dets: Sequence[Any], gts: Sequence[Any], class_names: Sequence[str], iou_thresh: float = 0.5, use_07: bool = False
) -> dict[str, Any]:
    """``{"mAP", "AP": {class: ap}}`` with the devkit's rules; ``dets``/``gts`` are lists of
    ImageDetections/ImageAnnotations (anything with the same attributes)."""
    # Convert to Python lists once, as the devkit reads its text files once.
    det_rows = [(d.boxes.tolist(), d.scores.tolist(), d.labels.tolist()) for d in dets]
    gt_rows = [
        (
            a.boxes.tolist(),
            a.labels.tolist(),
            [bool(x) for x in a.difficult.tolist()] if a.difficult is not None else [False] * len(a.labels),
        )
        for a in gts
    ]
    ap = {}
    for label, name in enumerate(class_names, start=1):
        ap[name] = _class_ap(det_rows, gt_rows, label, iou_thresh, use_07)
    valid = [v for v in ap.values() if not math.isnan(v)]
    return {"mAP": float(np.mean(valid)) if valid else float("nan"), "AP": ap}


def reference_ap(
    dets: Sequence[Any], gts: Sequence[Any], label: int, iou_thresh: float = 0.5, use_07: bool = False
) -> float:
    """AP of one class (see ``reference_voc_evaluate``)."""
    names = [str(k) for k in range(1, label + 1)]
    return reference_voc_evaluate(dets, gts, names, iou_thresh, use_07)["AP"][str(label)]


def _class_ap(det_rows, gt_rows, label, iou_thresh, use_07):
    records = []
    for img, (boxes, scores, labels) in enumerate(det_rows):
        for box, score, lab in zip(boxes, scores, labels):
            if lab == label:
                records.append((score, img, box))
    records.sort(key=lambda r: -r[0])  # stable: ties keep image order, then order within the image
    gt = {}
    npos = 0
    for img, (boxes, labels, difficult) in enumerate(gt_rows):
        cls_boxes = [b for b, lab in zip(boxes, labels) if lab == label]
        cls_diff = [x for x, lab in zip(difficult, labels) if lab == label]
        gt[img] = {"boxes": cls_boxes, "difficult": cls_diff, "det": [False] * len(cls_boxes)}
        npos += sum(not x for x in cls_diff)
    tp, fp = [], []
    for _, img, (x1, y1, x2, y2) in records:
        r = gt[img]
        best, best_j = -1.0, -1
        for j, (gx1, gy1, gx2, gy2) in enumerate(r["boxes"]):
            iw, ih = min(x2, gx2) - max(x1, gx1), min(y2, gy2) - max(y1, gy1)
            inter = max(iw, 0) * max(ih, 0)
            union = (x2 - x1) * (y2 - y1) + (gx2 - gx1) * (gy2 - gy1) - inter
            iou = inter / union
            if iou > best:
                best, best_j = iou, j
        if best >= iou_thresh:
            if r["difficult"][best_j]:
                continue
            if not r["det"][best_j]:
                r["det"][best_j] = True
                tp.append(1)
                fp.append(0)
            else:
                tp.append(0)
                fp.append(1)
        else:
            tp.append(0)
            fp.append(1)
    if npos == 0:
        return float("nan")
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec = tp / npos
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if use_07:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            ap += (np.max(prec[rec >= t]) if np.sum(rec >= t) > 0 else 0) / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))
