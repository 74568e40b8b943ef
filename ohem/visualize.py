"""Detections drawn on images, saved as PNG (matplotlib, no screen needed)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ohem.evaluation import ImageDetections  # noqa: E402

COLOURS = plt.get_cmap("tab10").colors


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
    cols = min(len(images), 4)
    rows = math.ceil(len(images) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (image, det) in enumerate(zip(images, detections)):
        ax = axes.flat[i]
        ax.imshow(image.permute(1, 2, 0).clamp(0, 1).cpu().numpy())
        if titles:
            ax.set_title(titles[i], fontsize=9)
        for box in ground_truth[i].tolist() if ground_truth else []:
            ax.add_patch(
                plt.Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, ec="white", ls="--", lw=1)
            )
        keep = det.scores >= score_thresh
        for box, score, label in zip(det.boxes[keep].tolist(), det.scores[keep].tolist(), det.labels[keep].tolist()):
            colour = COLOURS[(label - 1) % len(COLOURS)]
            ax.add_patch(plt.Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, ec=colour, lw=2))
            ax.text(
                box[0],
                box[1],
                f"{class_names[label - 1]} {score:.2f}",
                fontsize=7,
                color="white",
                va="bottom",
                bbox=dict(facecolor=colour, alpha=0.8, pad=1, lw=0),
            )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
