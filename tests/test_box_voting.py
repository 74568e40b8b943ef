"""+B: weighted box voting on hand-made boxes, and the iterative-regression detect path end to end."""

import pytest
import torch
from torch import nn

from ohem.mining import enable_ohem
from ohem.models import small_faster_rcnn
from ohem.models.box_voting import box_voting, iterative_box_regression_detect
from ohem.models.fast_rcnn import FastRCNN
from ohem.models.vgg import RoIPoolLevel, VGGBoxHead


def boxes(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_kept_box_is_the_score_weighted_mean_of_its_overlapping_pool_boxes():
    kept = boxes([0, 0, 10, 10])
    pool = boxes([0, 0, 10, 10], [2, 2, 12, 12], [1, 1, 11, 11])  # IoU with kept: 1, 64/136 = 0.47, 81/119 = 0.68
    scores = torch.tensor([0.9, 0.3, 0.6])
    # (0.9 * [0, 0, 10, 10] + 0.6 * [1, 1, 11, 11]) / 1.5; the IoU-0.47 box does not vote.
    torch.testing.assert_close(box_voting(kept, pool, scores), boxes([0.4, 0.4, 10.4, 10.4]))
    # At a lower threshold it does: (0.9 * 0 + 0.3 * 2 + 0.6 * 1) / 1.8 = 2/3.
    torch.testing.assert_close(box_voting(kept, pool, scores, iou_thresh=0.4), boxes([2 / 3, 2 / 3, 32 / 3, 32 / 3]))


def test_a_box_without_neighbours_stays_and_boxes_vote_independently():
    kept = boxes([0, 0, 10, 10], [50, 50, 60, 60], [100, 100, 110, 110])
    pool = boxes([0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [52, 50, 62, 60])
    scores = torch.tensor([0.5, 0.5, 0.8, 0.2])
    # [52, 50, 62, 60] has IoU 80/120 = 0.67 with [50, 50, 60, 60]: x1 = (0.8 * 50 + 0.2 * 52) / 1 = 50.4.
    # The third kept box is not in the pool and overlaps nothing: unchanged.
    expected = boxes([0.5, 0.5, 10.5, 10.5], [50.4, 50, 60.4, 60], [100, 100, 110, 110])
    torch.testing.assert_close(box_voting(kept, pool, scores), expected)
    assert box_voting(kept, pool[:0], scores[:0]).equal(kept)


def test_only_boxes_of_the_same_class_vote():
    kept, kept_labels = boxes([0, 0, 10, 10], [0, 0, 10, 10]), torch.tensor([1, 2])
    pool = boxes([0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 11, 11])
    pool_scores, pool_labels = torch.tensor([0.9, 0.8, 0.6]), torch.tensor([1, 2, 2])
    voted = box_voting(kept, pool, pool_scores, 0.5, kept_labels, pool_labels)
    # Class 1 has only itself; class 2: (0.8 * 0 + 0.6 * 1) / 1.4 = 3/7.
    torch.testing.assert_close(voted, boxes([0, 0, 10, 10], [3 / 7, 3 / 7, 10 + 3 / 7, 10 + 3 / 7]))


def tiny_fast_rcnn(**kwargs) -> FastRCNN:
    backbone = nn.Sequential(nn.Conv2d(3, 16, 4, stride=4), nn.ReLU(), nn.Conv2d(16, 32, 4, stride=4), nn.ReLU())
    backbone.out_channels = 32
    return FastRCNN(backbone, RoIPoolLevel(7), VGGBoxHead(32 * 7 * 7, 64, 64), num_classes=4, **kwargs)


def check_detections(out, h, w, num_classes):
    b, s = out["boxes"], out["scores"]
    assert b.shape[0] == s.shape[0] == out["labels"].shape[0] <= 100
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
    assert (b[:, 2:] >= b[:, :2]).all()
    assert torch.equal(s, s.sort(descending=True).values)
    assert ((out["labels"] >= 1) & (out["labels"] <= num_classes)).all()


def test_plus_b_on_fast_rcnn_returns_sorted_boxes_inside_the_original_image():
    torch.manual_seed(0)
    model = tiny_fast_rcnn(min_size=128, max_size=1000, box_score_thresh=0.0).train()
    nn.init.normal_(model.roi_heads.box_predictor.bbox_pred.weight, 0.0, 0.05)  # visible regression
    images = [torch.rand(3, 64, 96), torch.rand(3, 80, 48)]
    proposals = [torch.rand(20, 2) * 40, torch.rand(0, 2)]
    proposals = [torch.cat([p, p + 10 + torch.rand_like(p) * 30], dim=1) for p in proposals]
    outs = iterative_box_regression_detect(model, images, proposals)
    assert model.training  # mode restored
    check_detections(outs[0], 64, 96, 3)
    assert outs[0]["boxes"].shape[0] > 0 and outs[1]["boxes"].shape == (0, 4)
    (nothing,) = iterative_box_regression_detect(model, images[:1], proposals[:1], score_thresh=1.0)
    assert nothing["boxes"].shape == (0, 4) and nothing["scores"].shape == (0,)
    with pytest.raises(ValueError, match="needs proposals"):
        iterative_box_regression_detect(model, images)


def test_plus_b_without_regression_keeps_the_proposals():
    torch.manual_seed(0)
    model = tiny_fast_rcnn(min_size=128, max_size=1000, box_score_thresh=0.0).eval()
    nn.init.zeros_(model.roi_heads.box_predictor.bbox_pred.weight)
    nn.init.zeros_(model.roi_heads.box_predictor.bbox_pred.bias)
    proposals = boxes([4, 4, 40, 40], [50, 10, 90, 60])  # disjoint: nothing but themselves votes
    (out,) = iterative_box_regression_detect(model, [torch.rand(3, 64, 96)], [proposals])
    assert out["boxes"].shape == (6, 4)  # 2 proposals x 3 classes, the pass-2 duplicates suppressed
    assert torch.cdist(out["boxes"], proposals).min(dim=1).values.max() < 1e-3


def test_plus_b_on_torchvision_faster_rcnn_with_ohem_heads():
    torch.manual_seed(0)
    model = enable_ohem(
        small_faster_rcnn(3, min_size=96, max_size=96, rpn_post_nms_top_n_test=30, box_score_thresh=0.0)
    )
    outs = iterative_box_regression_detect(model.eval(), [torch.rand(3, 96, 64)])
    check_detections(outs[0], 96, 64, 3)
    assert outs[0]["boxes"].shape[0] > 0
