"""What OHEM mined, aggregated per interval of iterations, for ``mining.jsonl`` and ``ohem report``.

Each step's counts, loss sums and hardest-RoI candidates are accumulated on the mined tensors'
device, without reading a value back (on CUDA that would wait for the step's kernels); the host
gets them once per record, at ``flush``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ohem.mining.pooling import fixed_bincount

IOU_BINS = 10  # histogram of the mined RoIs' IoU with their best gt box over [0, 1]
HARDEST_KEPT = 8  # hardest RoIs remembered per interval, for the gallery


class MiningRecorder:
    """Accumulates the ``roi_mining`` records of ``SamplingRoIHeads`` over steps; ``flush`` returns one
    JSON-able record."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self._reset()

    def _reset(self) -> None:
        self.steps = 0
        self.num_mined = 0
        self._sums: dict[str, Tensor] = {}  # iou_hist, label_counts, mined_loss, all_loss: on the device
        self._steps: list[tuple[int, list[int], list[tuple[float, float]]]] = []  # per step: host metadata
        self._hardest: dict[str, Tensor] = {}  # the hardest candidates so far, at most HARDEST_KEPT rows

    def add(
        self,
        iteration: int,
        mining: dict[str, Any],
        image_indices: list[int],
        image_sizes: list[tuple[int, int]],
        all_roi_loss: Tensor | float,
    ) -> None:
        """One step: ``mining`` from the head, the batch's dataset indices and original (h, w), and the
        step's mean loss over all RoIs (a tensor, read at ``flush``)."""
        losses, labels, iou = mining["losses"].detach(), mining["labels"], mining["iou"].detach()
        device = losses.device
        # histc's bins over [0, 1] (float32 x * 10, truncated; 1.0 in the last bin), counted without a sync
        bins = (iou.float().clamp(0, 1) * IOU_BINS).long().clamp(max=IOU_BINS - 1)
        # labels above num_classes are dropped, as bincount(...)[: num_classes + 1] did
        classes = labels.clamp(max=self.num_classes + 1)
        step = {
            "iou_hist": fixed_bincount(bins, IOU_BINS),
            "label_counts": fixed_bincount(classes, self.num_classes + 2)[: self.num_classes + 1],
            "mined_loss": losses.sum().double(),
            "all_loss": torch.as_tensor(all_roi_loss, device=device).detach().double(),
        }
        self._sums = {k: self._sums[k] + v if k in self._sums else v for k, v in step.items()}
        scales = [(w / rw, h / rh) for (h, w), (rh, rw) in zip(image_sizes, mining["image_shapes"])]
        self._steps.append((iteration, list(image_indices), scales))
        self._keep_hardest(mining, losses, iou, len(self._steps) - 1)
        self.steps += 1
        self.num_mined += losses.numel()

    def _keep_hardest(self, mining: dict[str, Any], losses: Tensor, iou: Tensor, slot: int) -> None:
        """Merge this step's hardest RoIs into the kept ones: the HARDEST_KEPT highest losses, earlier
        steps first among equal losses (stable sorts, so the order is the host list's was)."""
        top = torch.sort(losses, descending=True, stable=True).indices[:HARDEST_KEPT]
        new = {
            "loss": losses[top],
            "iou": iou[top],
            "label": mining["labels"][top],
            "box": mining["boxes"][top].detach(),
            "pos": mining["image_ids"][top],
            "slot": torch.full_like(top, slot),
        }
        both = {k: torch.cat([self._hardest[k], v]) if self._hardest else v for k, v in new.items()}
        keep = torch.sort(both["loss"], descending=True, stable=True).indices[:HARDEST_KEPT]
        self._hardest = {k: v[keep] for k, v in both.items()}

    def flush(self, iteration: int) -> dict[str, Any]:
        """The record of the steps added since the last flush (at least one)."""
        sums: dict[str, Any] = {k: v.tolist() for k, v in self._sums.items()}  # the one copy to the host per record
        fg = sum(sums["label_counts"][1:])
        record = {
            "iteration": iteration,
            "steps": self.steps,
            "num_mined": self.num_mined,
            "mined_fg_fraction": fg / max(self.num_mined, 1),
            "mined_loss_mean": sums["mined_loss"] / max(self.num_mined, 1),
            "all_roi_loss_mean": sums["all_loss"] / self.steps,
            "iou_hist": sums["iou_hist"],
            "label_counts": sums["label_counts"],
            "hardest": self._hardest_records(),
        }
        self._reset()
        return record

    def _hardest_records(self) -> list[dict[str, Any]]:
        """The kept hardest RoIs as JSON, boxes in their image's original size, by rounded loss (ties:
        the step added first, then the higher loss)."""
        if not self._hardest:
            return []
        h = {k: v.cpu() for k, v in self._hardest.items()}
        slots, positions = h["slot"].tolist(), h["pos"].tolist()
        out = []
        for j in sorted(range(len(slots)), key=lambda j: slots[j]):  # stable: within a step, by loss
            iteration, indices, scales = self._steps[slots[j]]
            pos = positions[j]
            sx, sy = scales[pos]
            box = h["box"][j] * torch.tensor([sx, sy, sx, sy])
            out.append(
                {
                    "iteration": iteration,
                    "image_index": indices[pos],
                    "box": [round(v, 2) for v in box.tolist()],
                    "label": int(h["label"][j]),
                    "loss": round(float(h["loss"][j]), 5),
                    "iou": round(float(h["iou"][j]), 4),
                }
            )
        return sorted(out, key=lambda r: -r["loss"])
