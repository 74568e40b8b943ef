"""Mean loss per RoI over all RoIs of a set of training images: the paper's convergence measure.

The loss logged during training is over the RoIs each sampler trained on, which differs by sampler
(OHEM's hard RoIs have high loss by construction). This measures every arm the same way: the model
in eval mode, RPN proposals (test-time count) plus the gt boxes, every RoI labelled (fg IoU >= 0.5,
else bg, no lower bound), per-RoI cross-entropy + smooth-L1 (fg) as in training, averaged.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ohem.mining import FastRCNNRoIHeads


@torch.no_grad()
def mean_roi_loss(model: nn.Module, dataset, indices: list[int], device: torch.device, batch_size: int = 2) -> float:  # noqa: ANN001
    heads = model.roi_heads
    if not isinstance(heads, FastRCNNRoIHeads):
        raise TypeError("mean_roi_loss needs FastRCNNRoIHeads or OHEMRoIHeads at model.roi_heads")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(indices), batch_size):
            batch = [dataset[i] for i in indices[start : start + batch_size]]
            images = [image.to(device) for image, _ in batch]
            targets = [{k: v.to(device) for k, v in t.items()} for _, t in batch]
            original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
            image_list, targets = model.transform(images, targets)
            features = model.backbone(image_list.tensors)
            if isinstance(features, torch.Tensor):
                features = OrderedDict([("0", features)])
            if getattr(model, "needs_proposals", False):  # Fast R-CNN: the proposal file's boxes
                proposals = [t["proposals"] for t in targets]
                proposals = model.resize_proposals(proposals, original_sizes, image_list)
            else:
                proposals, _ = model.rpn(image_list, features)
            rois, _, labels, regression_targets, _ = heads.label_rois(proposals, targets, bg_iou_low=0.0)
            losses = heads.readonly_losses(features, rois, image_list.image_sizes, labels, regression_targets)
            total += losses.sum().item()
            count += losses.numel()
    finally:
        model.train(was_training)
    return total / max(count, 1)
