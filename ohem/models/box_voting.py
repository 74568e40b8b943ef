"""+B: iterative box regression with weighted box voting at test time (docs/PAPER.md; after Gidaris &
Komodakis, ICCV 2015, as used by Shrivastava et al.).

Pass 1 scores the proposals and regresses them per class. Pass 2 re-scores each regressed box with
its class and regresses it again. Both sets of (box, class, score) are pooled, NMS runs per class,
and each kept box is replaced by the score-weighted mean of the pooled boxes of its class that
overlap it by IoU >= ``vote_iou`` (itself included); its score stays its own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import batched_nms, box_iou

from ohem.models.fast_rcnn import FastRCNN, backbone_features
from ohem.models.multiscale import ImagePyramid, big_enough, candidates, classify_and_regress


def box_voting(
    kept_boxes: torch.Tensor,
    pool_boxes: torch.Tensor,
    pool_scores: torch.Tensor,
    iou_thresh: float = 0.5,
    kept_labels: torch.Tensor | None = None,
    pool_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each kept box (K, 4) replaced by the ``pool_scores``-weighted mean of the pool boxes (P, 4)
    with IoU >= ``iou_thresh`` to it and, when labels are given, the same label. A kept box with no
    such neighbour (or zero total weight) is returned unchanged. The pool normally holds the kept
    boxes themselves, so each votes for itself with its own score."""
    if kept_boxes.numel() == 0 or pool_boxes.numel() == 0:
        return kept_boxes.clone()
    votes = box_iou(kept_boxes, pool_boxes) >= iou_thresh
    if kept_labels is not None and pool_labels is not None:
        votes &= kept_labels[:, None] == pool_labels[None, :]
    weights = votes.to(pool_scores.dtype) * pool_scores[None, :]
    total = weights.sum(dim=1, keepdim=True)
    voted = (weights @ pool_boxes) / total.clamp(min=torch.finfo(total.dtype).tiny)
    return torch.where(total > 0, voted, kept_boxes)


@torch.no_grad()
def iterative_box_regression_detect(
    model: GeneralizedRCNN,
    images: list[torch.Tensor],
    proposals: list[torch.Tensor] | None = None,
    nms_thresh: float = 0.3,
    vote_iou: float = 0.5,
    score_thresh: float | None = None,
    detections_per_img: int | None = None,
    scales: list[int] | None = None,
) -> list[dict[str, torch.Tensor]]:
    """+B detections of a torchvision two-stage detector, torchvision-style dicts in original pixels.

    ``model`` is a ``FastRCNN`` (``proposals``, in original pixels, required) or a torchvision
    ``FasterRCNN`` (its RPN proposes unless ``proposals`` are given). Runs in eval mode and restores
    the mode after. ``score_thresh``/``detections_per_img`` default to the model's ``roi_heads``
    settings; candidates below ``score_thresh`` after pass 1 are not re-scored. ``scales`` (with
    proposals): both passes on an image pyramid, each box at its own scale (+M +B, ``multiscale``).
    """
    heads = model.roi_heads
    if not isinstance(heads, RoIHeads):
        raise TypeError(f"expected a torchvision two-stage detector, got {type(model).__name__}")
    score_thresh = heads.score_thresh if score_thresh is None else score_thresh
    detections_per_img = heads.detections_per_img if detections_per_img is None else detections_per_img
    was_training = model.training
    model.eval()
    try:
        if scales:
            if proposals is None:
                raise ValueError("multi-scale +B needs proposals (in original pixels)")
            score_and_regress = ImagePyramid(model, images, scales).score_and_regress
            return _regress_twice_and_vote(
                score_and_regress, proposals, score_thresh, nms_thresh, vote_iou, detections_per_img
            )
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        image_list, _, features = backbone_features(model, images)
        if proposals is not None:
            if len(proposals) != len(images):
                raise ValueError(f"{len(proposals)} proposal sets for {len(images)} images")
            proposals = FastRCNN.resize_proposals(proposals, original_sizes, image_list)
        elif getattr(model, "needs_proposals", False) or getattr(model, "rpn", None) is None:
            raise ValueError(f"{type(model).__name__} needs proposals: pass proposals=[...]")
        else:
            proposals, _ = model.rpn(image_list, features)
        shapes = image_list.image_sizes

        def score_and_regress(boxes: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
            return _score_and_regress(heads, features, boxes, shapes)

        detections = _regress_twice_and_vote(
            score_and_regress, proposals, score_thresh, nms_thresh, vote_iou, detections_per_img
        )
        return model.transform.postprocess(detections, shapes, original_sizes)
    finally:
        model.train(was_training)


def _regress_twice_and_vote(
    score_and_regress: Callable[[list[torch.Tensor]], tuple[list[torch.Tensor], list[torch.Tensor]]],
    proposals: list[torch.Tensor],
    score_thresh: float,
    nms_thresh: float,
    vote_iou: float,
    detections_per_img: int,
) -> list[dict[str, torch.Tensor]]:
    # Pass 1: every (proposal, foreground class) pair above the threshold is a candidate.
    scores, boxes = score_and_regress(proposals)
    first = [candidates(s, b, score_thresh) for s, b in zip(scores, boxes)]
    # Pass 2: re-score and re-regress each candidate box, reading its own class only.
    scores2, boxes2 = score_and_regress([c[0] for c in first])
    results = []
    for (b1, s1, l1), s2_all, b2_all in zip(first, scores2, boxes2):
        rows = torch.arange(l1.numel(), device=l1.device)
        b2, s2 = b2_all[rows, l1], s2_all[rows, l1]
        again = (s2 > score_thresh) & big_enough(b2)
        pool_boxes = torch.cat([b1, b2[again]])
        pool_scores = torch.cat([s1, s2[again]])
        pool_labels = torch.cat([l1, l1[again]])
        keep = batched_nms(pool_boxes, pool_scores, pool_labels, nms_thresh)[:detections_per_img]
        voted = box_voting(pool_boxes[keep], pool_boxes, pool_scores, vote_iou, pool_labels[keep], pool_labels)
        results.append({"boxes": voted, "scores": pool_scores[keep], "labels": pool_labels[keep]})
    return results


def _score_and_regress(
    heads: RoIHeads, features: dict[str, torch.Tensor], boxes: list[torch.Tensor], shapes: list[tuple[int, int]]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per image: class probabilities (n, C) and per-class regressed boxes (n, C, 4), clipped."""
    return classify_and_regress(heads, heads.box_roi_pool(features, boxes, shapes), boxes, shapes)
