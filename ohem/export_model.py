"""``ohem export-model``: a checkpoint's weights as a state dict of the plain torchvision detector it
trained (the sampler only acts in training: in eval mode the model is torchvision's), with the Python
lines that build that detector and load them; or that detector as a TorchScript file
(``torch.jit.script``) or an ONNX file (``torch.onnx.export``, one image in, boxes, labels and scores
out), each with the lines that run it. What plain torchvision cannot hold is refused in one line saying
why: a backbone of ohem's own (``small``, the VGG nets), Fast R-CNN on proposal files, test-time +M /
+B, BGR input; and Mask R-CNN as ONNX."""

from __future__ import annotations

import typing
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import detection
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from ohem.config import Config
from ohem.inference import model_from_checkpoint
from ohem.models.build import PROPOSAL_MODELS, detector_kwargs
from ohem.util import atomic_open, require

# model.name -> torchvision's builder of the same name; the other models have ohem's own backbones
TORCHVISION_MODELS = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "maskrcnn_resnet50_fpn",
)
FORMATS = ("torchvision", "torchscript", "onnx")
ONNX_OPSET = 17  # torchvision's detectors export from opset 11; 17 is what current onnxruntime runs fully


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
            f"export-model exports {', '.join(TORCHVISION_MODELS)}"
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


def check_format(cfg: Config, fmt: str, path: str | Path) -> None:
    """Refuse, in one line saying why, a format the checkpoint's detector cannot be held in."""
    if fmt == "onnx" and cfg.model.name.startswith("maskrcnn"):
        raise ValueError(
            f"checkpoint {path}: model.name {cfg.model.name}: --format onnx holds Faster R-CNN's boxes, "
            "labels and scores; Mask R-CNN's masks are not exported (use --format torchscript or torchvision)"
        )


def plain_detector(checkpoint: str | Path) -> tuple[GeneralizedRCNN, Config, list[str], dict[str, Any], dict]:
    """The checkpoint's model as the plain torchvision detector in eval mode on the CPU, with its config,
    classes, builder keyword arguments and state dict (under torchvision's keys)."""
    module, cfg, classes = model_from_checkpoint(checkpoint, torch.device("cpu"))
    check_exportable(cfg, checkpoint)
    model = typing.cast(GeneralizedRCNN, module)
    kwargs = plain_kwargs(model, cfg, len(classes))
    plain: GeneralizedRCNN = getattr(detection, cfg.model.name)(**kwargs)
    state = torchvision_state_dict(model, plain, f"checkpoint {checkpoint}")
    plain.load_state_dict(state)  # also the check that the printed lines will work
    return plain.eval(), cfg, classes, kwargs, state


def export_model(checkpoint: str | Path, out: str | Path, fmt: str = "torchvision") -> str:
    """Write ``checkpoint``'s detector to ``out`` in ``fmt`` (``FORMATS``); returns the Python lines that
    load and run it."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        require("onnx", "--format onnx")  # before the model is built: a missing extra is one line at once
    plain, cfg, classes, kwargs, state = plain_detector(checkpoint)
    if fmt == "torchvision":
        with atomic_open(out, binary=True) as f:
            torch.save(state, f)
        return python_lines(cfg.model.name, kwargs, out, classes)
    if fmt == "torchscript":
        # torchvision's notes on scripting, and torch's FutureWarning that TorchScript is deprecated (the
        # printed lines say so once): not warnings about this export
        with warnings.catch_warnings(), atomic_open(out, binary=True) as f:
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.script(plain), f)
        return torchscript_lines(out, classes)
    check_format(cfg, fmt, checkpoint)
    export_onnx(plain, cfg, out)
    return onnx_lines(out, classes)


def export_onnx(plain: GeneralizedRCNN, cfg: Config, out: str | Path) -> None:
    """``plain`` traced on one image into an ONNX file: input ``image`` (float (3, H, W) RGB in [0, 1], any
    H and W), outputs ``boxes`` (n, 4), ``labels`` (n,), ``scores`` (n,) in the input's pixels. The
    transform (resize, normalisation) and post-processing are in the graph."""
    size = cfg.model.min_size[-1] if isinstance(cfg.model.min_size, list) else cfg.model.min_size
    # A trace follows one image's path: torchvision's detectors keep their sizes symbolic while tracing,
    # so an image of another shape (taller than wide here) still resizes and scales back correctly.
    example = torch.rand(3, size, max(1, size * 3 // 4), generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(), atomic_open(out, binary=True) as f:
        warnings.simplefilter("ignore")  # the tracer's notes on torchvision's (trace-safe) size arithmetic
        torch.onnx.export(
            plain,
            ([example],),
            typing.cast(Any, f),  # the TorchScript-based exporter writes to a file object too (not typed so)
            input_names=["image"],
            output_names=["boxes", "labels", "scores"],
            dynamic_axes={
                "image": {1: "height", 2: "width"},
                "boxes": {0: "n"},
                "labels": {0: "n"},
                "scores": {0: "n"},
            },
            opset_version=ONNX_OPSET,
            dynamo=False,  # torch.export cannot follow the data-dependent NMS; the TorchScript tracer can
        )


def torchscript_lines(out: str | Path, classes: list[str]) -> str:
    """The code that loads the TorchScript file and detects on an image."""
    return "\n".join(
        [
            "# TorchScript is deprecated in torch (a FutureWarning) but loads and runs (tested with torch 2.14)",
            "import torch, torchvision  # torchvision registers the nms and roi_align ops the model calls",
            f"model = torch.jit.load({str(out)!r})",
            "losses, detections = model([image])  # image: float (3, H, W) RGB in [0, 1]; a scripted "
            "detector returns (losses, detections)",
            "boxes, labels, scores = detections[0]['boxes'], detections[0]['labels'], detections[0]['scores']",
            f"classes = {['__background__', *classes]!r}  # label k is classes[k]",
        ]
    )


def onnx_lines(out: str | Path, classes: list[str]) -> str:
    """The code that runs the ONNX file on an image with onnxruntime."""
    return "\n".join(
        [
            "import onnxruntime",
            f"session = onnxruntime.InferenceSession({str(out)!r})",
            "boxes, labels, scores = session.run(None, {'image': image})  # image: float32 (3, H, W) RGB in [0, 1]",
            f"classes = {['__background__', *classes]!r}  # label k is classes[k]",
        ]
    )


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
