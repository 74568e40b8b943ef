"""What the file-backed datasets share: reading images, checking boxes, counting what was fixed.

Bad input ends in one line that names the file and the item. Boxes outside the image (COCO has
many that overshoot by a fraction of a pixel) are clipped, and boxes left empty are dropped, when
``invalid_boxes="fix"`` (the default): each is counted and one warning per dataset says how many
and names the first. ``invalid_boxes="error"`` makes the first such box an error instead. Images
left without an object are kept, skipped (counted, one warning) or refused as ``empty_images`` says.
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ohem.config import EmptyImages, InvalidBoxes, check_choice
from ohem.util import one_line


def read_image(path: str | Path, what: str = "image") -> torch.Tensor:
    """float (3, H, W) RGB in [0, 1]; a missing, corrupt or truncated file is a one-line error."""
    try:
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB"), dtype=np.float32) / 255
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"{what} {path}: cannot be read as an image ({one_line(str(e))})") from None
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


class BoxChecker:
    """Checks annotated ``x1, y1, x2, y2`` boxes one by one against their image and applies
    ``data.invalid_boxes``: clips or drops a bad box (counted) or raises."""

    def __init__(self, dataset_name: str, policy: InvalidBoxes = "fix") -> None:
        check_choice("data.invalid_boxes", policy, InvalidBoxes)
        self.dataset_name, self.policy = dataset_name, policy
        self.counts: Counter[str] = Counter()
        self.first: dict[str, str] = {}

    def check(self, box: list[float], width: float, height: float, where: str) -> list[float] | None:
        """The box (clipped if allowed), or None if it must be dropped. ``where`` names file and item."""
        x1, y1, x2, y2 = box
        if not all(np.isfinite(box)):
            raise ValueError(f"{where}: box {_fmt(box)} has a non-finite coordinate")
        if x2 <= x1 or y2 <= y1:
            return self._problem("empty", f"{where}: box {_fmt(box)} is empty (x2 <= x1 or y2 <= y1)", None)
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            clipped = [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(x2, width), min(y2, height)]
            message = f"{where}: box {_fmt(box)} is outside the {width:g}x{height:g} image"
            if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
                return self._problem("outside", message + " entirely", None)
            return self._problem("clipped", message, clipped)
        return list(box)

    def _problem(self, kind: str, message: str, fixed: list[float] | None) -> list[float] | None:
        if self.policy == "error":
            raise ValueError(message + " (data.invalid_boxes=fix clips or drops such boxes)")
        self.counts[kind] += 1
        self.first.setdefault(kind, message)
        return fixed

    def report(self) -> None:
        """One warning summarising what was fixed, if anything."""
        if not self.counts:
            return
        parts = {"clipped": "clipped to the image", "empty": "empty, dropped", "outside": "outside, dropped"}
        summary = "; ".join(f"{n} {parts[k]} (first: {self.first[k]})" for k, n in sorted(self.counts.items()))
        warnings.warn(f"{self.dataset_name}: boxes fixed: {summary}", stacklevel=3)


def _fmt(box: list[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


class EmptyImageFilter:
    """Applies ``data.empty_images`` to a dataset's images one by one: an image without an object
    to train on is kept, skipped (counted) or refused."""

    def __init__(self, dataset_name: str, policy: EmptyImages = "skip") -> None:
        check_choice("data.empty_images", policy, EmptyImages)
        self.dataset_name, self.policy = dataset_name, policy
        self.skipped = 0

    def keeps(self, num_objects: int, where: str) -> bool:
        """Whether the image belongs in the dataset. ``where`` names its file (and id)."""
        if num_objects or self.policy == "keep":
            return True
        if self.policy == "error":
            raise ValueError(f"{where}: no objects to train on (data.empty_images=skip leaves such images out)")
        self.skipped += 1
        return False

    def report(self) -> None:
        """One warning saying how many images were skipped, if any."""
        if self.skipped:
            warnings.warn(
                f"{self.dataset_name}: {self.skipped} images without objects skipped (data.empty_images)", stacklevel=3
            )


def to_target(boxes: list[list[float]], labels: list[int], difficult: list[bool], index: int) -> dict:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "difficult": torch.tensor(difficult, dtype=torch.bool),
        "image_id": torch.tensor(index),
    }
