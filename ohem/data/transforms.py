"""Training-time augmentation, as torchvision's detection references do it.

* ``hflip``: mirror an image and every ``(n, 4)`` box tensor of its target (boxes, proposals, ...).
* Multi-scale training is the model's job: ``model.min_size`` as a list makes torchvision's
  ``GeneralizedRCNNTransform`` draw the shorter side per image.
"""

from __future__ import annotations

import torch

BOX_KEYS = ("boxes", "proposals", "distractor_boxes")


def hflip(image: torch.Tensor, target: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    width = image.shape[-1]
    flipped = dict(target)
    for key in BOX_KEYS:
        if key in target:
            boxes = target[key]
            flipped[key] = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
    return image.flip(-1), flipped
