"""``ohem-prior``: OHEM (``hard_examples.py``) from the first step, with the classifier's biases set
so that the head starts out predicting background with probability ``prior_bg`` (0.99).

Why (a hypothesis, not measured): OHEM ranks RoIs by loss, and a from-scratch head that starts near
the uniform distribution gives every background RoI a high loss, so the first mined batches are
mostly easy background; a small from-scratch head can collapse under OHEM from the first step
(docs/BENCHMARKS.md, "When OHEM pays"). Focal Loss (Lin et al. 2017) starts its classifier at a
foreground prior pi = 0.01 against the same flood of easy background; this is that prior in a softmax.

Where we chose: the foreground biases are set to 0 and the background bias to
``log(prior_bg (C - 1) / (1 - prior_bg))`` (C classes with the background), which makes P(bg) =
``prior_bg`` exactly on zero features and the remaining mass shared equally among the classes; the
weights are left as they are. It runs once, in ``enable_sampler`` (``initialise``); a checkpoint
loaded after building (``--resume``, ``model.init_weights``) replaces it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torchvision.models.detection.roi_heads import RoIHeads

from ohem.config import SamplerConfig
from ohem.mining.hard_examples import OHEMSampler


@dataclass
class OHEMPriorSampler(OHEMSampler):
    """OHEM's settings and sample; ``prior_bg``: P(background) at initialisation (``sampler.prior_bg``)."""

    prior_bg: float = field(kw_only=True)

    @classmethod
    def from_config(cls, cfg: SamplerConfig) -> OHEMPriorSampler:
        return cls(**OHEMSampler.settings(cfg), prior_bg=cfg.prior_bg)

    def initialise(self, heads: RoIHeads) -> None:
        set_background_prior(heads.box_predictor, self.prior_bg)


@torch.no_grad()
def set_background_prior(box_predictor: nn.Module, prior_bg: float) -> None:
    """The classifier's bias: background ``log(prior_bg (C - 1) / (1 - prior_bg))``, every class 0."""
    cls_score = getattr(box_predictor, "cls_score", None)
    if not isinstance(cls_score, nn.Linear) or cls_score.bias is None or cls_score.out_features < 2:
        name = type(box_predictor).__name__
        raise TypeError(
            f"ohem-prior: the box predictor needs a cls_score Linear with a bias over >= 2 classes ({name})"
        )
    if not 0 < prior_bg < 1:
        raise ValueError(f"sampler.prior_bg must be in (0, 1), got {prior_bg!r}")
    cls_score.bias.zero_()
    cls_score.bias[0] = math.log(prior_bg * (cls_score.out_features - 1) / (1 - prior_bg))
