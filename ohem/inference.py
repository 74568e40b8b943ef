"""Detections of a trained model: one image batch (``detect``), a data set (``predict``), or a
checkpoint file (``model_from_checkpoint``), with the test-time options of ``TestTime``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import batched_nms

from ohem.checkpoint import load_checkpoint
from ohem.config import Config, ModelConfig, apply_overrides, config_from_dict
from ohem.data.loader import eval_batches
from ohem.mining import build_detector
from ohem.models.box_voting import iterative_box_regression_detect
from ohem.models.multiscale import pyramid_detect
from ohem.structures import ImageDetections, Images
from ohem.util import progress_bar


@dataclass(frozen=True)
class TestTime:
    """Test-time options: ``min_sizes`` (an image pyramid, +M; None: the model's own size) and
    ``box_voting`` (iterative box regression with weighted voting, +B)."""

    __test__ = False  # a class named Test* that pytest must not collect

    min_sizes: tuple[int, ...] | None = None
    box_voting: bool = False

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> TestTime:
        sizes = cfg.test_min_size
        return cls(None if sizes is None else tuple(sizes) if isinstance(sizes, list) else (sizes,), cfg.box_voting)


def detect(
    model: GeneralizedRCNN,
    images: list[torch.Tensor],
    targets: list[dict] | None = None,
    test_time: TestTime | None = None,
) -> list[dict]:
    """Eval-mode detections (torchvision dicts, original pixels). Fast R-CNN reads its proposals from
    ``targets``. +M with proposals is Fast R-CNN's pyramid (each RoI at the scale where it is nearest
    224 px square); with an RPN, each scale detects on its own and the detections are pooled, then NMS."""
    proposals = None
    if getattr(model, "needs_proposals", False):
        if targets is None or any("proposals" not in t for t in targets):
            raise ValueError(f"{type(model).__name__} reads proposals: set data.test_proposals (a proposal file)")
        proposals = [t["proposals"] for t in targets]
    test_time = test_time or TestTime()
    sizes = test_time.min_sizes
    if sizes and proposals is not None:
        if test_time.box_voting:
            nms = model.roi_heads.nms_thresh
            return iterative_box_regression_detect(model, images, proposals, nms_thresh=nms, scales=list(sizes))
        return pyramid_detect(model, images, proposals, list(sizes))
    if not sizes:
        return _detect_once(model, images, proposals, test_time.box_voting)
    transform, saved = model.transform, model.transform.min_size
    try:
        per_scale = []
        for size in sizes:
            transform.min_size = (size,)
            per_scale.append(_detect_once(model, images, None, test_time.box_voting))
    finally:
        transform.min_size = saved
    return per_scale[0] if len(per_scale) == 1 else _merge(per_scale, model.roi_heads)


def _detect_once(
    model: GeneralizedRCNN, images: list[torch.Tensor], proposals: list | None, box_voting: bool
) -> list[dict]:
    if box_voting:
        return iterative_box_regression_detect(model, images, proposals, nms_thresh=model.roi_heads.nms_thresh)
    return model(images, proposals=proposals) if proposals is not None else model(images)


def _merge(per_scale: list[list[dict]], heads: RoIHeads) -> list[dict]:
    """Per image, the detections of every scale pooled, then NMS per class."""
    merged = []
    for dets in zip(*per_scale):
        boxes = torch.cat([d["boxes"] for d in dets])
        scores, labels = torch.cat([d["scores"] for d in dets]), torch.cat([d["labels"] for d in dets])
        keep = batched_nms(boxes, scores, labels, heads.nms_thresh)[: heads.detections_per_img]
        merged.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return merged


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: Images,
    device: torch.device,
    batch_size: int = 2,
    indices: list[int] | None = None,
    test_time: TestTime | None = None,
    workers: int = 0,
    progress: str | None = None,
) -> list[ImageDetections]:
    """Detections of ``model`` on ``dataset`` (or on its images ``indices``), in that order; images
    read by ``workers`` loader processes (0: in this one). ``progress``: the label of a progress bar
    over the images (None: no bar)."""
    model.eval()
    indices = list(range(len(dataset))) if indices is None else indices
    out = []
    with progress_bar(len(indices), progress or "", unit="img", enabled=progress is not None) as bar:
        for _, images, targets in eval_batches(dataset, indices, batch_size, workers, device):
            for det in detect(model, images, targets, test_time):
                out.append(ImageDetections(det["boxes"].cpu(), det["scores"].cpu(), det["labels"].cpu()))
            bar.update(len(images))
    return out


def model_from_checkpoint(
    path: str | Path, device: torch.device, overrides: Sequence[str] = ()
) -> tuple[nn.Module, Config, list[str]]:
    """The checkpoint's model in eval mode on ``device``, its config (with ``overrides`` applied before the
    model is built: test-time keys such as ``model.box_score_thresh``) and its class names. The model
    is built without reading ``model.backbone_weights`` (a file that may be gone, or ImageNet weights
    to download): the checkpoint holds every weight."""
    state = load_checkpoint(path)
    if not isinstance(state.get("config"), dict):
        raise ValueError(f"checkpoint {path}: config: missing or not a mapping (not written by ohem train?)")
    classes = state.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"checkpoint {path}: classes: expected a non-empty list of class names, got {classes!r:.80}")
    cfg = config_from_dict(state["config"], source=f"checkpoint {path}")
    if overrides:
        cfg = apply_overrides(cfg, list(overrides))
    model = build_detector(cfg.model, cfg.sampler, len(classes), load_weights=False)
    load_weights_into(model, state.get("model"), f"checkpoint {path}")
    return model.to(device).eval(), cfg, classes


def load_weights_into(model: nn.Module, state: object, what: str, skip: Sequence[str] = ()) -> None:
    """``model.load_state_dict(state)`` with a one-line error when the weights belong to another model;
    torch's explanation is quoted whole (long key lists shortened to their first keys). Keys under a
    ``skip`` prefix keep the model's own values, and the file's keys under one are ignored."""
    if not isinstance(state, dict):
        raise ValueError(f"{what}: model: its weights are not a state dict (got {type(state).__name__})")
    if skip:
        skipped = tuple(f"{prefix.rstrip('.')}." for prefix in skip)
        own = {k: v for k, v in model.state_dict().items() if k.startswith(skipped)}
        state = {**{k: v for k, v in state.items() if not k.startswith(skipped)}, **own}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{what}: weights of another model or class count ({state_dict_problems(str(e))})") from None


def state_dict_problems(message: str, most: int = 3) -> str:
    """torch's ``load_state_dict`` error on one line: each problem it lists, whole (the first ``most``)."""
    problems = [line.strip() for line in message.splitlines()[1:] if line.strip()] or [message.strip()]
    shown = []
    for line in problems[:most]:
        head, sep, keys = line.partition(" in state_dict: ")
        names = [k.strip() for k in keys.rstrip(". ").split(",")] if sep else []
        if len(names) > 5:
            line = f"{head} in state_dict: {', '.join(names[:5])}, ... ({len(names)} keys in all)."
        shown.append(line)
    more = f"; and {len(problems) - most} more problems like these" if len(problems) > most else ""
    return "; ".join(shown) + more


def check_image_size(model: nn.Module, height: int, width: int, test_time: TestTime, what: str) -> None:
    """Raise a one-line error naming ``what`` if the model's resizing (torchvision's
    ``GeneralizedRCNNTransform``) would shrink a side of a ``height`` x ``width`` image to nothing."""
    transform = getattr(model, "transform", None)
    if transform is None or not hasattr(transform, "max_size"):
        return
    for size in test_time.min_sizes or (transform.min_size[-1],):
        scale = min(size / min(height, width), transform.max_size / max(height, width))
        if math.floor(height * scale) < 1 or math.floor(width * scale) < 1:
            raise ValueError(
                f"{what}: {width}x{height} px is too thin: the model resizes it to "
                f"{width * scale:.2g}x{height * scale:.2g} px (min_size {size}, max_size {transform.max_size})"
            )
