"""Detections drawn on images, saved as PNG (matplotlib, no screen needed).

Uses matplotlib's object API only (``Figure``, no pyplot, no ``matplotlib.use``), imported when a
function runs: importing this module loads no matplotlib and changes no global state, and a
``Figure`` saves its PNG through the Agg canvas whatever backend the process has chosen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ohem.structures import ImageDetections
from ohem.util import atomic_open

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def class_colour(label: int) -> tuple[float, float, float]:
    """The colour of class ``label`` (1..num_classes): matplotlib's ``tab10``, cycled."""
    import matplotlib

    colours = matplotlib.colormaps["tab10"].colors  # type: ignore[attr-defined]  # a ListedColormap
    return colours[(label - 1) % len(colours)]


def draw_box(ax: Axes, box: Sequence[float], colour: str | tuple[float, ...], dashed: bool = False) -> None:
    """An unfilled rectangle from ``box`` = (x1, y1, x2, y2): solid 2 px, or dashed 1 px (ground truth)."""
    from matplotlib.patches import Rectangle

    x1, y1, x2, y2 = box
    style = {"ls": "--", "lw": 1} if dashed else {"lw": 2}
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=colour, **style))


def image_grid(count: int, cell_size: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    """A figure with room for ``count`` images, at most 4 a row, each ``cell_size`` inches (w, h);
    returns it and its axes as a 2-D array, every axis turned off."""
    from matplotlib.figure import Figure

    cols = min(count, 4)
    rows = math.ceil(count / cols)
    fig = Figure(figsize=(cell_size[0] * cols, cell_size[1] * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes


def save_figure(fig: Figure, path: str | Path) -> None:
    """Lay ``fig`` out tightly and write it as a 100 dpi PNG (Agg canvas; nothing global touched),
    atomically: a symbolic link at ``path`` is refused, never written through."""
    fig.tight_layout()
    with atomic_open(path, binary=True) as f:
        fig.savefig(f, format="png", dpi=100)


def draw_detections(
    images: list[torch.Tensor],
    detections: list[ImageDetections],
    class_names: list[str] | tuple[str, ...],
    path: str | Path,
    score_thresh: float = 0.5,
    titles: list[str] | None = None,
    ground_truth: list[torch.Tensor] | None = None,
) -> None:
    """A grid of images with their detections above ``score_thresh`` (box, class, score); ground
    truth boxes, when given, are drawn dashed in white."""
    fig, axes = image_grid(len(images), (4, 4))
    for i, (image, det) in enumerate(zip(images, detections)):
        ax = axes.flat[i]
        ax.imshow(image.permute(1, 2, 0).clamp(0, 1).cpu().numpy())
        if titles:
            ax.set_title(titles[i], fontsize=9)
        for box in ground_truth[i].tolist() if ground_truth else []:
            draw_box(ax, box, "white", dashed=True)
        keep = det.scores >= score_thresh
        for box, score, label in zip(det.boxes[keep].tolist(), det.scores[keep].tolist(), det.labels[keep].tolist()):
            colour = class_colour(label)
            draw_box(ax, box, colour)
            ax.text(
                box[0],
                box[1],
                f"{class_names[label - 1]} {score:.2f}",
                fontsize=7,
                color="white",
                va="bottom",
                bbox=dict(facecolor=colour, alpha=0.8, pad=1, lw=0),
            )
    save_figure(fig, path)
    fig.clear()  # a figure is a reference cycle: free its copy of the pixels now, not at the next collection
