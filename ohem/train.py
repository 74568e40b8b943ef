"""Training: ``train(cfg, out_dir)`` sets a run up, then for each iteration takes one SGD step
(``train_step``), logs it, and evaluates and checkpoints on schedule. The run directory holds
``config.yaml``, the logs of ``ohem.runlog``, ``checkpoint_last.pt`` (written atomically),
``metrics.json`` (strict JSON) and ``detections.png``; it belongs to one run (``ohem.run_folder``:
locked while training, a run in it continued only with ``resume`` or moved aside with ``force``).
Every config check that needs no data (``check_run_config``) runs before anything is written."""

from __future__ import annotations

import contextlib
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from tqdm import tqdm

from ohem import distributed, run_folder
from ohem.checkpoint import load_checkpoint, load_state_dict_file, restore_rng, save_checkpoint
from ohem.config import Config
from ohem.data import aspect_groups, batch_indices, build_dataset, grouped_batch_indices
from ohem.data.loader import Batch, TrainBatches, loader_workers, train_loader
from ohem.evaluation.roi_loss import mean_roi_loss
from ohem.evaluation.score import METRIC_NAMES, evaluate
from ohem.inference import TestTime, load_weights_into, predict, state_dict_problems
from ohem.mining import OHEMRoIHeads
from ohem.mining.stall import StallWatch
from ohem.models import build_detector
from ohem.runlog import RunLog
from ohem.structures import DetectionDataset
from ohem.util import atomic_open, make_out_dir, one_line, strict_json


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class Run:
    """Everything one training run holds."""

    cfg: Config
    out: Path
    d: distributed.Dist
    device: torch.device
    model: nn.Module  # what trains (DistributedDataParallel under torchrun)
    core: nn.Module  # the detector itself: saved, evaluated, logged
    train_set: DetectionDataset
    test_set: DetectionDataset
    classes: list[str]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    start: int
    log: RunLog
    groups: tuple[int, ...] | None  # orientation of each training image, when batches are grouped
    workers: int  # loader processes

    @property
    def images_per_step(self) -> int:  # this process's images per SGD step
        s = self.cfg.solver
        return s.images_per_batch * s.accumulate_steps // self.d.world

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint_last.pt"


def train(cfg: Config, out_dir: str | Path, resume: bool = False, force: bool = False) -> dict[str, Any]:
    """Train as configured, evaluate on the test split, write the run directory; returns the metrics.

    ``out_dir`` belongs to this run while it trains (``ohem.run_folder``): a folder that holds a run
    is continued with ``resume`` or, with ``force``, its old run is moved to ``previous-N/`` first."""
    out = Path(out_dir)
    d = distributed.setup(cfg.train.device)
    device = check_run_config(cfg, d)  # every config check before any file is touched
    created = d.main and not out.exists()
    if d.main:
        run_folder.check_arguments(out, resume, force)
        make_out_dir(out)
    try:
        with run_folder.claim(out, enabled=d.main):
            run = setup(cfg, out, resume, d, device, force)
            return _train(run)
    except BaseException:
        if created:  # a run that failed before writing anything leaves no empty folder behind
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


def _train(run: Run) -> dict[str, Any]:
    """The iterations of a set-up run, then the final evaluation, ``metrics.json`` and the drawing."""
    cfg = run.cfg
    t, metrics, speed = cfg.train, {}, None
    bar = tqdm(range(run.start, cfg.solver.iterations), initial=run.start, total=cfg.solver.iterations,
               desc="train", dynamic_ncols=True, **({} if run.d.main else {"disable": True}))  # fmt: skip
    # (on rank 0, TQDM_DISABLE and tqdm's other environment settings apply)
    batches = training_batches(run)
    ohem = isinstance(run.core.roi_heads, OHEMRoIHeads)
    watched_from = max(cfg.solver.warmup_iterations, cfg.sampler.ohem_start)
    watch = StallWatch(t.mining_log_every, watched_from) if ohem else None
    try:
        for it in bar:
            done = it + 1 == cfg.solver.iterations
            record = train_step(run, it, batches)
            if watch and run.d.main and (warning := watch.add(it + 1, record["ohem_score_spread"],
                                                              record["ohem_all_roi_loss"])):  # fmt: skip
                bar.write(f"ohem train: warning: {warning}", file=sys.stderr)
            if t.check_sync_every and (it + 1) % t.check_sync_every == 0:
                check_in_sync(run.d, run.core, it + 1)
            if (it + 1) % t.mining_log_every == 0 or done:
                run.log.flush_mining(it + 1)
            run.log.step(record)
            rate = run.images_per_step / (record["time_data"] + record["time_step"])
            speed = rate if speed is None else 0.9 * speed + 0.1 * rate  # smoothed images/s
            bar.set_postfix({"loss": f"{record['loss']:.3f}", "img/s": f"{speed:.1f}"}, refresh=False)
            if done or (t.eval_every and (it + 1) % t.eval_every == 0):
                metrics = evaluate_during_training(run, it + 1, bar.write)
            if done or (t.checkpoint_every and (it + 1) % t.checkpoint_every == 0):
                save(run, it + 1)
            run.log.flush()
    finally:
        bar.close()
        run.log.close()
    if not metrics:  # resumed a finished run
        metrics = test_metrics(run)
    if run.d.main:
        with atomic_open(run.out / "metrics.json") as f:
            f.write(strict_json(metrics))
        draw_test_images(run)
    return metrics


def train_step(run: Run, it: int, batches: Iterator[Batch]) -> dict[str, float]:
    """One SGD step: ``solver.accumulate_steps`` forward/backward passes, then the update. Times the
    wait for data (``time_data``), forward + backward + update (``time_step``) and, within it, the
    mining (``time_mining``: OHEM's read-only pass and selection, on CUDA every ``train.timing_every``)."""
    accumulate, d = run.cfg.solver.accumulate_steps, run.d
    run.model.train()
    run.optimizer.zero_grad(set_to_none=True)
    timed_mining = prepare_mining(run, it)
    sums: dict[str, float] = {}
    waited = stepped = mining = 0.0
    for part in range(accumulate):
        tic = time.perf_counter()
        indices, images, targets = next(batches)
        synchronize(run.device)  # the copies to the device count as data time
        waited, tic = waited + time.perf_counter() - tic, time.perf_counter()
        losses = forward_backward(run, it, part, images, targets)
        values = torch.stack([value.detach().float() for value in losses.values()]).tolist()  # one host copy
        for key, value in zip(losses, values):
            sums[key] = sums.get(key, 0.0) + value / accumulate
        stepped += time.perf_counter() - tic
        mining += sum(heads.last_mining_seconds for heads in mining_heads(run.core))
        run.log.mined(it + 1, run.core.roi_heads, indices, images, losses)
    tic = time.perf_counter()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    synchronize(run.device)
    record = {"iteration": it + 1, "lr": run.optimizer.param_groups[0]["lr"], **distributed.mean(d, sums)}
    record.update(time_data=waited, time_step=stepped + time.perf_counter() - tic)
    if timed_mining:
        record["time_mining"] = mining
    return record


def forward_backward(run: Run, it: int, part: int, images: list, targets: list) -> dict[str, torch.Tensor]:
    """Part ``part`` of step ``it``: the losses (``loss`` their sum) of one forward pass, backpropagated."""
    accumulate, d = run.cfg.solver.accumulate_steps, run.d
    # DDP averages gradients across processes only on the last pass of the step.
    with run.model.no_sync() if d.active and part < accumulate - 1 else contextlib.nullcontext():
        with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
            losses = run.model(images, targets)
        loss = sum(v.float() for k, v in losses.items() if k.startswith("loss_"))
        if not distributed.all_true(d, bool(torch.isfinite(loss))):
            last_good = run.checkpoint_path if run.checkpoint_path.exists() else "none"
            batch = batch_of(run, it * accumulate + part)
            raise NonFiniteLossError(f"non-finite loss at iteration {it + 1} on train images {batch}; "
                                     f"last good checkpoint: {last_good}")  # fmt: skip
        run.scaler.scale(loss / accumulate).backward()
    return {"loss": loss.detach(), **{k: v.detach() for k, v in losses.items()}}


def training_batches(run: Run) -> Iterator[Batch]:
    """The batches of the run's remaining steps (this process's share), from ``data.workers`` processes."""
    accumulate, cfg = run.cfg.solver.accumulate_steps, run.cfg
    positions = TrainBatches(lambda position: batch_of(run, position), run.start * accumulate,
                             cfg.solver.iterations * accumulate, run.d.rank, run.d.world)  # fmt: skip
    return train_loader(run.train_set, positions, run.workers, run.device, cfg.train.seed if cfg.data.hflip else None)


def mining_heads(model: nn.Module) -> list[nn.Module]:
    """The model's modules that mine (OHEM RoI heads, OHEM RPN): each times its mining."""
    return [m for m in (model.roi_heads, getattr(model, "rpn", None)) if hasattr(m, "last_mining_seconds")]


def prepare_mining(run: Run, it: int) -> bool:
    """Set the mining heads for step ``it``: OHEM mines from ``sampler.ohem_start`` on; the mining is
    timed always on the CPU and on CUDA every ``train.timing_every`` steps, with synchronizes around it
    (each stalls the GPU's queue, so not on every step). Returns whether this step times it."""
    if isinstance(run.core.roi_heads, OHEMRoIHeads):
        run.core.roi_heads.mining_on = it >= run.cfg.sampler.ohem_start
    cuda, mining = run.device.type == "cuda", mining_heads(run.core)
    timed = not cuda or (it + 1) % run.cfg.train.timing_every == 0
    for heads in mining:
        heads.sync_timing = cuda and timed
    return timed and bool(mining)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def setup(
    cfg: Config, out: Path, resume: bool, d: distributed.Dist, device: torch.device, force: bool = False
) -> Run:  # fmt: skip
    """Data, model, solver and logs of a run, restored from ``out``'s checkpoint with ``resume``.
    The caller holds the folder's lock and has checked the config (``check_run_config``)."""
    if d.main:
        run_folder.check_folder(out, resume, force)
    state = None
    if resume:  # the checkpoint is the truth: its config must be this one (bar the RESUMABLE keys)
        state = load_checkpoint(out / run_folder.CHECKPOINT)
        run_folder.check_resume_config(cfg, state, out / run_folder.CHECKPOINT)
    train_set, test_set = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "test")
    check_splits(cfg, train_set, test_set)
    if force and d.main:
        moved = run_folder.move_aside(out)
        if moved:
            print(f"ohem train: moved the earlier run in {out} to {moved}", file=sys.stderr)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    classes = list(train_set.classes)
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    model = build_model(cfg, len(classes))
    if cfg.model.init_weights and not resume:
        load_weights_into(model, load_state_dict_file(cfg.model.init_weights, "init_weights"), "init_weights")
    norm = getattr(model.roi_heads, "box_target_norm", None)
    if norm is not None and not resume:  # Fast R-CNN's target statistics (on resume: the checkpoint's)
        norm.fit(train_set, model.roi_heads.proposal_matcher.high_threshold, cfg.data.hflip)
    model.to(device)
    if d.active:  # same initial weights everywhere; then each rank samples with its own stream
        torch.manual_seed(cfg.train.seed + 1_000_003 * d.rank)
    optimizer = torch.optim.SGD(param_groups(model, cfg), lr=cfg.solver.lr, momentum=cfg.solver.momentum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, cfg))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")
    start = restore(state, out / run_folder.CHECKPOINT, model, optimizer, scheduler, scaler, d) if state else 0
    if d.main:
        with atomic_open(out / "config.yaml") as f:
            f.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    core = model
    if d.active:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    mining_classes = len(classes) if isinstance(core.roi_heads, OHEMRoIHeads) else None
    log = RunLog(out, start if resume else None, d.main, mining_classes)
    groups = tuple(aspect_groups(train_set)) if cfg.data.aspect_grouping else None
    workers = loader_workers(cfg.data.workers)
    return Run(cfg, out, d, device, model, core, train_set, test_set, classes, optimizer, scheduler, scaler,
               autocast_dtype(cfg.train.amp, device), start, log, groups, workers)  # fmt: skip


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """``build_detector``, with torch's error for backbone weights of another shape made one line."""
    try:
        return build_detector(cfg.model, cfg.sampler, num_classes)
    except RuntimeError as e:
        if not str(e).startswith("Error(s) in loading state_dict"):
            raise
        raise ValueError(f"model.backbone_weights {cfg.model.backbone_weights}: weights of another model "
                         f"({state_dict_problems(str(e))})") from None  # fmt: skip


def restore(
    state: dict[str, Any], path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
    scaler: torch.amp.GradScaler, d: distributed.Dist,
) -> int:  # fmt: skip
    """Load the checkpoint ``state``'s (read from ``path``) weights, solver state and RNG; returns its iteration."""
    missing = [key for key in ("model", "optimizer", "scheduler", "rng", "iteration") if state.get(key) is None]
    if missing:
        raise ValueError(f"checkpoint {path}: {missing[0]}: missing; a checkpoint to resume holds the solver state")
    if not isinstance(state["iteration"], int) or state["iteration"] < 0:
        raise ValueError(f"checkpoint {path}: iteration: expected a count, got {state['iteration']!r}")
    load_weights_into(model, state["model"], f"checkpoint {path}")
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        restore_rng(state, d.rank)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"checkpoint {path}: solver state: cannot be restored ({one_line(str(e))})") from None
    return state["iteration"]


def save(run: Run, iteration: int) -> None:
    rng = distributed.gather(run.d, torch.get_rng_state())
    if run.d.main:
        solver = {"optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                  "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None}  # fmt: skip
        save_checkpoint(run.checkpoint_path, run.core, run.cfg, run.classes, iteration, solver,
                        rng if run.d.active else None)  # fmt: skip
    distributed.barrier(run.d)


def evaluate_during_training(run: Run, iteration: int, write: Any) -> dict[str, Any]:
    """Test-set metrics (and, with ``train.roi_loss_images``, the mean loss over all RoIs of training images)."""
    cfg, d = run.cfg, run.d
    metrics = test_metrics(run)
    entry: dict[str, Any] = {"iteration": iteration, "eval": metrics}
    message = f"iteration {iteration}: test {METRIC_NAMES[cfg.train.eval_metric]} {metrics['mAP']:.4f}"
    indices = list(range(min(cfg.train.roi_loss_images, len(run.train_set))))
    if indices:
        mine = mean_roi_loss(run.core, run.train_set, indices[d.rank :: d.world], run.device,
                             cfg.test.images_per_batch, run.workers)  # fmt: skip
        entry["train_roi_loss"] = distributed.mean(d, {"v": mine})["v"]
        message += f", mean loss over all RoIs of train images {entry['train_roi_loss']:.4f}"
    run.log.evaluation(entry)
    write(message)
    return metrics


def test_metrics(run: Run) -> dict[str, Any]:
    """The model's ``train.eval_metric`` on the test split, with the config's test-time options."""
    cfg = run.cfg
    test_time = TestTime.from_config(cfg.model)
    return evaluate(run.core, run.test_set, run.device, cfg.test.images_per_batch, cfg.train.eval_metric,
                    test_time, run.d, run.workers)  # fmt: skip


def draw_test_images(run: Run) -> None:
    """``detections.png``: the first ``train.vis_images`` test images with their detections (0: none)."""
    from ohem.visualize import draw_detections  # matplotlib: imported only when drawing

    t = run.cfg.train
    if t.vis_images == 0:  # drawing turned off
        return
    subset = [run.test_set[i] for i in range(min(t.vis_images, len(run.test_set)))]
    detections = predict(run.core, subset, run.device, run.cfg.test.images_per_batch,
                         test_time=TestTime.from_config(run.cfg.model))  # fmt: skip
    images, boxes = [image for image, _ in subset], [target["boxes"] for _, target in subset]
    titles = [run.test_set.image_name(i) for i in range(len(subset))]
    path = run.out / "detections.png"
    draw_detections(images, detections, run.classes, path, t.vis_score_thresh, titles=titles, ground_truth=boxes)


def batch_of(run: Run, position: int) -> list[int]:
    """Image indices of the batch at ``position`` (all processes' shares): a pure function of it."""
    s, seed = run.cfg.solver, run.cfg.train.seed
    if run.groups:
        return grouped_batch_indices(position, run.groups, s.images_per_batch, seed)
    return batch_indices(position, len(run.train_set), s.images_per_batch, seed)


def check_run_config(cfg: Config, d: distributed.Dist) -> torch.device:
    """The checks of a training config that need runtime facts but no data (the processes, the
    device; ranges are checked by the config itself). Returns the device. Runs before any file is
    written or data loaded."""
    check_solver(cfg, d)
    device = resolve_device(cfg.train.device, d.local_rank)
    autocast_dtype(cfg.train.amp, device)
    return device


def check_splits(cfg: Config, train_set: DetectionDataset, test_set: DetectionDataset) -> None:
    """A run needs training images and test images."""
    for role, dataset in (("train", train_set), ("test", test_set)):
        if len(dataset) == 0:
            split = (cfg.data.train_split if role == "train" else cfg.data.test_split) or "the default"
            raise ValueError(f"data.{role}_split: {split} split of the {cfg.data.dataset} data has no images")


def check_solver(cfg: Config, d: distributed.Dist) -> None:
    s = cfg.solver
    if s.images_per_batch % d.world:
        raise ValueError(f"solver.images_per_batch {s.images_per_batch} must be divisible by {d.world} processes")


def check_in_sync(d: distributed.Dist, model: nn.Module, iteration: int) -> None:
    """Raise if the processes' weights have drifted apart (they must be equal after every step)."""
    if not d.active:
        return
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).cpu()
    sums = distributed.gather(d, checksum)
    if any(not torch.equal(sums[0], other) for other in sums[1:]):
        raise RuntimeError(f"processes hold different weights after iteration {iteration}")


def resolve_device(name: str, local_rank: int = 0, what: str = "train.device") -> torch.device:
    """``auto``: CUDA if there is one, else the CPU; under torchrun each process takes its GPU.
    A device torch does not know, or one this machine lacks, is an error naming ``what``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and local_rank:
        name = f"cuda:{local_rank}"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{what}: {name!r} is not a device (auto, cpu, cuda or cuda:N)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{what}: {name} asked for, but torch sees no CUDA GPU (use auto or cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{what}: {name} asked for, but torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{what}: mps asked for, but this machine has no MPS device (use auto or cpu)")
    return device


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp``: none, bf16, or fp16 (CUDA only: it needs a grad scaler)."""
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"train.amp: fp16 needs CUDA (device is {device}); use bf16 on the CPU")
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def lr_factor(iteration: int, cfg: Config) -> float:
    """Linear warmup from ``warmup_factor``, then x ``gamma`` at each step."""
    s = cfg.solver
    factor = s.gamma ** sum(iteration >= step for step in s.steps)
    if iteration < s.warmup_iterations:
        alpha = iteration / s.warmup_iterations
        factor *= s.warmup_factor * (1 - alpha) + alpha
    return factor


def param_groups(model: nn.Module, cfg: Config) -> list[dict[str, Any]]:
    """Weights, then biases at lr x ``bias_lr_factor`` with ``bias_weight_decay`` (all biases, or those of
    the RoI heads: the authors' OHEM nets), then (if any) the other biases, which keep ``weight_decay``."""
    s = cfg.solver
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    own_decay = [
        n.endswith(".bias") and (s.bias_weight_decay_on == "all" or n.startswith("roi_heads.")) for n, _ in trainable
    ]
    bias_decay = s.weight_decay if s.bias_weight_decay is None else s.bias_weight_decay
    groups = [
        {"params": [p for n, p in trainable if not n.endswith(".bias")], "lr": s.lr, "weight_decay": s.weight_decay},
        {"params": [p for (_, p), own in zip(trainable, own_decay) if own], "lr": s.lr * s.bias_lr_factor,
         "weight_decay": bias_decay},
        {"params": [p for (n, p), own in zip(trainable, own_decay) if n.endswith(".bias") and not own],
         "lr": s.lr * s.bias_lr_factor, "weight_decay": s.weight_decay},
    ]  # fmt: skip
    return groups if groups[2]["params"] else groups[:2]
