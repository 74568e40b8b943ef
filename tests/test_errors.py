"""ohem.evaluation.errors: each detection in one kind of error, by hand-made boxes."""

import torch

from ohem.evaluation import KINDS, classify_detections


def target(boxes, labels, difficult=None, distractors=None):
    t = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels)}
    if difficult is not None:
        t["difficult"] = torch.tensor(difficult)
    if distractors is not None:
        t["distractor_boxes"] = torch.tensor(distractors, dtype=torch.float32).reshape(-1, 4)
    return t


def classify(dets, t, score=0.5):
    boxes = torch.tensor([d[0] for d in dets], dtype=torch.float32).reshape(-1, 4)
    scores = torch.tensor([d[1] for d in dets])
    labels = torch.tensor([d[2] for d in dets], dtype=torch.int64)
    return classify_detections(boxes, scores, labels, t, score)


def only(**counts):
    return {kind: counts.get(kind.replace(" ", "_").replace("-", "_"), 0) for kind in KINDS}


def test_each_kind_of_error():
    t = target([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [1, 2, 1])
    dets = [
        ([0, 0, 10, 10], 0.9, 1),  # TP (first gt)
        ([0, 0, 10, 9], 0.8, 1),  # duplicate: the same gt, already matched
        ([20, 20, 30, 30], 0.7, 1),  # wrong class: a class-2 box
        ([40, 40, 60, 60], 0.6, 1),  # mislocalized: IoU 0.25 with the third gt
        ([70, 70, 80, 80], 0.55, 2),  # background
        ([40, 40, 50, 50], 0.3, 1),  # below the score: not counted
    ]
    assert classify(dets, t) == only(TP=1, duplicate=1, wrong_class=1, mislocalized=1, background=1, missed=2)


def test_the_higher_score_takes_the_match_whatever_the_order_given():
    t = target([[0, 0, 10, 10]], [1])
    dets = [([0, 0, 10, 9], 0.6, 1), ([0, 0, 10, 10], 0.9, 1)]
    assert classify(dets, t) == only(TP=1, duplicate=1)


def test_difficult_boxes_are_neither_found_nor_missed():
    t = target([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1], difficult=[True, False])
    dets = [([0, 0, 10, 10], 0.9, 1), ([0, 0, 10, 10], 0.8, 1)]  # both on the difficult box: ignored, as VOC
    assert classify(dets, t) == only(difficult=2, missed=1)


def test_look_alikes_only_where_the_data_marks_them():
    dets = [([50, 50, 60, 60], 0.9, 1)]
    marked = target([[0, 0, 10, 10]], [1], distractors=[[50, 50, 60, 61]])
    assert classify(dets, marked) == only(look_alike=1, missed=1)
    assert classify(dets, target([[0, 0, 10, 10]], [1])) == only(background=1, missed=1)


def test_an_image_without_objects_or_detections():
    assert classify([], target([], [])) == only()
    assert classify([([0, 0, 5, 5], 0.9, 3)], target([], [])) == only(background=1)
