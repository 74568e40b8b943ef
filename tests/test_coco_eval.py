"""coco_evaluate (pycocotools' COCOeval) on cases whose AP is known by hand."""

import copy
import math

import pytest

from ohem.evaluation import coco_evaluate

# COCOeval samples precision at 101 recall points 0, 0.01, ..., 1; a detector that finds one of two
# boxes with precision 1 and nothing else scores 1 at the 51 points r <= 0.5 and 0 at the other 50.
HALF_FOUND = 51 / 101


def make_gt(annotations, num_images=2, categories=("cat", "dog")):
    anns = [
        {"id": i + 1, "image_id": img, "category_id": cat, "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0}
        | extra
        for i, (img, cat, bbox, extra) in enumerate(annotations)
    ]
    return {
        "images": [{"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in range(1, num_images + 1)],
        "annotations": anns,
        "categories": [{"id": k, "name": name} for k, name in enumerate(categories, start=1)],
    }


def det(img, cat, bbox, score=0.9):
    return {"image_id": img, "category_id": cat, "bbox": bbox, "score": score}


BOXES = [
    (1, 1, [10, 10, 50, 40], {}),  # medium (area 2000)
    (1, 2, [100, 100, 200, 150], {}),  # large
    (2, 1, [5, 5, 20, 20], {}),  # small
    (2, 2, [300, 200, 120, 90], {}),  # large
]


def test_perfect_detections_score_one():
    gt = make_gt(BOXES)
    result = coco_evaluate(gt, [det(img, cat, bbox) for img, cat, bbox, _ in BOXES])
    for key in ("mAP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large"):
        assert result[key] == pytest.approx(1.0), key
    assert result["AP"] == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0)}
    summary = result["summary"].splitlines()  # COCOeval's 12-line table: 6 AP, 6 AR rows
    assert len(summary) == 12 and all(line.endswith("] = 1.000") for line in summary)
    assert summary[0] == " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000"


def test_one_of_two_boxes_found():
    gt = make_gt([(1, 1, [0, 0, 10, 10], {}), (1, 1, [50, 50, 10, 10], {})], num_images=1, categories=("cat",))
    result = coco_evaluate(gt, [det(1, 1, [0, 0, 10, 10])])
    assert result["mAP"] == pytest.approx(HALF_FOUND)
    assert result["AP"]["cat"] == pytest.approx(HALF_FOUND)
    assert result["AP_small"] == pytest.approx(HALF_FOUND)
    # No medium or large ground truth: nothing to measure, NaN rather than COCOeval's -1.
    assert math.isnan(result["AP_medium"]) and math.isnan(result["AP_large"])


def test_partial_overlap_counts_only_at_lower_iou_thresholds():
    # IoU 63/100 = 0.63: a true positive at 0.50, 0.55, 0.60 and missed at 0.65 ... 0.95.
    gt = make_gt([(1, 1, [0, 0, 10, 10], {})], num_images=1, categories=("cat",))
    result = coco_evaluate(gt, [det(1, 1, [0, 0, 10, 6.3])])
    assert result["AP50"] == pytest.approx(1.0)
    assert result["AP75"] == pytest.approx(0.0)
    assert result["mAP"] == pytest.approx(0.3)


def test_per_class_ap_and_class_without_ground_truth():
    gt = make_gt(
        [(1, 1, [0, 0, 40, 40], {}), (1, 2, [100, 100, 40, 40], {}), (2, 2, [0, 0, 40, 40], {})],
        categories=("cat", "dog", "bird"),
    )
    results = [det(1, 1, [0, 0, 40, 40]), det(1, 2, [100, 100, 40, 40]), det(1, 3, [200, 200, 30, 30])]
    result = coco_evaluate(gt, results)
    assert result["AP"]["cat"] == pytest.approx(1.0)
    assert result["AP"]["dog"] == pytest.approx(HALF_FOUND)
    assert math.isnan(result["AP"]["bird"])
    assert result["mAP"] == pytest.approx((1.0 + HALF_FOUND) / 2)
    named = coco_evaluate(gt, results, class_names=["a", "b", "c"])
    assert list(named["AP"]) == ["a", "b", "c"] and named["AP"]["b"] == pytest.approx(HALF_FOUND)
    with pytest.raises(ValueError, match="2 class names for 3 categories"):
        coco_evaluate(gt, results, class_names=["a", "b"])


def test_crowd_ground_truth_is_ignored():
    gt = make_gt(
        [(1, 1, [0, 0, 40, 40], {}), (1, 1, [100, 100, 80, 80], {"iscrowd": 1})], num_images=1, categories=("cat",)
    )
    # The higher-scoring detection lies on the crowd region: neither a false positive nor a miss.
    results = [det(1, 1, [100, 100, 80, 80], 0.95), det(1, 1, [0, 0, 40, 40], 0.9)]
    assert coco_evaluate(gt, results)["mAP"] == pytest.approx(1.0)
    # Without the crowd box that detection is a false positive ranked first: precision 1/2 throughout.
    no_crowd = {**gt, "annotations": gt["annotations"][:1]}
    assert coco_evaluate(no_crowd, results)["mAP"] == pytest.approx(0.5)
    # A crowd box is not a positive: finding only the other box is full recall ...
    assert coco_evaluate(gt, results[1:])["mAP"] == pytest.approx(1.0)
    # ... while as an ordinary box it would be one of two missed.
    gt["annotations"][1]["iscrowd"] = 0
    assert coco_evaluate(gt, results[1:])["mAP"] == pytest.approx(HALF_FOUND)


def test_empty_results_score_zero():
    result = coco_evaluate(make_gt(BOXES), [])
    for key in ("mAP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large"):
        assert result[key] == 0.0, key
    assert result["AP"] == {"cat": 0.0, "dog": 0.0}


def test_inputs_are_not_modified_and_missing_area_is_filled():
    gt = make_gt(BOXES)
    for a in gt["annotations"]:
        del a["area"], a["iscrowd"]
    results = [det(img, cat, bbox) for img, cat, bbox, _ in BOXES]
    gt_before, results_before = copy.deepcopy(gt), copy.deepcopy(results)
    assert coco_evaluate(gt, results)["mAP"] == pytest.approx(1.0)
    assert gt == gt_before and results == results_before


def test_unknown_image_or_category_raises():
    gt = make_gt(BOXES)
    with pytest.raises(ValueError, match="entry 1: image_id 7 is not in the ground truth"):
        coco_evaluate(gt, [det(1, 1, [0, 0, 1, 1]), det(7, 1, [0, 0, 1, 1])])
    with pytest.raises(ValueError, match="entry 0: category_id 9 is not in the ground truth"):
        coco_evaluate(gt, [det(1, 9, [0, 0, 1, 1])])
    with pytest.raises(ValueError, match="entry 0: missing 'score'"):
        coco_evaluate(gt, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}])
