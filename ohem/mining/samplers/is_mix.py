"""``is-mix`` (ours, not from a paper): importance sampling of RoIs by their read-only loss, mixed
with uniform sampling, and weighted so that the loss stays an unbiased estimate of the mean loss.

Per image, over its N candidate RoIs (all of them, or with ``nms_iou`` the survivors of NMS among
them by loss, per label with ``nms_per_label``) with read-only losses l_i (``mining_loss``): B =
``batch_size_per_image`` draws, with replacement, each of RoI i with probability

    p_i = (1 - lambda) l_i / sum_j l_j + lambda / N

(uniform when every loss is 0), and with ``weights: unbiased`` the weight 1 / (N p_i), so that one
draw's weighted loss has expectation sum_i p_i l_i / (N p_i) = the mean of l over the N RoIs; no weight
exceeds 1 / lambda. ``weights: none`` trains on the drawn RoIs unweighted.

lambda = 1 is uniform random sampling of all RoIs (weights 1, no foreground quota); lambda -> 0 with
``none`` draws in proportion to the loss, a soft OHEM. ``lambda_schedule``: ``constant`` (lambda =
``lambda_uniform``) | ``decay``: lambda falls linearly from 1 at iteration 0 to ``lambda_uniform`` at iteration
``lambda_decay_iterations`` and stays there (random sampling first, as ``ohem-warm``, without a jump).

Where we chose: draws are with replacement, because then they are independent draws from p and the
mean of B weighted losses is unbiased exactly; without replacement the second draw's distribution
depends on the first, and 1 / (N p_i) is biased (the unbiased alternative needs inclusion
probabilities, which have no closed form for unequal p). A RoI drawn k times is one row of k times its
weight (so the trainable pass's memory follows the RoI count, not B), and the weights are scaled by rows /
draws because the head divides by the number of rows: the step's loss is the mean of the B draws' weighted
losses, an estimate of the mean over images of each image's mean RoI loss (the all-RoI mean when images
hold equally many RoIs).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, Self

import torch
from torch import Tensor

from ohem.mining.pooling import split_by_image
from ohem.mining.readonly import PerRoILoss
from ohem.mining.rois import LabelledRoIs
from ohem.mining.sampler import Count, Fraction, ReadOnlyPassSampler, Sample, register_sampler
from ohem.mining.select import select_hard_examples


@register_sampler("is-mix")
class ISMixSampler(ReadOnlyPassSampler):
    """Importance sampling by read-only loss mixed with uniform sampling, unbiased weights."""

    lambda_uniform: Fraction = 0.5
    """Weight of the uniform part of p_i = (1 - lambda) loss_i / sum(loss) + lambda / N (1: random)."""
    lambda_schedule: Literal["constant", "decay"] = "constant"
    """constant | decay (lambda from 1 at iteration 0 linearly to lambda_uniform at lambda_decay_iterations)."""
    lambda_decay_iterations: Count = 1000
    """Where the decay schedule reaches lambda_uniform."""
    weights: Literal["unbiased", "none"] = "unbiased"
    """unbiased: 1 / (N p_i) per draw | none (weight 1)."""
    nms_iou: Fraction | None = 0.7
    """Candidates: each image's survivors of NMS by loss at this IoU; None: every RoI."""
    nms_per_label: bool = False
    """NMS only among RoIs of one label."""
    mining_loss: Literal["cls+box", "cls"] = "cls+box"
    """The loss RoIs are drawn by: cls+box | cls."""

    def stretched(self, factor: float) -> Self:
        # lambda reaches lambda_uniform at the same fraction of the run (round half up, at least 1)
        decay = max(1, math.floor(self.lambda_decay_iterations * factor + 0.5))
        return dataclasses.replace(self, lambda_decay_iterations=decay)

    def mixture(self, iteration: int | None) -> float:
        """lambda at ``iteration``."""
        if self.lambda_schedule == "constant":
            return self.lambda_uniform
        if iteration is None:
            raise RuntimeError("sampler.lambda_schedule=decay needs the iteration: run inside ohem.events.EventStorage")
        return 1.0 + (self.lambda_uniform - 1.0) * min(iteration / self.lambda_decay_iterations, 1.0)

    def sample(self, rois: LabelledRoIs, per_roi: PerRoILoss | None, iteration: int | None) -> Sample:
        if per_roi is None:
            raise ValueError("ISMixSampler.sample needs the read-only pass's losses")
        mix, loss = self.mixture(iteration), per_roi.ranked_by(self.mining_loss).float()
        candidates = self.candidates(rois, loss)
        rows, weights, draws = [candidates[:0]], [loss[:0]], 0
        for members in split_by_image(candidates, rois.image_ids[candidates], rois.num_images):
            if members.numel() == 0:
                continue
            p = mixture_probabilities(loss[members], mix)
            drawn = torch.multinomial(p, self.batch_size_per_image, replacement=True)
            # A RoI drawn k times is one row of weight k: the trainable pass's memory follows the RoI count,
            # not batch_size_per_image (draws with replacement can outnumber the RoIs many times over).
            times = torch.bincount(drawn, minlength=members.numel())
            kept = torch.nonzero(times).squeeze(1)
            unbiased = 1.0 / (members.numel() * p[kept]) if self.weights == "unbiased" else 1.0
            rows.append(members[kept])
            weights.append(times[kept] * unbiased)
            draws += self.batch_size_per_image
        rows_all = torch.cat(rows)
        # the head divides by the number of rows: scaled so that the loss is the mean over the draws, as before
        return Sample(rows_all, torch.cat(weights).float() * (rows_all.numel() / max(draws, 1)))

    def candidates(self, rois: LabelledRoIs, loss: Tensor) -> Tensor:
        """Rows in image order: every RoI, or each image's survivors of NMS by loss."""
        if self.nms_iou is None:
            return torch.arange(loss.numel(), device=loss.device)
        labels = rois.labels if self.nms_per_label else None
        return select_hard_examples(loss, rois.boxes, rois.image_ids, loss.numel(), self.nms_iou, labels)


def mixture_probabilities(losses: Tensor, mix: float) -> Tensor:
    """(N,) p_i = (1 - mix) l_i / sum(l) + mix / N; uniform when the losses sum to 0."""
    n, total = losses.numel(), losses.sum()
    share = torch.where(total > 0, losses / total.clamp(min=torch.finfo(losses.dtype).tiny), 1.0 / n)
    return (1 - mix) * share + mix / n
