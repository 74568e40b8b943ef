"""VOC AP against hand-computed cases and a straightforward devkit-style reference loop."""

import math

import numpy as np
import pytest
import torch

from ohem.evaluation import ImageAnnotations, ImageDetections, average_precision, voc_evaluate


def reference_ap(dets, gts, label, iou_thresh=0.5, use_07=False):
    """Devkit voc_eval, written plainly: global score order, per-detection max-IoU match."""
    records = []
    for img, d in enumerate(dets):
        for box, score, lab in zip(d.boxes.tolist(), d.scores.tolist(), d.labels.tolist()):
            if lab == label:
                records.append((score, img, box))
    records.sort(key=lambda r: -r[0])  # stable: ties keep image order
    gt = {}
    npos = 0
    for img, a in enumerate(gts):
        boxes = [b for b, lab in zip(a.boxes.tolist(), a.labels.tolist()) if lab == label]
        diff = (
            [bool(x) for x, lab in zip(a.difficult.tolist(), a.labels.tolist()) if lab == label]
            if a.difficult is not None
            else [False] * len(boxes)
        )
        gt[img] = {"boxes": boxes, "difficult": diff, "det": [False] * len(boxes)}
        npos += sum(not x for x in diff)
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
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def random_case(seed, num_images=30, num_classes=3):
    g = torch.Generator().manual_seed(seed)
    dets, gts = [], []
    for _ in range(num_images):
        m = int(torch.randint(0, 5, (1,), generator=g))
        xy = torch.rand(m, 2, generator=g) * 80
        gt_boxes = torch.cat([xy, xy + 10 + torch.rand(m, 2, generator=g) * 30], 1)
        gt_labels = torch.randint(1, num_classes + 1, (m,), generator=g)
        difficult = torch.rand(m, generator=g) < 0.15
        n = int(torch.randint(0, 8, (1,), generator=g))
        src = torch.randint(0, max(m, 1), (n,), generator=g)
        near = gt_boxes[src] + torch.randn(n, 4, generator=g) * 4 if m else torch.zeros(n, 4)
        xy = torch.rand(n, 2, generator=g) * 80
        far = torch.cat([xy, xy + 10 + torch.rand(n, 2, generator=g) * 30], 1)
        boxes = torch.where(torch.rand(n, 1, generator=g) < 0.7, near, far)
        boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        labels = gt_labels[src] if m else torch.randint(1, num_classes + 1, (n,), generator=g)
        labels = torch.where(
            torch.rand(n, generator=g) < 0.8, labels, torch.randint(1, num_classes + 1, (n,), generator=g)
        )
        scores = torch.rand(n, generator=g).round(decimals=1)  # ties across images
        dets.append(ImageDetections(boxes, scores, labels))
        gts.append(ImageAnnotations(gt_boxes, gt_labels, difficult))
    return dets, gts


@pytest.mark.parametrize("seed", range(15))
@pytest.mark.parametrize("use_07", [False, True])
def test_matches_reference_on_random_detections(seed, use_07):
    dets, gts = random_case(seed)
    got = voc_evaluate(dets, gts, ["a", "b", "c"], use_07_metric=use_07)
    for label, name in enumerate(["a", "b", "c"], start=1):
        want = reference_ap(dets, gts, label, use_07=use_07)
        if math.isnan(want):
            assert math.isnan(got["AP"][name])
        else:
            assert got["AP"][name] == pytest.approx(want, abs=1e-6)


def test_hand_computed_ap():
    # One class, 2 gt boxes; detections by score: TP, FP, TP -> precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    gts = [ImageAnnotations(torch.tensor([[0.0, 0, 10, 10], [20.0, 20, 30, 30]]), torch.tensor([1, 1]))]
    dets = [
        ImageDetections(
            torch.tensor([[0.0, 0, 10, 10], [50.0, 50, 60, 60], [20.0, 20, 30, 30]]),
            torch.tensor([0.9, 0.8, 0.7]),
            torch.tensor([1, 1, 1]),
        )
    ]
    result = voc_evaluate(dets, gts, ["thing"])
    # Area: recall 0 -> 0.5 at precision 1, 0.5 -> 1 at envelope 2/3.
    assert result["AP"]["thing"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert result["mAP"] == pytest.approx(0.5 + 1 / 3)
    # 11-point: recall >= 0..0.5 -> 1 (6 points), 0.6..1.0 -> 2/3 (5 points).
    assert voc_evaluate(dets, gts, ["thing"], use_07_metric=True)["AP"]["thing"] == pytest.approx((6 + 5 * 2 / 3) / 11)


def test_duplicate_detection_is_false_positive_and_difficult_is_ignored():
    gts = [
        ImageAnnotations(
            torch.tensor([[0.0, 0, 10, 10], [40.0, 40, 50, 50]]), torch.tensor([1, 1]), torch.tensor([False, True])
        )
    ]
    dets = [
        ImageDetections(
            torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10], [40.0, 40, 50, 50]]),
            torch.tensor([0.9, 0.8, 0.95]),
            torch.tensor([1, 1, 1]),
        )
    ]
    # Difficult match is dropped; then TP (recall 1, precision 1), then duplicate FP: AP 1.
    assert voc_evaluate(dets, gts, ["x"])["AP"]["x"] == pytest.approx(1.0)
    dets[0].scores = torch.tensor([0.8, 0.9, 0.95])
    assert voc_evaluate(dets, gts, ["x"])["AP"]["x"] == pytest.approx(1.0)


def test_class_without_ground_truth_is_nan_and_left_out_of_mean():
    gts = [ImageAnnotations(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([1]))]
    dets = [ImageDetections(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([0.5]), torch.tensor([1]))]
    result = voc_evaluate(dets, gts, ["a", "b"])
    assert result["AP"]["a"] == 1.0 and math.isnan(result["AP"]["b"]) and result["mAP"] == 1.0


def test_average_precision_envelope():
    assert average_precision(np.array([0.5, 1.0]), np.array([0.5, 1.0])) == pytest.approx(1.0)
    assert average_precision(np.array([]), np.array([])) == 0.0
