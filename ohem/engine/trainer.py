"""Training: ``train(cfg, out_dir)`` sets a run up, then ``run_loop`` takes one SGD step per iteration
(``train_step``) between the calls of its hooks (``ohem.engine.hooks``: logging, the collapse watch,
evaluation and checkpoints on schedule). Modules report what they did in a step through the step's
``ohem.events.EventStorage``; the hooks read it there. The run directory holds ``config.yaml``, the
logs of ``ohem.engine.runlog``, ``checkpoint_last.pt`` (written atomically), ``metrics.json`` (strict
JSON) and ``detections.png``; it belongs to one run (``ohem.engine.run_folder``: locked while
training, a run in it continued only with ``resume`` or moved aside with ``force``). Every config
check that needs no data (``check_run_config``) runs before anything is written."""

from __future__ import annotations

import contextlib
import random
import sys
import time
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from ohem import distributed
from ohem.checkpoint import load_checkpoint, load_state_dict_file, restore_rng
from ohem.config import Config
from ohem.data import aspect_groups, batch_indices, build_dataset, grouped_batch_indices
from ohem.data.loader import Batch, TrainBatches, loader_workers, train_loader
from ohem.engine import run_folder
from ohem.engine.hooks import EvalHook, Hook, default_hooks, draw_test_images, test_metrics
from ohem.engine.runlog import RunLog, skipped_outputs
from ohem.engine.summary import write_summary
from ohem.events import EventStorage
from ohem.inference import load_weights_into, state_dict_problems
from ohem.mining import build_detector, installed_sampler
from ohem.output_folder import FolderReplaced, OutputFolder
from ohem.structures import DetectionDataset
from ohem.util import (
    is_int,
    is_number,
    one_line,
    output_folder,
    remove_stale_temporaries,
    require,
    strict_json,
)


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
    best: dict[str, Any] | None = None  # the best evaluation so far: {"iteration", "metric", "mAP"}
    folder: OutputFolder | None = None  # ``out`` held open (main process): see ``files``

    @property
    def files(self) -> OutputFolder:
        """The run folder, held open: the main process writes there (the others write nothing)."""
        assert self.folder is not None, "only the main process writes the run folder"
        return self.folder

    @property
    def images_per_step(self) -> int:  # this process's images per SGD step
        s = self.cfg.solver
        return s.images_per_batch * s.accumulate_steps // self.d.world

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint_last.pt"


def train(
    cfg: Config, out_dir: str | Path, resume: bool = False, force: bool = False, hooks: Sequence[Hook] = ()
) -> dict[str, Any]:
    """Train as configured, evaluate on the test split, write the run directory; returns the metrics.

    ``out_dir`` belongs to this run while it trains (``ohem.engine.run_folder``): a folder that holds a
    run is continued with ``resume`` or, with ``force``, its old run is moved to ``previous-N/`` first.
    ``hooks`` run before the default ones (``ohem.engine.hooks.default_hooks``) at each call."""
    out = Path(out_dir)
    d = distributed.setup(cfg.train.device)
    device = check_run_config(cfg, d)  # every config check before any file is touched
    created = d.main and not out.exists()
    if d.main:
        run_folder.check_arguments(out, resume, force)
        if skipped := skipped_outputs(draws=cfg.train.vis_images > 0):
            print(f"ohem train: note: {skipped}", file=sys.stderr)
        output_folder(out)
    try:
        # the main process writes into the folder it checked, held open; a folder swapped mid-run stops it
        with run_folder.claim(out, enabled=d.main), OutputFolder(out) if d.main else contextlib.nullcontext() as folder:
            run = setup(cfg, out, resume, d, device, force, folder)
            return _train(run, list(hooks))
    except BaseException as e:
        if created and not isinstance(e, FolderReplaced):  # a failed run leaves no empty folder (of its own) behind
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


def _train(run: Run, extra_hooks: list[Hook]) -> dict[str, Any]:
    """The iterations of a set-up run, then the final evaluation, ``metrics.json`` and the drawing."""
    hooks = [*extra_hooks, *default_hooks(run)]
    write_summary(run)
    run_loop(run, hooks)
    evaluated = next((h.metrics for h in hooks if isinstance(h, EvalHook)), None)
    metrics = evaluated or test_metrics(run)  # none when a finished run was resumed
    if run.d.main:
        with run.files.open(run.out / "metrics.json") as f:
            f.write(strict_json({**metrics, "best": run.best} if run.best else metrics))
        draw_test_images(run)
    return metrics


def run_loop(run: Run, hooks: list[Hook]) -> None:
    """Iterations ``run.start`` to ``solver.iterations``: one ``train_step`` each, inside the step's
    ``EventStorage``, between the hooks' ``before_step`` and ``after_step``."""
    batches = training_batches(run)
    for hook in hooks:
        hook.before_train(run)
    try:
        for it in range(run.start, run.cfg.solver.iterations):
            storage = EventStorage(it)
            for hook in hooks:
                hook.before_step(run, storage)
            with storage:
                record = train_step(run, it, batches, storage)
            for hook in hooks:
                hook.after_step(run, storage, record)
    finally:
        for hook in hooks:
            hook.after_train(run)


def train_step(run: Run, it: int, batches: Iterator[Batch], storage: EventStorage) -> dict[str, float]:
    """One SGD step: ``solver.accumulate_steps`` forward/backward passes, then the update. Times the
    wait for data (``time_data``) and forward + backward + update (``time_step``); each pass's batch
    (dataset indices, image sizes) goes to ``storage`` as ``batch``."""
    accumulate, d = run.cfg.solver.accumulate_steps, run.d
    run.model.train()
    run.optimizer.zero_grad(set_to_none=True)
    sums: dict[str, float] = {}
    waited = stepped = 0.0
    for part in range(accumulate):
        tic = time.perf_counter()
        indices, images, targets = next(batches)
        synchronize(run.device)  # the copies to the device count as data time
        waited, tic = waited + time.perf_counter() - tic, time.perf_counter()
        losses = forward_backward(run, it, part, images, targets, storage)
        values = torch.stack([value.detach().float() for value in losses.values()]).tolist()  # one host copy
        for key, value in zip(losses, values):
            sums[key] = sums.get(key, 0.0) + value / accumulate
        stepped += time.perf_counter() - tic
        storage.put_record("batch", (indices, [tuple(image.shape[-2:]) for image in images]))
    tic = time.perf_counter()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    synchronize(run.device)
    record = {"iteration": it + 1, "lr": run.optimizer.param_groups[0]["lr"], **distributed.mean(d, sums)}
    record.update(time_data=waited, time_step=stepped + time.perf_counter() - tic)
    return record


def forward_backward(
    run: Run, it: int, part: int, images: list, targets: list, storage: EventStorage
) -> dict[str, torch.Tensor]:
    """Part ``part`` of step ``it``: the losses (``loss`` their sum) of one forward pass, backpropagated,
    and the statistics the modules put in ``storage`` during it (``ohem_*``: the loss dict holds losses only)."""
    accumulate, d = run.cfg.solver.accumulate_steps, run.d
    mark = len(storage.statistics)
    # DDP averages gradients across processes only on the last pass of the step.
    ddp = typing.cast(nn.parallel.DistributedDataParallel, run.model)
    with ddp.no_sync() if d.active and part < accumulate - 1 else contextlib.nullcontext():
        with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
            losses = run.model(images, targets)
        loss = sum(v.float() for v in losses.values())
        if not distributed.all_true(d, bool(torch.isfinite(loss))):
            last_good = run.checkpoint_path if run.checkpoint_path.exists() else "none"
            batch = batch_of(run, it * accumulate + part)
            raise NonFiniteLossError(
                f"non-finite loss at iteration {it + 1} on train images {batch}; last good checkpoint: {last_good}"
            )
        run.scaler.scale(loss / accumulate).backward()
    statistics = storage.statistics_since(mark)
    return {"loss": loss.detach(), **{k: v.detach() for k, v in losses.items()}, **statistics}


def training_batches(run: Run) -> Iterator[Batch]:
    """The batches of the run's remaining steps (this process's share), from ``data.workers`` processes."""
    accumulate, cfg = run.cfg.solver.accumulate_steps, run.cfg
    positions = TrainBatches(
        lambda position: batch_of(run, position),
        run.start * accumulate,
        cfg.solver.iterations * accumulate,
        run.d.rank,
        run.d.world,
    )
    return train_loader(run.train_set, positions, run.workers, run.device, cfg.train.seed if cfg.data.hflip else None)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def setup(
    cfg: Config,
    out: Path,
    resume: bool,
    d: distributed.Dist,
    device: torch.device,
    force: bool = False,
    folder: OutputFolder | None = None,
) -> Run:
    """Data, model, solver and logs of a run, restored from ``out``'s checkpoint with ``resume``.
    The caller holds the folder's lock and has checked the config (``check_run_config``); ``folder``:
    ``out`` held open, where the main process writes (required there)."""
    if d.main:
        assert folder is not None, "the main process writes the run folder through an OutputFolder"
        run_folder.check_folder(out, resume, force)
        folder.check()  # the removals and moves below go by path: only in the folder checked
        remove_stale_temporaries(out)  # a killed run's half-written checkpoint, if any (we hold the lock)
    state = None
    if resume:  # the checkpoint is the truth: its config must be this one (bar the RESUMABLE keys)
        state = load_checkpoint(out / run_folder.CHECKPOINT)
        run_folder.check_resume_config(cfg, state, out / run_folder.CHECKPOINT)
    train_set, test_set = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "test")
    check_splits(cfg, train_set, test_set)
    if force and folder is not None:  # the main process
        folder.check()
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
        weights = load_state_dict_file(cfg.model.init_weights, "init_weights")
        load_weights_into(model, weights, "init_weights", skip=cfg.model.init_weights_skip)
    norm = getattr(model.roi_heads, "box_target_norm", None)
    if norm is not None and not resume:  # Fast R-CNN's target statistics (on resume: the checkpoint's)
        norm.fit(train_set, model.roi_heads.proposal_matcher.high_threshold, cfg.data.hflip)
    model.to(device)
    if d.active:  # same initial weights everywhere; then each rank samples with its own stream
        torch.manual_seed((cfg.train.seed + 1_000_003 * d.rank) % 2**64)  # torch takes 64 bits
    optimizer = torch.optim.SGD(param_groups(model, cfg), lr=cfg.solver.lr, momentum=cfg.solver.momentum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, cfg))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")
    start = restore(state, out / run_folder.CHECKPOINT, model, optimizer, scheduler, scaler, d) if state else 0
    if folder is not None:  # the main process
        with folder.open(out / "config.yaml") as f:
            f.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    core = model
    if d.active:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    log = RunLog(out, start if resume else None, d.main, len(classes), folder)
    groups = tuple(aspect_groups(train_set)) if cfg.data.aspect_grouping else None
    workers = loader_workers(cfg.data.workers)
    run = Run(
        cfg,
        out,
        d,
        device,
        model,
        core,
        train_set,
        test_set,
        classes,
        optimizer,
        scheduler,
        scaler,
        autocast_dtype(cfg.train.amp, device),
        start,
        log,
        groups,
        workers,
        folder=folder,
    )
    run.best = saved_best(state, out / run_folder.CHECKPOINT) if state else None
    return run


def build_model(cfg: Config, num_classes: int) -> GeneralizedRCNN:
    """``build_detector``, with torch's error for backbone weights of another shape made one line."""
    try:
        return build_detector(cfg.model, cfg.sampler, num_classes)
    except RuntimeError as e:
        if not str(e).startswith("Error(s) in loading state_dict"):
            raise
        raise ValueError(
            f"model.backbone_weights {cfg.model.backbone_weights}: weights of another model "
            f"({state_dict_problems(str(e))})"
        ) from None


def restore(
    state: dict[str, Any],
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    d: distributed.Dist,
) -> int:
    """Load the checkpoint ``state``'s (read from ``path``) weights, solver state and RNG; returns its iteration."""
    missing = [key for key in ("model", "optimizer", "scheduler", "rng", "iteration") if state.get(key) is None]
    if missing:
        raise ValueError(f"checkpoint {path}: {missing[0]}: missing; a checkpoint to resume holds the solver state")
    if not isinstance(state["iteration"], int) or state["iteration"] < 0:
        raise ValueError(f"checkpoint {path}: iteration: expected a count, got {state['iteration']!r}")
    load_weights_into(model, state["model"], f"checkpoint {path}")
    restore_sampler(state, model, path)
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        restore_rng(state, d.rank)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"checkpoint {path}: solver state: cannot be restored ({one_line(str(e))})") from None
    return state["iteration"]


def restore_sampler(state: dict[str, Any], model: nn.Module, path: Path) -> None:
    """The sampler state a checkpoint saved (a checkpoint older than it saved none: no state)."""
    sampler, saved = installed_sampler(model), state.get("sampler") or {}
    if sampler is None:
        return
    if not isinstance(saved, dict):
        raise ValueError(f"checkpoint {path}: sampler: expected a dict, got {type(saved).__name__}")
    try:
        sampler.load_state_dict(saved)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"checkpoint {path}: sampler: cannot be restored ({one_line(str(e))})") from None


def saved_best(state: dict[str, Any], path: Path) -> dict[str, Any] | None:
    """The best evaluation a checkpoint recorded (None: none yet, or a checkpoint older than the record)."""
    best = state.get("best")
    if best is None:
        return None
    if not (isinstance(best, dict) and is_int(best.get("iteration")) and is_number(best.get("mAP"))):
        raise ValueError(f"checkpoint {path}: best: expected {{'iteration': N, 'mAP': x}}, got {best!r}")
    return dict(best)


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
    if cfg.train.eval_metric == "coco":
        require("pycocotools", "train.eval_metric: coco")
    device = resolve_device(cfg.train.device, d.local_rank)
    autocast_dtype(cfg.train.amp, device)
    return device


def check_splits(cfg: Config, train_set: DetectionDataset, test_set: DetectionDataset) -> None:
    """A run needs training images and test images, of the same classes in the same order."""
    for role, dataset in (("train", train_set), ("test", test_set)):
        if len(dataset) == 0:
            split = (cfg.data.train_split if role == "train" else cfg.data.test_split) or "the default"
            raise ValueError(f"data.{role}_split: {split} split of the {cfg.data.dataset} data has no images")
    train_names, test_names = list(train_set.classes), list(test_set.classes)
    if train_names != test_names:  # the labels 1..C would mean other classes in training and testing
        split = cfg.data.test_split or "the default"
        order = " (the same names in another order)" if sorted(train_names) == sorted(test_names) else ""
        raise ValueError(
            f"data.test_split: {split} split's classes {test_names} differ from the training split's "
            f"{train_names}{order}; a run needs the same classes in the same order"
        )


def check_solver(cfg: Config, d: distributed.Dist) -> None:
    s = cfg.solver
    if s.images_per_batch % d.world:
        raise ValueError(f"solver.images_per_batch {s.images_per_batch} must be divisible by {d.world} processes")


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
        {
            "params": [p for (_, p), own in zip(trainable, own_decay) if own],
            "lr": s.lr * s.bias_lr_factor,
            "weight_decay": bias_decay,
        },
        {
            "params": [p for (n, p), own in zip(trainable, own_decay) if n.endswith(".bias") and not own],
            "lr": s.lr * s.bias_lr_factor,
            "weight_decay": s.weight_decay,
        },
    ]
    return groups if groups[2]["params"] else groups[:2]
