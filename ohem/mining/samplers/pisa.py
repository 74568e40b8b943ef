"""``pisa``: Prime Sample Attention (Cao et al., CVPR 2020), as mmdetection's PISA RoI head and
score-HLR sampler implement it, on torchvision's random sample (``batch_size_per_image`` RoIs per
image, at most ``fg_fraction`` foreground, background from IoU ``bg_iou_low`` = 0: the tv-default arm).

The classification loss of each sampled RoI is weighted by its importance (ISR):

* positives by IoU-HLR: within each gt box its positives are ranked by the IoU of their predicted box
  with it (the IoU local rank); then, per class over the batch, every gt's best positive comes first
  (by IoU), then every gt's second, and so on. Rank r becomes u = (n_max - r) / n_max, n_max the
  largest count of positives of one class in the batch;
* negatives by score-HLR: per image, negatives are grouped by NMS (``isr_n_nms_iou``) of their
  predicted boxes for their top foreground class, ranked by that class's probability within each
  group, then hierarchically as above; u = (n - r) / n, n the image's sampled negatives;
* weight ((1 - bias) u + bias) ** k (``isr_p_k``/``isr_p_bias``: 2, 0; ``isr_n_k``/``isr_n_bias``: 0.5, 0),
  normalised per part (positives, negatives) over the batch: ``isr_normalise: loss`` (the paper) keeps
  each part's weighted classification loss equal to its unweighted one; ``count`` keeps the mean weight 1.

The box loss is the plain one; ``carl`` adds CARL: the box loss of each positive weighted by
((1 - carl_bias) s + carl_bias) ** carl_k, s its softmax score for its class, normalised to mean 1 over
the positives, with the gradient through s (and through the normalisation, as mmdetection has it),
divided by the number of rows like the box loss, as a ``loss_carl`` term.

Where we chose: the ranks and IoUs come from the trainable pass's own outputs (detached), so the
sampler needs no read-only pass: every value it ranks by belongs to a sampled row, and the trainable
pass is the network's output for exactly those rows (mmdetection ranks positives the same way; its
extra no-grad forward for negatives, in train mode, draws its own dropout mask, so it is no closer to
a read-only pass). The negatives are tv-default's random ones, reweighted; mmdetection's sampler
instead keeps the top-ranked negatives among those scoring above 0.05, so here every sampled negative
is ranked and no score threshold applies. mmdetection normalises the negatives image by image (its
sampler sees one image); here both parts are normalised over the batch. Ties rank the lower row first.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor
from torchvision.ops import batched_nms, box_iou

from ohem.mining.readonly import PerRoILoss
from ohem.mining.rois import LabelledRoIs, elementwise_iou, unreduced_loss_terms
from ohem.mining.sampler import Fraction, Sample, SamplerBase, TrainedRows, random_fg_bg, register_sampler

Exponent = Annotated[float, Field(ge=0, le=100)]


@register_sampler("pisa")
class PISASampler(SamplerBase):
    """tv-default's random sample, its classification loss weighted by importance (defaults:
    mmdetection's PISA config)."""

    isr_p_k: Exponent = 2.0
    """ISR-P: a positive's loss weight is ((1 - bias) u + bias) ** k, u its IoU-HLR rank in (0, 1]."""
    isr_p_bias: Fraction = 0.0
    """ISR-P's bias."""
    isr_n_k: Exponent = 0.5
    """ISR-N: a negative's loss weight ((1 - bias) u + bias) ** k, u its score-HLR rank in (0, 1]."""
    isr_n_bias: Fraction = 0.0
    """ISR-N's bias."""
    isr_n_nms_iou: Fraction = 0.5
    """The NMS IoU that groups negatives for their ranks."""
    isr_normalise: Literal["loss", "count"] = "loss"
    """loss (the paper: each part's weighted cls loss equals its unweighted one) | count (mean weight 1)."""
    carl: bool = True
    """Add CARL: the box loss of positives weighted by their class score (the paper)."""
    carl_k: Exponent = 1.0
    """CARL's weight ((1 - bias) score + bias) ** k."""
    carl_bias: Fraction = 0.2
    """CARL's bias."""

    def sample(self, rois: LabelledRoIs, per_roi: PerRoILoss | None, iteration: int | None) -> Sample:
        return Sample(random_fg_bg(rois, self.batch_size_per_image, self.fg_fraction))

    def roi_loss(self, trained: TrainedRows) -> dict[str, Tensor]:
        labels, count = trained.labels, max(trained.labels.numel(), 1)
        cls_terms, box_terms = unreduced_loss_terms(
            trained.class_logits, trained.box_regression, labels, trained.box_targets, trained.beta
        )
        weights = self.importance_weights(trained, cls_terms.detach())
        losses = {"loss_classifier": (cls_terms * weights).sum() / count, "loss_box_reg": box_terms.sum() / count}
        if self.carl:
            losses["loss_carl"] = (
                carl_loss(trained.class_logits, box_terms, labels, self.carl_k, self.carl_bias) / count
            )
        return losses

    @torch.no_grad()
    def importance_weights(self, trained: TrainedRows, cls_loss: Tensor) -> Tensor:
        """(S,) ISR weight of each sampled row, normalised per part."""
        labels, rows, rois = trained.labels, trained.sample.rows, trained.rois
        pos, neg = labels > 0, labels == 0
        probs = trained.class_logits.detach().float().softmax(1)
        scores, top = probs[:, 1:].max(1)  # negatives: their most likely foreground class
        boxes = trained.predicted_boxes(torch.where(pos, labels, top + 1))
        weights = torch.ones_like(cls_loss)
        if bool(pos.any()):
            iou = elementwise_iou(boxes[pos], rois.matched_gt[rows][pos])
            gts = torch.stack([rois.image_ids[rows][pos], rois.matched_idxs[rows][pos]], 1)
            weights[pos] = positive_weights(iou, gts, labels[pos], self.isr_p_k, self.isr_p_bias)
        if bool(neg.any()):
            image_ids = rois.image_ids[rows][neg]
            weights[neg] = negative_weights(
                scores[neg], boxes[neg], image_ids, self.isr_n_nms_iou, self.isr_n_k, self.isr_n_bias
            )
        return normalised(weights, cls_loss, [pos, neg], self.isr_normalise)


def rank_within(sets: Tensor, order: Tensor) -> Tensor:
    """0-based rank of each item among the items of its set (``sets``: integer ids), in the order in
    which ``order`` (a permutation) visits them."""
    order = order[torch.sort(sets[order], stable=True).indices]
    sorted_sets = sets[order].contiguous()
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(order.numel(), device=order.device) - torch.searchsorted(sorted_sets, sorted_sets)
    return ranks


def hierarchical_rank(values: Tensor, groups: Tensor, sets: Tensor) -> Tensor:
    """PISA's hierarchical local rank of each item within its set: first the best (highest ``values``)
    item of every group, by value, then every group's second, and so on. Ties: the lower index first."""
    by_value = torch.sort(values, descending=True, stable=True).indices
    local = rank_within(groups, by_value)
    return rank_within(sets, by_value[torch.sort(local[by_value], stable=True).indices])


def isr_weights(ranks: Tensor, n: Tensor | int, k: float, bias: float) -> Tensor:
    """((1 - bias) u + bias) ** k with u = (n - rank) / n: 1 for the first, 1 / n for the last of n."""
    u = (n - ranks).float() / n
    return ((1 - bias) * u + bias).pow(k)


def positive_weights(iou: Tensor, gts: Tensor, labels: Tensor, k: float, bias: float) -> Tensor:
    """ISR-P: ``iou`` of each positive with its gt ``gts`` (rows: any id pair, e.g. (image, gt index)),
    ranked by IoU-HLR within its class; n is the largest count of positives of one class."""
    groups = torch.unique(gts, dim=0, return_inverse=True)[1]
    n_max = torch.bincount(labels).max()
    return isr_weights(hierarchical_rank(iou, groups, labels), n_max, k, bias)


def negative_weights(scores: Tensor, boxes: Tensor, image_ids: Tensor, nms_iou: float, k: float, bias: float) -> Tensor:
    """ISR-N: negatives ranked by score-HLR within their image, grouped by NMS of ``boxes`` at ``nms_iou``
    (each box joins the first kept box, by score, that it overlaps above ``nms_iou``: mmcv's nms_match);
    n is the image's count of negatives."""
    keep = batched_nms(boxes, scores, image_ids, nms_iou)  # by decreasing score
    # IoU in float64 against the threshold, as the NMS kernels compare
    over = (box_iou(boxes, boxes[keep]).double() > nms_iou) & (image_ids[:, None] == image_ids[keep][None, :])
    over[keep, torch.arange(keep.numel(), device=keep.device)] = True  # a kept box heads its own group
    groups = over.int().argmax(1)  # the first True: the kept box of highest score
    ranks = hierarchical_rank(scores, groups, image_ids)
    return isr_weights(ranks, torch.bincount(image_ids)[image_ids], k, bias)


def normalised(weights: Tensor, cls_loss: Tensor, parts: list[Tensor], mode: str) -> Tensor:
    """``weights`` scaled part by part (boolean masks): ``loss`` keeps each part's sum of
    weight x ``cls_loss`` equal to its sum of ``cls_loss``; ``count`` keeps each part's weights summing
    to its count."""
    tiny = torch.finfo(weights.dtype).tiny
    out = weights.clone()
    for part in parts:
        w = weights[part]
        if mode == "count":
            out[part] = w * part.sum() / w.sum().clamp(min=tiny)
        else:
            out[part] = w * cls_loss[part].sum() / (w * cls_loss[part]).sum().clamp(min=tiny)
    return out


def carl_loss(class_logits: Tensor, box_terms: Tensor, labels: Tensor, k: float, bias: float) -> Tensor:
    """CARL: the sum over positives of c x their box loss ``box_terms``, c = ((1 - bias) s + bias) ** k
    normalised to mean 1, s each positive's softmax probability of its class, with the gradient."""
    pos = torch.where(labels > 0)[0]
    scores = class_logits[pos].float().softmax(1).gather(1, labels[pos, None]).squeeze(1)
    c = ((1 - bias) * scores + bias).pow(k)
    c = c * pos.numel() / c.sum().clamp(min=torch.finfo(c.dtype).tiny)
    return (c * box_terms[pos]).sum()
