"""What the file-backed datasets share: reading images, checking boxes, counting what was fixed.

Bad input ends in one line that names the file and the item. Boxes outside the image (COCO has
many that overshoot by a fraction of a pixel) are clipped, and boxes left empty are dropped, when
``invalid_boxes="fix"`` (the default): each is counted and one warning per dataset says how many
and names the first. ``invalid_boxes="error"`` makes the first such box an error instead. Images
left without an object are kept, skipped (counted, one warning) or refused as ``empty_images`` says.
"""

from __future__ import annotations

import threading
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ohem.config import DataConfig, EmptyImages, InvalidBoxes, check_choice
from ohem.util import is_int, one_line, regular_file

DEFAULT_MAX_IMAGE_PIXELS: int | None = DataConfig.max_image_pixels
MIN_IMAGE_SIDE = 2  # px: a detector scales the shorter side up, but a 1-px image has no extent to scale
MAX_IMAGE_ASPECT = 100  # longer / shorter side: beyond it, fitting the longer side into a model's max_size
# (160 is the smallest any config uses) leaves the shorter side under 2 px, and torchvision's resize fails
_PIL_SETTINGS = threading.Lock()  # PIL's pixel limit is a module global: set it for one read at a time


def read_image(
    path: str | Path,
    what: str = "image",
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    exif_orientation: bool = False,
) -> torch.Tensor:
    """float (3, H, W) RGB in [0, 1], whatever the file's mode (8- or 16-bit, grey, palette, alpha,
    CMYK, float). Only a regular file is opened; its size is checked from the header before any pixel
    is decoded (``max_pixels``: ``data.max_image_pixels``). ``exif_orientation``: turned as the file's
    EXIF orientation tag says (a phone's photo upright), else the pixels as stored. A missing, corrupt,
    truncated, oversized or degenerate image is a one-line error naming the file."""
    path = regular_file(path, what)
    where = f"{what} {path}"
    with _reading_image(where, max_pixels), Image.open(path) as im:
        check_image_size(im.width, im.height, where, max_pixels)  # from the header, nothing decoded yet
        with _pil_pixel_limit(max_pixels):  # decoders that check frame sizes themselves (GIF, ICO, ...)
            if exif_orientation:
                ImageOps.exif_transpose(im, in_place=True)
            pixels = rgb_pixels(im, where)
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


# EXIF orientations 5 to 8 turn the image a quarter: its width and height swap
_QUARTER_TURNS = (5, 6, 7, 8)
_EXIF_ORIENTATION = 0x0112


def read_image_size(
    path: str | Path,
    what: str = "image",
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    exif_orientation: bool = False,
) -> tuple[int, int]:
    """(height, width) of the image ``read_image`` would return, from the file's header alone (no
    pixel decoded), checked as ``read_image`` checks it; errors are the same one-line errors."""
    path = regular_file(path, what)
    where = f"{what} {path}"
    with _reading_image(where, max_pixels), Image.open(path) as im:
        check_image_size(im.width, im.height, where, max_pixels)
        turned = exif_orientation and im.getexif().get(_EXIF_ORIENTATION) in _QUARTER_TURNS
        return (im.width, im.height) if turned else (im.height, im.width)


@contextmanager
def _reading_image(where: str, max_pixels: int | None) -> Iterator[None]:
    """PIL's own pixel limit off (``check_image_size`` applies ours from the header), and PIL's
    errors made one line starting with ``where``; one image read at a time (``_PIL_SETTINGS``)."""
    try:
        with _PIL_SETTINGS, _pil_pixel_limit(None):
            yield
    except FileNotFoundError:
        raise FileNotFoundError(f"{where}: no such file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"{where}: {_pixel_limit_text(max_pixels)} ({one_line(str(e))})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError) as e:
        raise ValueError(f"{where}: cannot be read as an image ({one_line(str(e))})") from None
    except ValueError as e:
        if str(e).startswith(where):
            raise
        raise ValueError(f"{where}: cannot be read as an image ({one_line(str(e))})") from None


@contextmanager
def _pil_pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """PIL's own decompression-bomb check (in ``open`` and in some decoders) set to ``max_pixels``
    (None: off), its warning made an error; for one read, under ``_PIL_SETTINGS``."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _pixel_limit_text(max_pixels: int | None) -> str:
    limit = "no limit" if max_pixels is None else f"{max_pixels:,}"
    return f"more pixels than data.max_image_pixels = {limit} allows (raise it, or null for no limit)"


def check_image_size(width: Any, height: Any, where: str, max_pixels: int | None) -> None:
    """A one-line error starting with ``where`` unless ``width`` x ``height`` is an image a detector
    can run on: whole positive sizes, shorter side >= ``MIN_IMAGE_SIDE``, aspect at most
    ``MAX_IMAGE_ASPECT``, at most ``max_pixels`` pixels (None: no limit)."""
    if not all(is_int(v) and v > 0 for v in (width, height)):
        raise ValueError(f"{where}: image size {width!r}x{height!r} is not two positive integers")
    short, long = min(width, height), max(width, height)
    if short < MIN_IMAGE_SIDE:
        raise ValueError(f"{where}: image size {width}x{height} is degenerate (a side under {MIN_IMAGE_SIDE} px)")
    if long > MAX_IMAGE_ASPECT * short:
        raise ValueError(
            f"{where}: image size {width}x{height} is degenerate (aspect {long / short:.0f}:1, more than "
            f"{MAX_IMAGE_ASPECT}:1: no detector input size keeps both sides)"
        )
    if max_pixels is not None and width * height > max_pixels:
        raise ValueError(f"{where}: {width}x{height} = {width * height:,} pixels, {_pixel_limit_text(max_pixels)}")


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def rgb_pixels(im: Image.Image, where: str) -> np.ndarray:
    """float32 (H, W, 3) RGB in [0, 1] of a PIL image of any mode, each scaled by its own range:
    8-bit modes through PIL's RGB conversion (alpha dropped), 16-bit grey by 65535, 32-bit integer
    grey ("I") by 65535 (values outside 0..65535 are an error), float grey ("F") as [0, 1] when it
    stays within it, else as PIL's 0..255 (values outside that or non-finite are an error)."""
    if im.mode in _SIXTEEN_BIT or im.mode in ("I", "F"):
        grey = np.asarray(im)
        if im.mode == "I" and grey.size and (grey.min() < 0 or grey.max() > 65535):
            raise ValueError(f"{where}: 32-bit integer pixels outside 0..65535 (mode I); save it as 8 or 16 bit")
        if im.mode == "F":
            if not np.isfinite(grey).all() or (grey.size and (grey.min() < 0 or grey.max() > 255)):
                raise ValueError(f"{where}: float pixels (mode F) not finite or outside 0..255")
            scale = 1.0 if not grey.size or grey.max() <= 1 else 255.0
        else:
            scale = 65535.0
        grey = grey.astype(np.float32) / np.float32(scale)
        return np.repeat(grey[:, :, None], 3, axis=2)
    try:
        rgb = im.convert("RGB")
    except ValueError as e:
        raise ValueError(f"{where}: mode {im.mode} cannot be converted to RGB ({one_line(str(e))})") from None
    return np.asarray(rgb, dtype=np.float32) / 255


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
