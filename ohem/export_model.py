"""``ohem export-model``: a checkpoint's weights as a state dict of the plain torchvision detector it
trained (the sampler only acts in training: in eval mode the model is torchvision's), with the Python
lines that build that detector and load them. What plain torchvision cannot hold is refused in one
line saying why: a backbone of ohem's own (``small``, the VGG nets), Fast R-CNN on proposal files,
test-time +M / +B, BGR input."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import detection
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from ohem.config import Config
from ohem.inference import model_from_checkpoint
from ohem.models.build import PROPOSAL_MODELS, detector_kwargs
from ohem.util import atomic_open

# model.name -> torchvision's builder of the same name; the other models have ohem's own backbones
TORCHVISION_MODELS = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "maskrcnn_resnet50_fpn",
)


def check_exportable(cfg: Config, path: str | Path) -> None:
    """Refuse, in one line naming the key, a model plain torchvision cannot reproduce."""
    m, where = cfg.model, f"checkpoint {path}"
    if m.name in PROPOSAL_MODELS:
        raise ValueError(
            f"{where}: model.name {m.name}: Fast R-CNN reads external proposal files at test time; "
            "torchvision's detectors have no such input (load it with ohem.inference.model_from_checkpoint)"
        )
    if m.name not in TORCHVISION_MODELS:
        raise ValueError(
            f"{where}: model.name {m.name}: its backbone is ohem's own, not a torchvision builder's; "
            f"--format torchvision exports {', '.join(TORCHVISION_MODELS)}"
        )
    if isinstance(m.test_min_size, list):
        raise ValueError(
            f"{where}: model.test_min_size {m.test_min_size}: +M (an image pyramid) is ohem's, not torchvision's"
        )
    if m.box_voting:
        raise ValueError(
            f"{where}: model.box_voting: +B (iterative box regression with voting) is ohem's, not torchvision's"
        )
    if m.channel_order != "RGB":
        raise ValueError(f"{where}: model.channel_order {m.channel_order}: torchvision's transform feeds RGB only")


def plain_kwargs(model: GeneralizedRCNN, cfg: Config, num_classes: int) -> dict[str, Any]:
    """The builder's keyword arguments that reproduce ``model`` in eval mode."""
    kwargs: dict[str, Any] = {"weights": None, "weights_backbone": None, "num_classes": num_classes + 1}
    kwargs.update(detector_kwargs(cfg.model, uses_rpn=True))
    if cfg.model.test_min_size is not None:  # one test scale: the transform's size at test time
        kwargs["min_size"] = cfg.model.test_min_size
    t = model.transform
    kwargs.update(image_mean=[float(v) for v in t.image_mean], image_std=[float(v) for v in t.image_std])
    return kwargs


def torchvision_state_dict(model: nn.Module, plain: nn.Module, what: str) -> dict[str, torch.Tensor]:
    """``model``'s weights under ``plain``'s keys. A pretrained backbone trained with torchvision's
    ``FrozenBatchNorm2d``; a plain builder without weights makes ``BatchNorm2d`` (same eps, 1e-5, in
    the four models), whose eval-mode output is the same from the same buffers plus a
    ``num_batches_tracked`` count (0 here)."""
    state = dict(model.state_dict())
    expected = plain.state_dict()
    for key, value in expected.items():
        if key not in state and key.endswith(".num_batches_tracked"):
            state[key] = torch.zeros_like(value)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        key = (missing or unexpected)[0]
        raise ValueError(
            f"{what}: its weights do not fit torchvision's detector ({'missing' if missing else 'extra'} {key!r})"
        )
    return state


def export_torchvision(checkpoint: str | Path, out: str | Path) -> str:
    """Write ``checkpoint``'s weights for its plain torchvision detector to ``out`` (tensors only);
    returns the Python lines that build the detector and load them."""
    module, cfg, classes = model_from_checkpoint(checkpoint, torch.device("cpu"))
    check_exportable(cfg, checkpoint)
    model = typing.cast(GeneralizedRCNN, module)
    kwargs = plain_kwargs(model, cfg, len(classes))
    plain: GeneralizedRCNN = getattr(detection, cfg.model.name)(**kwargs)
    state = torchvision_state_dict(model, plain, f"checkpoint {checkpoint}")
    plain.load_state_dict(state)  # the check that the lines below will work
    with atomic_open(out, binary=True) as f:
        torch.save(state, f)
    return python_lines(cfg.model.name, kwargs, out, classes)


def python_lines(name: str, kwargs: dict[str, Any], out: str | Path, classes: list[str]) -> str:
    """The code that builds the plain detector and loads the exported weights."""
    arguments = ", ".join(f"{key}={value!r}" for key, value in kwargs.items())
    lines = [
        "import torch, torchvision",
        f"model = torchvision.models.detection.{name}({arguments})",
    ]
    lines += [
        f"model.load_state_dict(torch.load({str(out)!r}, weights_only=True))",
        "model.eval()",
        f"classes = {['__background__', *classes]!r}  # label k is classes[k]",
    ]
    return "\n".join(lines)
