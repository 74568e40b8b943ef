"""``ohem-prior``: OHEM (``ohem.mining.samplers.ohem``) from the first step, with the classifier's
biases set so that the head starts out predicting background with probability ``background_prior``
(0.99).

Why (a hypothesis, not measured): OHEM ranks RoIs by loss, and a from-scratch head that starts near
the uniform distribution gives every background RoI a high loss, so the first mined batches are
mostly easy background; a small from-scratch head can collapse under OHEM from the first step
(docs/BENCHMARKS.md, "When OHEM pays"). Focal Loss (Lin et al. 2017) starts its classifier at a
foreground prior pi = 0.01 against the same flood of easy background; this is that prior in a softmax.

Where we chose: the foreground biases are set to 0 and the background bias to
``log(p (C - 1) / (1 - p))`` (p = ``background_prior``, C classes with the background), which makes
P(bg) = p exactly on zero features and the remaining mass shared equally among the classes; the
weights are left as they are. It runs once, in ``enable_sampler`` (``initialise``); a checkpoint
loaded after building (``--resume``, ``model.init_weights``) replaces it.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from pydantic import Field
from torch import nn
from torchvision.models.detection.roi_heads import RoIHeads

from ohem.mining.sampler import register_sampler
from ohem.mining.samplers.ohem import OHEMSampler


@register_sampler("ohem-prior")
class OHEMPriorSampler(OHEMSampler):
    """OHEM's settings and sample, with the classifier's background prior set on install."""

    background_prior: Annotated[float, Field(gt=0, lt=1)] = 0.99
    """P(background) of the classifier at initialisation, in (0, 1)."""

    def initialise(self, heads: RoIHeads) -> None:
        set_background_prior(heads.box_predictor, self.background_prior)


@torch.no_grad()
def set_background_prior(box_predictor: nn.Module, background_prior: float) -> None:
    """The classifier's bias: background ``log(p (C - 1) / (1 - p))``, every class 0."""
    cls_score = getattr(box_predictor, "cls_score", None)
    if not isinstance(cls_score, nn.Linear) or cls_score.bias is None or cls_score.out_features < 2:
        name = type(box_predictor).__name__
        raise TypeError(
            f"ohem-prior: the box predictor needs a cls_score Linear with a bias over >= 2 classes ({name})"
        )
    if not 0 < background_prior < 1:
        raise ValueError(f"sampler.background_prior must be in (0, 1), got {background_prior!r}")
    cls_score.bias.zero_()
    cls_score.bias[0] = math.log(background_prior * (cls_score.out_features - 1) / (1 - background_prior))
