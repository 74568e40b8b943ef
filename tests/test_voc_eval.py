"""VOC AP against hand-computed cases and a straightforward devkit-style reference loop
(``ohem/evaluation/voc_reference.py``)."""

import math

import numpy as np
import pytest
import torch

from ohem.evaluation import average_precision, voc_evaluate
from ohem.evaluation.voc_reference import reference_ap, reference_voc_evaluate
from ohem.structures import ImageAnnotations, ImageDetections


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


def hard_case(seed, num_images=40, num_classes=4):
    """Integer boxes (IoU ties and IoU exactly at thresholds), duplicated gt boxes, empty images,
    scores with many ties, a class with detections but no ground truth, out-of-range labels."""
    rng = np.random.default_rng(seed)
    dets, gts = [], []
    for _ in range(num_images):
        m = int(rng.integers(0, 6))
        xy = rng.integers(0, 40, (m, 2))
        gt_boxes = np.concatenate([xy, xy + rng.integers(5, 25, (m, 2))], 1).astype(np.float32)
        dup = rng.random(m) < 0.2
        gt_boxes = np.concatenate([gt_boxes, gt_boxes[dup]])  # identical boxes: first one wins a tie
        gt_labels = rng.integers(1, num_classes, gt_boxes.shape[0])  # class num_classes never has gt
        gt_labels[len(gt_labels) - int(dup.sum()) :] = gt_labels[:m][dup]
        difficult = rng.random(gt_boxes.shape[0]) < 0.2
        n = int(rng.integers(0, 12)) if rng.random() > 0.15 else 0  # some images have no detections
        if gt_boxes.shape[0]:
            src = rng.integers(0, gt_boxes.shape[0], n)
            boxes = gt_boxes[src] + rng.integers(-2, 3, (n, 4))
            labels = np.where(rng.random(n) < 0.8, gt_labels[src], rng.integers(0, num_classes + 2, n))
        else:
            xy = rng.integers(0, 40, (n, 2))
            boxes = np.concatenate([xy, xy + rng.integers(2, 20, (n, 2))], 1)
            labels = rng.integers(1, num_classes + 1, n)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        scores = rng.integers(0, 5, n) / 4  # heavy ties, within and across images
        dets.append(
            ImageDetections(
                torch.tensor(boxes, dtype=torch.float32),
                torch.tensor(scores, dtype=torch.float32),
                torch.tensor(labels),
            )
        )
        gts.append(ImageAnnotations(torch.tensor(gt_boxes), torch.tensor(gt_labels), torch.tensor(difficult)))
    return dets, gts


def assert_same_result(got, want):
    assert got["AP"].keys() == want["AP"].keys()
    for name, value in want["AP"].items():
        if math.isnan(value):
            assert math.isnan(got["AP"][name]), name
        else:
            assert got["AP"][name] == pytest.approx(value, abs=1e-6), name
    if math.isnan(want["mAP"]):
        assert math.isnan(got["mAP"])
    else:
        assert got["mAP"] == pytest.approx(want["mAP"], abs=1e-6)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("use_07", [False, True])
@pytest.mark.parametrize("iou_thresh", [0.5, 0.3, 0.7])
def test_matches_reference_on_tied_and_degenerate_cases(seed, use_07, iou_thresh):
    dets, gts = hard_case(seed)
    names = ["a", "b", "c", "no-gt"]
    got = voc_evaluate(dets, gts, names, iou_thresh=iou_thresh, use_07_metric=use_07)
    assert math.isnan(got["AP"]["no-gt"])
    assert_same_result(got, reference_voc_evaluate(dets, gts, names, iou_thresh=iou_thresh, use_07=use_07))


def test_matches_reference_without_difficult_flags():
    dets, gts = hard_case(3)
    gts = [ImageAnnotations(a.boxes, a.labels) for a in gts]
    names = ["a", "b", "c", "no-gt"]
    assert_same_result(voc_evaluate(dets, gts, names), reference_voc_evaluate(dets, gts, names))


def test_empty_inputs():
    empty_det = ImageDetections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    empty_gt = ImageAnnotations(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    result = voc_evaluate([], [], ["a"])
    assert math.isnan(result["AP"]["a"]) and math.isnan(result["mAP"])
    result = voc_evaluate([empty_det, empty_det], [empty_gt, empty_gt], ["a"])
    assert math.isnan(result["mAP"])
    # Ground truth but no detections at all: AP 0, not NaN.
    gt = ImageAnnotations(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([1]))
    assert voc_evaluate([empty_det, empty_det], [gt, empty_gt], ["a"])["AP"]["a"] == 0.0
    # Detections only in images without ground truth: all false positives.
    det = ImageDetections(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([0.9]), torch.tensor([1]))
    assert voc_evaluate([empty_det, det], [gt, empty_gt], ["a"])["AP"]["a"] == 0.0


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="2 detection lists for 1 images"):
        voc_evaluate([None, None], [None], ["a"])


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
