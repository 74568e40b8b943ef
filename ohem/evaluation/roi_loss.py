"""Mean loss per RoI over all RoIs of a set of training images: the paper's convergence measure.

The loss logged during training is over the RoIs each sampler trained on, which differs by sampler
(OHEM's hard RoIs have high loss by construction). This measures every arm the same way: the model
in eval mode, its RoIs (RPN proposals at the test-time count, or the proposal file's boxes) plus the
gt boxes, every RoI labelled (fg IoU >= 0.5, else bg, no lower bound), per-RoI cross-entropy +
smooth-L1 (fg) as in training, averaged.
"""

from __future__ import annotations

import torch
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads

from ohem.data.loader import eval_batches
from ohem.mining import ReadOnlySettings, label_rois, readonly_pass
from ohem.models import FastRCNN, backbone_features
from ohem.structures import Images

# the measure in float32 on every device, not TF32
STRICT = ReadOnlySettings(max_rois_per_chunk=1024, dropout=True, precision="fp32")


@torch.no_grad()
def all_roi_mean_loss(
    model: GeneralizedRCNN,
    dataset: Images,
    indices: list[int],
    device: torch.device,
    batch_size: int = 2,
    workers: int = 0,
) -> float:
    heads = getattr(model, "roi_heads", None)
    if not isinstance(heads, RoIHeads):
        raise TypeError(
            f"all_roi_mean_loss needs a torchvision RoIHeads at model.roi_heads, got {type(heads).__name__}"
        )
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for _, images, targets in eval_batches(dataset, indices, batch_size, workers, device):
            original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
            image_list, transformed, features = backbone_features(model, images, targets)
            targets = transformed if transformed is not None else targets  # given targets: transformed
            if getattr(model, "needs_proposals", False):  # Fast R-CNN: the proposal file's boxes
                proposals = [t["proposals"] for t in targets]
                proposals = FastRCNN.resize_proposals(proposals, original_sizes, image_list)
            else:
                proposals, _ = model.rpn(image_list, features)
            rois = label_rois(heads, proposals, targets, bg_iou_low=0.0)
            terms = readonly_pass(heads, features, rois, image_list.image_sizes, STRICT, box_loss_beta(heads))
            losses = terms.cls + terms.box
            total += losses.sum().item()
            count += losses.numel()
    finally:
        model.train(was_training)
    return total / max(count, 1)


def box_loss_beta(heads: RoIHeads) -> float:
    """The smooth-L1 beta the heads train with (torchvision's own heads: the 1/9 it hard-codes)."""
    return getattr(heads, "box_loss_beta", 1 / 9)
