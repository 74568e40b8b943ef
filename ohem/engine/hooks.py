"""What the training loop does around each step, one hook per concern. ``run_loop`` calls, in list
order, ``before_train``, then per step ``before_step`` (with the step's ``EventStorage`` before the
model runs) and ``after_step`` (with the storage the model reported into and the step's record, the
``log.jsonl`` line, which a hook may add fields to), and ``after_train`` on every exit path."""

from __future__ import annotations

import math
import os
import re
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from ohem import distributed
from ohem.checkpoint import save_checkpoint
from ohem.evaluation.roi_loss import all_roi_mean_loss
from ohem.evaluation.score import METRIC_NAMES, evaluate, format_ap
from ohem.events import EventStorage
from ohem.inference import TestTime, predict
from ohem.mining.enable import installed_sampler
from ohem.mining.stall import StallWatch
from ohem.output_folder import OutputFolder
from ohem.util import has_module, progress_bar, refuse_symlink

if TYPE_CHECKING:
    from ohem.engine.trainer import Run


BEST_CHECKPOINT = "checkpoint_best.pt"
ITER_CHECKPOINT = re.compile(r"checkpoint_iter(\d+)\.pt")


class Hook:
    def before_train(self, run: Run) -> None: ...

    def before_step(self, run: Run, storage: EventStorage) -> None: ...

    def after_step(self, run: Run, storage: EventStorage, record: dict[str, Any]) -> None: ...

    def after_train(self, run: Run) -> None: ...


def default_hooks(run: Run) -> list[Hook]:
    """The hooks of every run, in the order they act on a step's record."""
    return [TimingHook(), CollapseWatchHook(), SyncCheckHook(), LogHook(), ProgressHook(), EvalHook(), CheckpointHook()]


def is_last(run: Run, storage: EventStorage) -> bool:
    return storage.iteration + 1 == run.cfg.solver.iterations


def every(period: int, storage: EventStorage) -> bool:
    """Whether the step just taken ends a period of ``period`` iterations (0: never)."""
    return period > 0 and (storage.iteration + 1) % period == 0


class TimingHook(Hook):
    """``time_mining`` (labelling, read-only pass and selection, summed over the step's modules) in the
    record: on the CPU every step; on CUDA every ``train.timing_every`` steps, when the modules wait for
    the queued kernels around it (each wait stalls the queue, so not on every step)."""

    def timed(self, run: Run, storage: EventStorage) -> bool:
        return run.device.type != "cuda" or every(run.cfg.train.timing_every, storage)

    def before_step(self, run: Run, storage: EventStorage) -> None:
        storage.sync_timing = run.device.type == "cuda" and self.timed(run, storage)

    def after_step(self, run: Run, storage: EventStorage, record: dict[str, Any]) -> None:
        if self.timed(run, storage) and "time_mining" in storage.scalars:
            record["time_mining"] = storage.scalars["time_mining"]


class CollapseWatchHook(Hook):
    """The one-line warning of ``ohem.mining.stall`` for a box head that scores every RoI alike, fed
    from the steps that ran a read-only pass, after the lr warm-up and the sampler's ``mining_start``
    (ohem's ``sampler.start``)."""

    def before_train(self, run: Run) -> None:
        cfg, sampler = run.cfg, installed_sampler(run.core)
        start = sampler.mining_start if sampler is not None else 0
        self.watch = StallWatch(cfg.train.mining_log_every, max(cfg.solver.warmup_iterations, start))

    def after_step(self, run: Run, storage: EventStorage, record: dict[str, Any]) -> None:
        if not run.d.main or "ohem_score_spread" not in record:
            return
        warning = self.watch.add(record["iteration"], record["ohem_score_spread"], record["ohem_all_roi_loss"])
        if warning:
            tqdm.write(f"ohem train: warning: {warning}", file=sys.stderr)


class SyncCheckHook(Hook):
    """torchrun: every ``train.check_sync_every`` steps, raise if the processes' weights drifted apart."""

    def after_step(self, run: Run, storage: EventStorage, record: dict[str, Any]) -> None:
        if not (run.d.active and every(run.cfg.train.check_sync_every, storage)):
            return
        checksum = torch.stack([p.detach().double().sum() for p in run.core.parameters()]).cpu()
        sums = distributed.gather(run.d, checksum)
        if any(not torch.equal(sums[0], other) for other in sums[1:]):
            raise RuntimeError(f"processes hold different weights after iteration {record['iteration']}")


class LogHook(Hook):
    """The step's record to ``log.jsonl`` and TensorBoard; what was mined (the storage's ``roi_mining``
    records, one per forward pass) to ``mining.jsonl`` every ``train.mining_log_every`` steps."""

    def after_step(self, run: Run, storage: EventStorage, record: dict[str, Any]) -> None:
        batches = storage.records.get("batch", [])
        for mined, (indices, sizes) in zip(storage.records.get("roi_mining", []), batches):
            run.log.mined(record["iteration"], mined, indices, sizes)
        if every(run.cfg.train.mining_log_every, storage) or is_last(run, storage):
            run.log.flush_mining(record["iteration"])
        run.log.step(record)
        run.log.flush()

    def after_train(self, run: Run) -> None:
        run.log.close()


class ProgressHook(Hook):
    """A progress bar on the main process, with the loss and the smoothed images per second."""

    def before_train(self, run: Run) -> None:
        self.bar = progress_bar(run.cfg.solver.iterations, "train", enabled=run.d.main, initial=run.start)
        self.speed: float | None = None

    def after_step(self, run: Run, storage: EventStorage, record: dict[str, Any]) -> None:
        rate = run.images_per_step / (record["time_data"] + record["time_step"])
        self.speed = rate if self.speed is None else 0.9 * self.speed + 0.1 * rate
        self.bar.set_postfix({"loss": f"{record['loss']:.3f}", "img/s": f"{self.speed:.1f}"}, refresh=False)
        self.bar.update()

    def after_train(self, run: Run) -> None:
        self.bar.close()


class EvalHook(Hook):
    """Test metrics every ``train.eval_every`` steps and after the last (``metrics``: the latest);
    ``checkpoint_best.pt`` at each evaluation that beats the best so far (``run.best``)."""

    def __init__(self) -> None:
        self.metrics: dict[str, Any] | None = None

    def after_step(self, run: Run, storage: EventStorage, record: dict[str, Any]) -> None:
        if is_last(run, storage) or every(run.cfg.train.eval_every, storage):
            self.metrics = evaluate_during_training(run, record["iteration"])
            keep_best(run, record["iteration"], self.metrics)


class CheckpointHook(Hook):
    """``checkpoint_last.pt`` every ``train.checkpoint_every`` steps and after the last; with
    ``train.keep_checkpoints`` N > 1, the N - 1 most recent of them as ``checkpoint_iterNNNNNN.pt`` too."""

    def after_step(self, run: Run, storage: EventStorage, record: dict[str, Any]) -> None:
        if is_last(run, storage) or every(run.cfg.train.checkpoint_every, storage):
            save(run, record["iteration"])
            if run.d.main and run.cfg.train.keep_checkpoints > 1:
                keep_recent(run.files, run.checkpoint_path, record["iteration"], run.cfg.train.keep_checkpoints - 1)


def keep_best(run: Run, iteration: int, metrics: dict[str, Any]) -> None:
    """Record ``metrics`` as the best so far and write ``checkpoint_best.pt`` if its mAP beats
    ``run.best`` (restored on ``--resume``, so a resumed run never replaces a better best)."""
    value = metrics.get("mAP")
    if value is None or not math.isfinite(value):  # nothing measured (no test objects): not a best
        return
    if run.best is not None and value <= run.best["mAP"]:
        return
    run.best = {"iteration": iteration, "metric": run.cfg.train.eval_metric, "mAP": float(value)}
    save(run, iteration, run.out / BEST_CHECKPOINT)


def keep_recent(folder: OutputFolder, last: Path, iteration: int, keep: int) -> None:
    """``last`` (in ``folder``, the run folder held open) also as ``checkpoint_iterNNNNNN.pt`` (a hard link
    where the file system has them: the atomic rewrite of ``last`` replaces its name, not the linked file);
    then delete all but the ``keep`` most recent such files."""
    out = folder.path
    path = out / f"checkpoint_iter{iteration:06d}.pt"
    refuse_symlink(path)
    folder.check()  # the links and removals below go by path: only into the folder checked
    path.unlink(missing_ok=True)  # a resumed run redoing this iteration
    try:
        os.link(last.name, path.name, src_dir_fd=folder.fd, dst_dir_fd=folder.fd)
    except OSError:  # no hard links here: a copy, written atomically
        with folder.open(path, binary=True) as f, open(last, "rb") as src:
            shutil.copyfileobj(src, f)
    folder.check()
    for old in periodic_checkpoints(out)[:-keep]:
        old.unlink(missing_ok=True)


def periodic_checkpoints(out: Path) -> list[Path]:
    """The ``checkpoint_iterNNNNNN.pt`` files in ``out``, oldest first."""
    found = [p for p in out.glob("checkpoint_iter*.pt") if ITER_CHECKPOINT.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(ITER_CHECKPOINT.fullmatch(p.name).group(1)))  # type: ignore[union-attr]


def save(run: Run, iteration: int, path: Path | None = None) -> None:
    """A checkpoint of the run (with its solver state, so any of them can be trained on) at ``path``
    (default ``checkpoint_last.pt``); every process takes part (their RNG states are gathered)."""
    rng = distributed.gather(run.d, torch.get_rng_state())
    if run.d.main:
        solver = {
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None,
        }
        save_checkpoint(
            path or run.checkpoint_path,
            run.core,
            run.cfg,
            run.classes,
            iteration,
            solver,
            rng if run.d.active else None,
            run.best,
            sampler.state_dict() if (sampler := installed_sampler(run.core)) is not None else None,
            folder=run.files,
        )
    distributed.barrier(run.d)


def evaluate_during_training(run: Run, iteration: int) -> dict[str, Any]:
    """Test-set metrics (and, with ``train.roi_loss_images``, the mean loss over all RoIs of training images)."""
    cfg, d = run.cfg, run.d
    metrics = test_metrics(run)
    entry: dict[str, Any] = {"iteration": iteration, "eval": metrics}
    message = f"iteration {iteration}: test {METRIC_NAMES[cfg.train.eval_metric]} {format_ap(metrics['mAP'])}"
    indices = list(range(min(cfg.train.roi_loss_images, len(run.train_set))))
    if indices:
        mine = all_roi_mean_loss(
            run.core, run.train_set, indices[d.rank :: d.world], run.device, cfg.test.images_per_batch, run.workers
        )
        entry["train_roi_loss"] = distributed.mean(d, {"v": mine})["v"]
        message += f", mean loss over all RoIs of train images {entry['train_roi_loss']:.4f}"
    run.log.evaluation(entry)
    if d.main:
        tqdm.write(message)
    return metrics


def test_metrics(run: Run) -> dict[str, Any]:
    """The model's ``train.eval_metric`` on the test split, with the config's test-time options."""
    cfg = run.cfg
    test_time = TestTime.from_config(cfg.model)
    return evaluate(
        run.core,
        run.test_set,
        run.device,
        cfg.test.images_per_batch,
        cfg.train.eval_metric,
        test_time,
        run.d,
        run.workers,
    )


def draw_test_images(run: Run) -> None:
    """``detections.png``: the first ``train.vis_images`` test images with their detections (0: none;
    without matplotlib, ``ohem[plots]``, none either: ``train`` said so when it started)."""
    from ohem.visualize import draw_detections, image_title  # matplotlib: imported only when drawing

    t = run.cfg.train
    if t.vis_images == 0 or not has_module("matplotlib"):  # drawing turned off, or not installed
        return
    subset = [run.test_set[i] for i in range(min(t.vis_images, len(run.test_set)))]
    detections = predict(
        run.core, subset, run.device, run.cfg.test.images_per_batch, test_time=TestTime.from_config(run.cfg.model)
    )
    images, boxes = [image for image, _ in subset], [target["boxes"] for _, target in subset]
    titles = [image_title(run.test_set, i) for i in range(len(subset))]  # file names, not COCO ids
    path = run.out / "detections.png"
    draw_detections(
        images, detections, run.classes, path, t.vis_score_thresh, titles=titles, ground_truth=boxes, folder=run.files
    )
