"""The built-in synthetic detection benchmark: procedural shapes on cluttered backgrounds.

Its rules were fixed before any sampler was compared on it, and are not tuned per method:

* **Images**: ``image_size`` x ``image_size`` RGB (default 160). Image ``i`` of a split is drawn from
  ``numpy.random.default_rng([seed, split, i])``, so every image is reproducible on its own.
* **Background (easy negatives, most of the image)**: a linear colour gradient in a random direction
  between two random colours, 8-20 thin random line segments and 10-30 small dots in random colours,
  then Gaussian pixel noise (sigma 8).
* **Classes (5)**: ``circle``, ``square``, ``triangle`` (apex up), ``plus``, ``ring``. Colours are
  random (at least 90 RGB-distance units from the mean background) so colour says nothing about class.
* **Look-alike distractors (hard negatives, never labelled)**: one per class: ``ellipse`` (aspect
  2.0-3.0, vs circle), ``frame`` (hollow square, vs square), ``down-triangle`` (apex down, vs
  triangle), ``tee`` (a plus missing its lower arm, vs plus), ``c-shape`` (a ring with a 60-100
  degree gap, vs ring).
* **Counts**: 1-4 labelled objects and 1-3 distractors per image, uniformly.
* **Scales and aspect ratios**: the longer side is log-uniform in [12, 64] px (small objects down to
  12 px); objects have width/height log-uniform in [0.67, 1.5]; ellipses 2.0-3.0 in either orientation.
* **Occlusion**: objects are drawn in random order and may overlap; a placement is redrawn (up to
  30 tries, else skipped) if it would leave a labelled object with less than half of its pixels
  visible. A labelled box is the tight box of the object's *visible* pixels, as VOC annotates.
* **Splits**: ``train`` and ``test`` use different streams (``split`` = 0 and 1) of the same rules.
* **Tasks**: ``target`` (the above) and ``source``, a related task to pretrain on (the transfer
  regime, the ``transfer_source`` recipe): the same images' rules with the roles swapped, the
  look-alikes are the 5 classes and the shapes above are their unlabelled look-alikes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from ohem.structures import DetectionDatasetBase

CLASSES = ("circle", "square", "triangle", "plus", "ring")
DISTRACTORS = ("ellipse", "frame", "down-triangle", "tee", "c-shape")
SPLITS = {"train": 0, "test": 1}
TASKS = {"target": (CLASSES, DISTRACTORS), "source": (DISTRACTORS, CLASSES)}  # (labelled shapes, look-alikes)

MIN_SIZE, MAX_SIZE = 12, 64
MIN_VISIBLE = 0.5
NOISE_SIGMA = 8.0


class SyntheticShapes(DetectionDatasetBase):
    """``(image, target)`` pairs: image float (3, H, W) in [0, 1]; target ``boxes`` (n, 4) float32
    ``x1, y1, x2, y2`` in pixels, ``labels`` (n,) int64 in 1..5, ``image_id`` int, and
    ``distractor_boxes`` (m, 4), where the look-alikes are (for analysis; no model reads it)."""

    classes: tuple[str, ...] = CLASSES  # the target task's; a source-task dataset has its own

    def __init__(
        self, split: str = "train", num_images: int = 1000, image_size: int = 160, seed: int = 0, task: str = "target"
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"synthetic task must be one of {', '.join(TASKS)}, got {task!r}")
        self.task, self.classes = task, TASKS[task][0]
        if split not in SPLITS:
            raise ValueError(f"synthetic split must be one of {sorted(SPLITS)}, got {split!r}")
        if num_images < 0:
            raise ValueError(f"synthetic num_images must be >= 0, got {num_images!r}")
        if image_size < 2 * MAX_SIZE:
            raise ValueError(f"synthetic image_size must be >= {2 * MAX_SIZE}, got {image_size}")
        self.split, self.num_images, self.image_size_px, self.seed = split, num_images, image_size, seed
        self._cache: dict[int, tuple[np.ndarray, ...]] = {}

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not 0 <= index < self.num_images:
            raise IndexError(f"synthetic {self.split} index {index} out of range 0..{self.num_images - 1}")
        if index not in self._cache:
            self._cache[index] = render_image(
                self.image_size_px, np.random.default_rng([self.seed, SPLITS[self.split], index]), self.task
            )
        pixels, boxes, labels, distractor_boxes = self._cache[index]
        image = torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255)
        target = {
            "boxes": torch.from_numpy(boxes),
            "labels": torch.from_numpy(labels),
            "image_id": torch.tensor(index),
            "distractor_boxes": torch.from_numpy(distractor_boxes),  # for analysis only, never trained on
        }
        return image, target

    def image_name(self, index: int) -> str:
        return f"synthetic-{self.split}-{index:06d}"

    def image_size(self, index: int) -> tuple[int, int]:
        return self.image_size_px, self.image_size_px

    @property
    def image_ids(self) -> list[str]:  # what detection files call the images
        return [self.image_name(i) for i in range(self.num_images)]

    @property
    def category_ids(self) -> list[int]:
        return list(range(1, len(CLASSES) + 1))


def render_image(size: int, rng: np.random.Generator, task: str = "target") -> tuple[np.ndarray, ...]:
    """One image: uint8 (size, size, 3) pixels, float32 (n, 4) boxes, int64 (n,) labels in 1..5,
    float32 (m, 4) boxes of the visible parts of the distractors (the ``task``'s roles, ``TASKS``)."""
    names = TASKS[task]
    pixels = _background(size, rng)
    mean_colour = pixels.reshape(-1, 3).mean(0)
    owner = np.full((size, size), -1, dtype=np.int32)  # which object each pixel shows
    shapes = [(int(rng.integers(len(CLASSES))), True) for _ in range(rng.integers(1, 5))]
    shapes += [(int(rng.integers(len(DISTRACTORS))), False) for _ in range(rng.integers(1, 4))]
    order = rng.permutation(len(shapes))
    labelled: list[tuple[int, int, int]] = []  # (object index, class, full pixel count)
    distractors: list[int] = []  # object indices
    for obj, shape_index in enumerate(order):
        kind, is_object = shapes[shape_index]
        for _ in range(30):
            mask = _shape_mask(size, names[0 if is_object else 1][kind], rng)
            if all((owner[~mask] == j).sum() >= MIN_VISIBLE * area for j, _, area in labelled):
                break
        else:
            continue
        owner[mask] = obj
        pixels[mask] = _contrasting_colour(mean_colour, rng)
        if is_object:
            labelled.append((obj, kind + 1, int(mask.sum())))
        else:
            distractors.append(obj)
    boxes = _visible_boxes(owner, [obj for obj, _, _ in labelled])
    labels = np.asarray([label for _, label, _ in labelled], dtype=np.int64)
    noise = rng.normal(0, NOISE_SIGMA, pixels.shape)
    pixels = np.clip(pixels + noise, 0, 255).astype(np.uint8)
    return pixels, boxes, labels, _visible_boxes(owner, distractors)


def _visible_boxes(owner: np.ndarray, objects: list[int]) -> np.ndarray:
    """float32 (n, 4) tight boxes of the visible pixels of these objects (fully hidden ones left out)."""
    boxes = []
    for obj in objects:
        ys, xs = np.nonzero(owner == obj)
        if len(xs):
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / size
    t = np.cos(angle) * xx + np.sin(angle) * yy
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    pixels = start + t[..., None] * (end - start)
    canvas = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(8, 21)):
        x0, y0, x1, y1 = rng.uniform(0, size, 4)
        draw.line(
            [(x0, y0), (x1, y1)], fill=tuple(int(c) for c in rng.integers(0, 256, 3)), width=int(rng.integers(1, 3))
        )
    for _ in range(rng.integers(10, 31)):
        x, y, r = *rng.uniform(0, size, 2), rng.uniform(1, 3)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return np.asarray(canvas, dtype=np.float64).copy()


def _contrasting_colour(mean_colour: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    for _ in range(100):
        colour = rng.uniform(0, 255, 3)
        if np.linalg.norm(colour - mean_colour) >= 90:
            return colour
    return 255 - mean_colour


def _shape_mask(size: int, name: str, rng: np.random.Generator) -> np.ndarray:
    """Boolean (size, size) mask of one shape at a random place, scale and aspect ratio."""
    longer = math.exp(rng.uniform(math.log(MIN_SIZE), math.log(MAX_SIZE)))
    if name == "ellipse":
        aspect = rng.uniform(2.0, 3.0)
        aspect = aspect if rng.random() < 0.5 else 1 / aspect
    else:
        aspect = math.exp(rng.uniform(math.log(0.67), math.log(1.5)))
    w, h = (longer, longer / aspect) if aspect >= 1 else (longer * aspect, longer)
    w, h = max(w, 6.0), max(h, 6.0)
    x0, y0 = rng.uniform(0, size - w), rng.uniform(0, size - h)
    x1, y1 = x0 + w, y0 + h
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    stroke = max(2, round(0.2 * min(w, h)))
    bar_w, bar_h = max(2.0, 0.3 * w) / 2, max(2.0, 0.3 * h) / 2
    if name in ("circle", "ellipse"):
        draw.ellipse([x0, y0, x1, y1], fill=255)
    elif name == "square":
        draw.rectangle([x0, y0, x1, y1], fill=255)
    elif name == "frame":
        draw.rectangle([x0, y0, x1, y1], outline=255, width=stroke)
    elif name == "triangle":
        draw.polygon([(x0, y1), (x1, y1), (cx, y0)], fill=255)
    elif name == "down-triangle":
        draw.polygon([(x0, y0), (x1, y0), (cx, y1)], fill=255)
    elif name == "plus":
        draw.rectangle([x0, cy - bar_h, x1, cy + bar_h], fill=255)
        draw.rectangle([cx - bar_w, y0, cx + bar_w, y1], fill=255)
    elif name == "tee":
        draw.rectangle([x0, cy - bar_h, x1, cy + bar_h], fill=255)
        draw.rectangle([cx - bar_w, y0, cx + bar_w, cy], fill=255)
    elif name == "ring":
        draw.ellipse([x0, y0, x1, y1], outline=255, width=stroke)
    elif name == "c-shape":
        gap = rng.uniform(60, 100)
        start = rng.uniform(0, 360)
        draw.arc([x0, y0, x1, y1], start + gap / 2, start - gap / 2 + 360, fill=255, width=stroke)
    return np.asarray(canvas) > 0
