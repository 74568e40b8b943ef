"""What OHEM mined, aggregated per interval of iterations, for ``mining.jsonl`` and ``ohem report``."""

from __future__ import annotations

from typing import Any

import torch

IOU_BINS = 10  # histogram of the mined RoIs' IoU with their best gt box over [0, 1]
HARDEST_KEPT = 8  # hardest RoIs remembered per interval, for the gallery


class MiningRecorder:
    """Accumulates ``OHEMRoIHeads.last_mining`` over steps; ``flush`` returns one JSON-able record."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self._reset()

    def _reset(self) -> None:
        self.steps = 0
        self.iou_hist = torch.zeros(IOU_BINS, dtype=torch.long)
        self.label_counts = torch.zeros(self.num_classes + 1, dtype=torch.long)
        self.mined_loss_sum = 0.0
        self.all_loss_sum = 0.0
        self.num_mined = 0
        self.hardest: list[dict[str, Any]] = []

    def add(
        self,
        iteration: int,
        mining: dict[str, Any],
        image_indices: list[int],
        image_sizes: list[tuple[int, int]],
        all_roi_loss: float,
    ) -> None:
        """One step: ``mining`` from the head, the batch's dataset indices and original (h, w)."""
        losses, labels, iou = mining["losses"], mining["labels"], mining["iou"]
        self.steps += 1
        self.num_mined += losses.numel()
        self.mined_loss_sum += losses.sum().item()
        self.all_loss_sum += all_roi_loss
        self.iou_hist += torch.histc(iou.float().clamp(0, 1), bins=IOU_BINS, min=0, max=1).long()
        self.label_counts += torch.bincount(labels, minlength=self.num_classes + 1)[: self.num_classes + 1]
        for j in torch.argsort(losses, descending=True)[:HARDEST_KEPT].tolist():
            pos = int(mining["image_ids"][j])
            (h, w), (rh, rw) = image_sizes[pos], mining["image_shapes"][pos]
            box = mining["boxes"][j] * torch.tensor([w / rw, h / rh, w / rw, h / rh])
            self.hardest.append({
                "iteration": iteration,
                "image_index": image_indices[pos],
                "box": [round(v, 2) for v in box.tolist()],
                "label": int(labels[j]),
                "loss": round(float(losses[j]), 5),
                "iou": round(float(iou[j]), 4),
            })  # fmt: skip
        self.hardest = sorted(self.hardest, key=lambda r: -r["loss"])[:HARDEST_KEPT]

    def flush(self, iteration: int) -> dict[str, Any]:
        """The record of the steps added since the last flush (at least one)."""
        fg = int(self.label_counts[1:].sum())
        record = {
            "iteration": iteration,
            "steps": self.steps,
            "num_mined": self.num_mined,
            "mined_fg_fraction": fg / max(self.num_mined, 1),
            "mined_loss_mean": self.mined_loss_sum / max(self.num_mined, 1),
            "all_roi_loss_mean": self.all_loss_sum / self.steps,
            "iou_hist": self.iou_hist.tolist(),
            "label_counts": self.label_counts.tolist(),
            "hardest": self.hardest,
        }
        self._reset()
        return record
