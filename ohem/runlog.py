"""A run's logs: ``log.jsonl`` (one JSON object per iteration with every loss and mining statistic,
one per evaluation), ``mining.jsonl`` (OHEM: what was mined, every ``train.mining_log_every``
iterations) and TensorBoard events under ``tb/``. Only the main process writes; on the others
every method is a no-op."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ohem.mining.record import MiningRecorder
from ohem.util import atomic_open

LOG_FILES = ("log.jsonl", "mining.jsonl")


class RunLog:
    def __init__(self, out: Path, resume_from: int | None, enabled: bool, num_classes: int | None) -> None:
        """``resume_from``: the checkpoint's iteration (later records are dropped), None for a new run
        (earlier logs are removed). ``num_classes``: set for OHEM runs, which record what they mine."""
        self.enabled = enabled
        if not enabled:
            return
        for name in LOG_FILES:
            if resume_from is None:
                (out / name).unlink(missing_ok=True)
            else:
                truncate_jsonl(out / name, resume_from)
        from torch.utils.tensorboard import SummaryWriter  # slow import: only when training

        self.writer = SummaryWriter(str(out / "tb"), purge_step=None if resume_from is None else resume_from + 1)
        self.log = (out / "log.jsonl").open("a")
        self.recorder = MiningRecorder(num_classes) if num_classes else None
        self.mining_file = (out / "mining.jsonl").open("a") if self.recorder else None

    def step(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.log.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key != "iteration":
                self.writer.add_scalar(f"train/{key}", value, record["iteration"])

    def mined(self, iteration: int, heads: torch.nn.Module, indices: list[int], images: list, losses: dict) -> None:
        """One forward pass's mined RoIs (``heads.last_mining``), for ``mining.jsonl``."""
        if self.enabled and self.recorder:
            sizes = [tuple(image.shape[-2:]) for image in images]
            self.recorder.add(iteration, heads.last_mining, indices, sizes, losses["ohem_all_roi_loss"].item())

    def flush_mining(self, iteration: int) -> None:
        if not (self.enabled and self.recorder):
            return
        record = self.recorder.flush(iteration)
        self.mining_file.write(json.dumps(record) + "\n")
        self.mining_file.flush()
        for key in ("mined_fg_fraction", "mined_loss_mean", "all_roi_loss_mean"):
            self.writer.add_scalar(f"mining/{key}", record[key], iteration)

    def evaluation(self, entry: dict[str, Any]) -> None:
        """``{"iteration", "eval": metrics, ["train_roi_loss"]}``."""
        if not self.enabled:
            return
        self.log.write(json.dumps(entry) + "\n")
        self.writer.add_scalar("eval/mAP", entry["eval"]["mAP"], entry["iteration"])
        if "train_roi_loss" in entry:
            self.writer.add_scalar("eval/train_roi_loss", entry["train_roi_loss"], entry["iteration"])

    def flush(self) -> None:
        if self.enabled:
            self.log.flush()

    def close(self) -> None:
        if self.enabled:
            for f in (self.log, self.mining_file, self.writer):
                if f:
                    f.close()


def truncate_jsonl(path: Path, iteration: int) -> None:
    """Keep the records of ``path`` up to ``iteration`` (those a resumed run will not repeat)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["iteration"] <= iteration]
    with atomic_open(path) as f:
        f.write("".join(line + "\n" for line in kept))
