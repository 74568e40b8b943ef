"""A run's logs: ``log.jsonl`` (one JSON object per iteration with every loss and mining statistic,
one per evaluation), ``mining.jsonl`` (OHEM: what was mined, every ``train.mining_log_every``
iterations) and TensorBoard events under ``tb/`` (where TensorBoard is installed: ``ohem[tensorboard]``).
Only the main process writes; on the others every method is a no-op."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ohem.mining.record import MiningRecorder
from ohem.output_folder import OutputFolder
from ohem.util import atomic_open, has_module, install_hint, one_line, output_folder, strict_json

LOG_FILES = ("log.jsonl", "mining.jsonl")


def tensorboard_available() -> bool:
    return has_module("tensorboard") and has_module("torch.utils.tensorboard")  # slow import: only when training


def skipped_outputs(draws: bool) -> str | None:
    """What a run will not write because an optional extra is missing (TensorBoard: ``tb/``; matplotlib:
    ``detections.png``, where the run ``draws``), as one line, or None."""
    skipped = []
    if not tensorboard_available():
        skipped.append(f"tb/ (TensorBoard is not installed: {install_hint('tensorboard')})")
    if draws and not has_module("matplotlib"):
        skipped.append(f"detections.png (matplotlib is not installed: {install_hint('matplotlib')})")
    return f"not writing {'; nor '.join(skipped)}" if skipped else None


class RunLog:
    def __init__(
        self, out: Path, resume_from: int | None, enabled: bool, num_classes: int, folder: OutputFolder | None = None
    ) -> None:
        """``resume_from``: the checkpoint's iteration (later records are dropped), None for a new run
        (earlier logs are removed). ``mining.jsonl`` is written only by runs that report what they mine.
        ``folder``: ``out`` held open (``enabled``: required), checked before every record and flush: a run
        folder (or ``tb/``) swapped mid-run stops the run (``FolderReplaced``)."""
        self.enabled = enabled
        if not enabled:
            return
        assert folder is not None, "the main process writes its logs through an OutputFolder"
        self.folder = folder
        folder.check()
        for name in LOG_FILES:
            if resume_from is None:
                (out / name).unlink(missing_ok=True)
            else:
                truncate_jsonl(out / name, resume_from)
        self.writer: Any = None  # no TensorBoard: the other logs are written all the same
        if tensorboard_available():
            from torch.utils.tensorboard import SummaryWriter

            purge_step = None if resume_from is None else resume_from + 1
            tb = output_folder(out / "tb", "TensorBoard folder", inside=out)
            folder.subfolder("tb")  # held: TensorBoard writes there by path, so it is checked with the folder
            self.writer = SummaryWriter(str(tb), purge_step=purge_step)
        self.log = folder.append(out / "log.jsonl")
        self.recorder = MiningRecorder(num_classes)
        self.mining_path = out / "mining.jsonl"
        self.mining_file: Any = None  # opened at the first record

    def step(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.folder.check()  # every iteration: the folder (and tb/) still the one written into
        self.log.write(strict_json(record, indent=None))  # NaN or infinity: null
        for key, value in record.items():
            if key != "iteration":
                self._scalar(f"train/{key}", value, record["iteration"])

    def mined(self, iteration: int, mining: dict[str, Any], indices: list[int], sizes: list[tuple[int, int]]) -> None:
        """One forward pass's mined RoIs (a ``roi_mining`` record of ``ohem.events``), for ``mining.jsonl``;
        ``sizes``: the batch's images' original (h, w)."""
        if self.enabled:
            # tensors, not values: reading them here would wait for the step's kernels on CUDA
            self.recorder.add(iteration, mining, indices, sizes, mining["all_roi_loss"])

    def flush_mining(self, iteration: int) -> None:
        if not self.enabled or self.recorder.steps == 0:
            return
        if self.mining_file is None:
            self.mining_file = self.folder.append(self.mining_path)
        self.folder.check()
        record = self.recorder.flush(iteration)
        self.mining_file.write(strict_json(record, indent=None))
        self.mining_file.flush()
        for key in ("mined_fg_fraction", "mined_loss_mean", "all_roi_loss_mean"):
            self._scalar(f"mining/{key}", record[key], iteration)

    def evaluation(self, entry: dict[str, Any]) -> None:
        """``{"iteration", "eval": metrics, ["train_roi_loss"]}``."""
        if not self.enabled:
            return
        self.folder.check()
        self.log.write(strict_json(entry, indent=None))  # a NaN mAP (nothing measured): null
        if entry["eval"]["mAP"] is not None and math.isfinite(entry["eval"]["mAP"]):
            self._scalar("eval/mAP", entry["eval"]["mAP"], entry["iteration"])
        if "train_roi_loss" in entry:
            self._scalar("eval/train_roi_loss", entry["train_roi_loss"], entry["iteration"])

    def _scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        if self.enabled:
            self.folder.check()
            self.log.flush()

    def close(self) -> None:
        if self.enabled:
            for f in (self.log, self.mining_file, self.writer):
                if f:
                    f.close()


def truncate_jsonl(path: Path, iteration: int) -> None:
    """Keep the records of ``path`` up to ``iteration`` (those a resumed run will not repeat). A torn
    last line (the run was killed while writing it) is dropped: the checkpoint is the truth. Any
    other line that is not a JSON record with an ``iteration`` is a one-line error naming it."""
    if not path.exists():
        return
    kept = [line for _, line, record in read_jsonl_records(path) if record["iteration"] <= iteration]
    with atomic_open(path) as f:
        f.write("".join(line + "\n" for line in kept))


def read_jsonl_records(path: Path) -> list[tuple[int, str, dict[str, Any]]]:
    """``(line number, line, record)`` of each record of a JSON-lines log; a torn last line is left
    out, any other line that is not a JSON object with an integer ``iteration`` is an error."""
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as e:
        raise ValueError(f"{path}: cannot be read: {e.strerror or e}") from None
    last = max((n for n, raw in enumerate(lines, start=1) if raw.strip()), default=0)
    out = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
            record = json.loads(line)
            if not isinstance(record, dict) or type(record.get("iteration")) is not int:
                raise ValueError("not a record with an integer 'iteration'")
        except (ValueError, RecursionError) as e:
            if number == last:
                break  # the last line: torn by a crash mid-write
            reason = e.msg if isinstance(e, json.JSONDecodeError) else one_line(str(e)) or type(e).__name__
            raise ValueError(f"{path}: line {number}: {reason}") from None
        out.append((number, line.rstrip("\r"), record))
    return out


def step_seconds(path: Path, skip: int = 10) -> tuple[float, float]:
    """A ``log.jsonl``'s wall seconds per training iteration (``time_data + time_step``, its first
    ``skip`` iterations left out as warm-up) and the share of them spent waiting for data."""
    steps = [record for _, _, record in read_jsonl_records(path) if "eval" not in record][skip:]
    wait = sum(r["time_data"] for r in steps)
    total = wait + sum(r["time_step"] for r in steps)
    return total / len(steps), wait / total
