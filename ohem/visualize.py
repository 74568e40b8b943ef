"""Detections drawn on images, saved as PNG (matplotlib, no screen needed).

Uses matplotlib's object API only (``Figure``, no pyplot, no ``matplotlib.use``), imported when a
function runs: importing this module loads no matplotlib and changes no global state, and a
``Figure`` saves its PNG through the Agg canvas whatever backend the process has chosen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ohem.structures import ImageDetections
from ohem.util import atomic_open

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ohem.output_folder import OutputFolder


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
    returns it and its axes as a 2-D array, every axis turned off. Constrained layout: titles and
    suptitles get their room (``tight_layout`` let an image's title run off the top), the size stays."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(count, 4)
    rows = math.ceil(count / cols)
    fig = Figure(figsize=(cell_size[0] * cols, cell_size[1] * rows), layout="constrained")
    FigureCanvasAgg(fig)  # a renderer to measure text with (label placement), nothing global
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes


def save_figure(fig: Figure, path: str | Path, folder: OutputFolder | None = None) -> None:
    """Lay ``fig`` out (its own layout engine, else tightly) and write it as a 100 dpi PNG (Agg canvas;
    nothing global touched), atomically: a symbolic link at ``path`` is refused, never written through.
    ``folder``: the output folder held open that ``path`` is in (written there, or refused if swapped)."""
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    with folder.open(path, binary=True) if folder else atomic_open(path, binary=True) as f:
        fig.savefig(f, format="png", dpi=100)


def short_title(text: str, most: int = 36) -> str:
    """``text`` cut in the middle to at most ``most`` characters (a long file name keeps its start and
    its extension), so that a title fits over its image instead of running into its neighbour's."""
    if len(text) <= most:
        return text
    head = (most - 1) // 2
    return f"{text[:head]}…{text[len(text) - (most - 1 - head) :]}"


def image_title(dataset: object, index: int) -> str:
    """What a drawing calls image ``index``: its file's name where the dataset reads files (a COCO id
    means nothing to the person looking), else the dataset's image name."""
    for attribute, shown in (("image_path", lambda p: Path(p).name), ("image_name", str)):
        method = getattr(dataset, attribute, None)
        if callable(method):
            return shown(method(index))
    return f"image {index}"  # a bare sequence of images


# Where a box's label may go, tried in order: above its top-left corner, inside it below that corner,
# inside it above its bottom-left corner, below it; then the same at its right side.
_LABEL_SPOTS = (
    (0, 1, "left", "bottom"),
    (0, 1, "left", "top"),
    (0, 3, "left", "bottom"),
    (0, 3, "left", "top"),
    (2, 1, "right", "bottom"),
    (2, 3, "right", "top"),
)


def place_labels(fig: Figure, ax: Axes, labels: Sequence[tuple[list[float], str, tuple[float, ...]]]) -> int:
    """Write each (box, text, colour) label at the first spot of ``_LABEL_SPOTS`` that lies inside the
    image and overlaps no label already written (give them best first); returns how many found no such
    spot and were left out (their boxes stay drawn). On a small image, labels would otherwise cover
    each other and run off the image into the title."""
    if not labels:
        return 0
    fig.draw_without_rendering()  # the layout, so that sizes on screen are final
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]  # image_grid gave it an Agg canvas
    frame = ax.get_window_extent(renderer)
    taken: list[Any] = []
    left_out = 0
    for box, text, colour in labels:
        for xi, yi, ha, va in _LABEL_SPOTS:
            artist = ax.text(box[xi], box[yi], text, fontsize=7, color="white", ha=ha, va=va, clip_on=True)
            artist.set_bbox(dict(facecolor=colour, alpha=0.8, pad=1, lw=0))
            artist.set_in_layout(False)  # a label must not move the layout it was placed in
            extent = artist.get_window_extent(renderer).padded(2)
            inside = frame.x0 <= extent.x0 and extent.x1 <= frame.x1 and frame.y0 <= extent.y0 and extent.y1 <= frame.y1
            if inside and not any(extent.overlaps(other) for other in taken):
                taken.append(extent)
                break
            artist.remove()
        else:
            left_out += 1
    return left_out


def draw_detections(
    images: list[torch.Tensor],
    detections: list[ImageDetections],
    class_names: list[str] | tuple[str, ...],
    path: str | Path,
    score_thresh: float = 0.5,
    titles: list[str] | None = None,
    ground_truth: list[torch.Tensor] | None = None,
    folder: OutputFolder | None = None,
) -> None:
    """``detections_figure`` saved as a PNG at ``path`` (in ``folder``, where given: ``save_figure``)."""
    fig = detections_figure(images, detections, class_names, score_thresh, titles, ground_truth)
    save_figure(fig, path, folder)
    fig.clear()  # a figure is a reference cycle: free its copy of the pixels now, not at the next collection


def detections_figure(
    images: list[torch.Tensor],
    detections: list[ImageDetections],
    class_names: list[str] | tuple[str, ...],
    score_thresh: float = 0.5,
    titles: list[str] | None = None,
    ground_truth: list[torch.Tensor] | None = None,
) -> Figure:
    """A grid of images with their detections above ``score_thresh`` (box, class, score); ground
    truth boxes, when given, are drawn dashed in white. An image with none says so on it (with the
    best score it had), and one whose labels could not all be placed says how many were left out."""
    fig, axes = image_grid(len(images), (4, 4))
    for i, (image, det) in enumerate(zip(images, detections)):
        ax = axes.flat[i]
        ax.imshow(image.permute(1, 2, 0).clamp(0, 1).cpu().numpy())
        for box in ground_truth[i].tolist() if ground_truth else []:
            draw_box(ax, box, "white", dashed=True)
        keep = det.scores >= score_thresh
        order = det.scores[keep].argsort(descending=True)
        labels = []
        for box, score, label in zip(
            det.boxes[keep][order].tolist(), det.scores[keep][order].tolist(), det.labels[keep][order].tolist()
        ):
            draw_box(ax, box, class_colour(label))
            labels.append((box, f"{class_names[label - 1]} {score:.2f}", class_colour(label)))
        title = short_title(titles[i]) if titles else ""
        if not labels:
            _note(ax, no_detection_note(det, class_names, score_thresh))
        if titles:
            ax.set_title(title, fontsize=9)
        left_out = place_labels(fig, ax, labels)
        if left_out:
            ax.set_title(f"{title}\n{left_out} of {len(labels)} labels left out (no room)", fontsize=9)
    return fig


def no_detection_note(det: ImageDetections, class_names: list[str] | tuple[str, ...], score_thresh: float) -> str:
    """What an image without a detection at ``score_thresh`` says on it: the best score it had, if any."""
    if not len(det.scores):
        return "no detections"
    best = int(det.scores.argmax())
    return (
        f"no detection scoring >= {score_thresh:g}\n"
        f"(best {float(det.scores[best]):.2f}, {class_names[int(det.labels[best]) - 1]})"
    )


def _note(ax: Axes, text: str) -> None:
    """``text`` in a box at the middle of an image."""
    ax.text(
        0.5,
        0.5,
        text,
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=9,
        color="black",
        bbox=dict(facecolor="white", alpha=0.85, pad=4, lw=0),
    )
