"""Training and evaluation loops, checkpoints and logs.

A run directory holds ``config.yaml``, ``log.jsonl`` (one JSON object per iteration with every loss
and mining statistic, and one per evaluation), ``mining.jsonl`` (OHEM: what was mined, per
``train.mining_log_every`` iterations), TensorBoard events under ``tb/``,
``checkpoint_last.pt`` (written atomically), ``metrics.json`` and ``detections.png``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torchvision.ops import batched_nms
from tqdm import tqdm

from ohem import distributed
from ohem.config import Config, config_from_dict
from ohem.data import aspect_groups, batch_indices, build_dataset, grouped_batch_indices, hflip
from ohem.evaluation import ImageAnnotations, ImageDetections, mean_roi_loss, voc_evaluate
from ohem.mining import OHEMRoIHeads
from ohem.mining.record import MiningRecorder
from ohem.models import build_detector
from ohem.models.box_voting import iterative_box_regression_detect
from ohem.models.multiscale import pyramid_detect
from ohem.util import atomic_open

CHECKPOINT_FORMAT = "ohem-checkpoint-1"


class NonFiniteLossError(RuntimeError):
    pass


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: CUDA if there is one, else the CPU; under torchrun each process takes its GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and local_rank:
        name = f"cuda:{local_rank}"
    return torch.device(name)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp``: none, bf16, or fp16 (CUDA only: it needs a grad scaler)."""
    if amp == "none":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise ValueError(f"train.amp: fp16 needs CUDA (device is {device}); use bf16 on the CPU")
        return torch.float16
    raise ValueError(f"train.amp: expected none, bf16 or fp16, got {amp!r}")


def lr_factor(iteration: int, cfg: Config) -> float:
    """Linear warmup from ``warmup_factor``, then x ``gamma`` at each step."""
    s = cfg.solver
    factor = s.gamma ** sum(iteration >= step for step in s.steps)
    if iteration < s.warmup_iterations:
        alpha = iteration / s.warmup_iterations
        factor *= s.warmup_factor * (1 - alpha) + alpha
    return factor


def param_groups(model: nn.Module, cfg: Config) -> list[dict[str, Any]]:
    """Trainable weights and biases; biases may get their own lr factor and weight decay (Caffe's
    Fast R-CNN: 2x lr, no decay)."""
    weights = [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith(".bias")]
    biases = [p for n, p in model.named_parameters() if p.requires_grad and n.endswith(".bias")]
    s = cfg.solver
    bias_decay = s.weight_decay if s.bias_weight_decay is None else s.bias_weight_decay
    return [
        {"params": weights, "lr": s.lr, "weight_decay": s.weight_decay},
        {"params": biases, "lr": s.lr * s.bias_lr_factor, "weight_decay": bias_decay},
    ]


def train(cfg: Config, out_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train as configured, evaluate on the test split, write the run directory; returns metrics."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    d = distributed.setup(cfg.train.device)
    if cfg.solver.images_per_batch % d.world:
        raise ValueError(
            f"solver.images_per_batch {cfg.solver.images_per_batch} is not divisible by {d.world} processes"
        )
    if cfg.train.eval_metric not in METRICS:  # checked now, not after hours of training
        raise ValueError(f"train.eval_metric: expected one of {', '.join(METRICS)}, got {cfg.train.eval_metric!r}")
    device = resolve_device(cfg.train.device, d.local_rank)
    train_set, test_set = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "test")
    classes = list(train_set.classes)

    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    model = build_detector(cfg.model, cfg.sampler, len(classes))
    if cfg.model.init_weights and not resume:
        model.load_state_dict(load_weights(cfg.model.init_weights))
    model.to(device)
    if d.active:  # same initial weights everywhere; then each rank samples with its own stream
        torch.manual_seed(cfg.train.seed + 1_000_003 * d.rank)
    optimizer = torch.optim.SGD(param_groups(model, cfg), lr=cfg.solver.lr, momentum=cfg.solver.momentum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, cfg))
    amp_dtype = autocast_dtype(cfg.train.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")
    start = 0
    checkpoint_path = out / "checkpoint_last.pt"
    if resume:
        if not checkpoint_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint_path}")
        state = load_checkpoint(checkpoint_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        saved = state["rng"]["torch"]  # one state, or one per process of a torchrun run
        torch.set_rng_state(saved[d.rank % len(saved)] if isinstance(saved, list) else saved)
        random.setstate(_to_python_random_state(state["rng"]["python"]))
        start = state["iteration"]
        if d.main:
            for name in ("log.jsonl", "mining.jsonl"):  # drop what was logged after the checkpoint
                _truncate_jsonl(out / name, start)
    elif d.main:
        (out / "log.jsonl").unlink(missing_ok=True)
        (out / "mining.jsonl").unlink(missing_ok=True)
    if d.main:
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    heads = model.roi_heads
    if d.active:
        ddp_ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ddp_ids)
    core = model.module if d.active else model  # what is saved, evaluated and logged

    from torch.utils.tensorboard import SummaryWriter  # slow import: only when training

    # Only rank 0 writes files; the other ranks log to nowhere.
    writer = SummaryWriter(str(out / "tb"), purge_step=start + 1 if resume else None) if d.main else None
    log = (out / "log.jsonl").open("a") if d.main else open(os.devnull, "w")  # noqa: SIM115
    recorder = MiningRecorder(len(classes)) if isinstance(heads, OHEMRoIHeads) and d.main else None
    mining_log = (out / "mining.jsonl").open("a") if recorder else None
    roi_loss_indices = list(range(min(cfg.train.roi_loss_images, len(train_set))))
    groups = tuple(aspect_groups(train_set)) if cfg.data.aspect_grouping else None
    accumulate = cfg.solver.accumulate_steps
    if accumulate < 1:
        raise ValueError(f"solver.accumulate_steps must be >= 1, got {accumulate}")
    iterations = cfg.solver.iterations
    bar = tqdm(
        range(start, iterations), initial=start, total=iterations, desc="train", dynamic_ncols=True, disable=not d.main
    )
    metrics: dict[str, Any] = {}
    try:
        for it in bar:
            model.train()
            step_seconds = 0.0  # forward, backward and update; data loading excluded
            optimizer.zero_grad(set_to_none=True)
            sums: dict[str, float] = {}
            for step in range(accumulate):  # accumulate > 1: several passes' gradients per SGD step
                position = it * accumulate + step
                if groups:
                    part = grouped_batch_indices(position, groups, cfg.solver.images_per_batch, cfg.train.seed)
                else:
                    part = batch_indices(position, len(train_set), cfg.solver.images_per_batch, cfg.train.seed)
                indices = part[d.rank :: d.world]  # each process trains on its share of the batch
                images, targets = load_batch(train_set, indices, device, flip=cfg.data.hflip)
                tic = time.perf_counter()
                # DDP averages gradients across processes only on the last pass of the step.
                sync = model.no_sync() if d.active and step < accumulate - 1 else contextlib.nullcontext()
                with sync:
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        loss_dict = model(images, targets)
                    loss = sum(v.float() for k, v in loss_dict.items() if k.startswith("loss_"))
                    if not distributed.all_true(d, bool(torch.isfinite(loss))):
                        raise NonFiniteLossError(
                            f"non-finite loss at iteration {it + 1} on train images {part}; "
                            f"last good checkpoint: {checkpoint_path if checkpoint_path.exists() else 'none'}"
                        )
                    scaler.scale(loss / accumulate).backward()
                step_seconds += time.perf_counter() - tic
                for key, value in {"loss": loss.item(), **{k: v.item() for k, v in loss_dict.items()}}.items():
                    sums[key] = sums.get(key, 0.0) + value / accumulate
                if recorder:
                    sizes = [tuple(image.shape[-2:]) for image in images]
                    recorder.add(it + 1, heads.last_mining, indices, sizes, loss_dict["ohem_all_roi_loss"].item())
            tic = time.perf_counter()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step_seconds += time.perf_counter() - tic
            record = {"iteration": it + 1, "lr": optimizer.param_groups[0]["lr"], **distributed.mean(d, sums)}
            record["time"] = step_seconds
            if cfg.train.check_sync_every and (it + 1) % cfg.train.check_sync_every == 0:
                _check_in_sync(d, core, it + 1)
            if recorder:
                record["ohem_mining_time"] = heads.last_mining_seconds
                if (it + 1) % cfg.train.mining_log_every == 0 or it + 1 == iterations:
                    mined = recorder.flush(it + 1)
                    mining_log.write(json.dumps(mined) + "\n")
                    mining_log.flush()
                    for key in ("mined_fg_fraction", "mined_loss_mean", "all_roi_loss_mean"):
                        writer.add_scalar(f"mining/{key}", mined[key], it + 1)
            log.write(json.dumps(record) + "\n")
            for key, value in record.items():
                if writer and key != "iteration":
                    writer.add_scalar(f"train/{key}", value, it + 1)
            bar.set_postfix(loss=f"{record['loss']:.3f}", refresh=False)
            done = it + 1 == iterations
            if done or (cfg.train.eval_every and (it + 1) % cfg.train.eval_every == 0):
                scores = evaluate(core, test_set, device, cfg.solver.images_per_batch, d, cfg.train.eval_metric)
                entry = {"iteration": it + 1, "eval": scores}
                if roi_loss_indices:
                    shard = roi_loss_indices[d.rank :: d.world]
                    entry["train_roi_loss"] = distributed.mean(d, {"v": mean_roi_loss(core, train_set, shard, device)})[
                        "v"
                    ]
                log.write(json.dumps(entry) + "\n")
                metrics = entry["eval"]
                message = f"iteration {it + 1}: test {METRIC_NAMES[cfg.train.eval_metric]} {metrics['mAP']:.4f}"
                if writer:
                    writer.add_scalar("eval/mAP", metrics["mAP"], it + 1)
                if writer and "train_roi_loss" in entry:
                    writer.add_scalar("eval/train_roi_loss", entry["train_roi_loss"], it + 1)
                    message += f", mean loss over all RoIs of train images {entry['train_roi_loss']:.4f}"
                bar.write(message)
            if done or (cfg.train.checkpoint_every and (it + 1) % cfg.train.checkpoint_every == 0):
                rng = distributed.gather(d, torch.get_rng_state())
                if d.main:
                    state = (core, cfg, classes, it + 1, optimizer, scheduler, scaler, rng if d.active else None)
                    save_checkpoint(checkpoint_path, *state)
                distributed.barrier(d)
            log.flush()
    finally:
        bar.close()
        log.close()
        if writer:
            writer.close()
        if mining_log:
            mining_log.close()
    if not metrics:  # resumed a finished run
        metrics = evaluate(core, test_set, device, cfg.solver.images_per_batch, d, cfg.train.eval_metric)
    if d.main:
        write_json_atomic(out / "metrics.json", metrics)
    return metrics


def _check_in_sync(d: distributed.Dist, model: nn.Module, iteration: int) -> None:
    """Raise if the processes' weights have drifted apart (they must be equal after every step)."""
    if not d.active:
        return
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).cpu()
    sums = distributed.gather(d, checksum)
    if any(not torch.equal(sums[0], other) for other in sums[1:]):
        raise RuntimeError(f"processes hold different weights after iteration {iteration}")


def load_batch(dataset, indices: list[int], device: torch.device, flip: bool = False):  # noqa: ANN001, ANN202
    """Images and targets on ``device``; ``flip``: each mirrored with probability 0.5 (torch's RNG,
    which checkpoints save, so a resumed run flips the same images)."""
    images, targets = [], []
    for i in indices:
        image, target = dataset[i]
        if flip and torch.rand(()) < 0.5:
            image, target = hflip(image, target)
        images.append(image.to(device))
        targets.append({k: v.to(device) for k, v in target.items()})
    return images, targets


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset,  # noqa: ANN001
    device: torch.device,
    batch_size: int = 2,
    indices: list[int] | None = None,
) -> list[ImageDetections]:
    """Detections of ``model`` on ``dataset`` (or on its images ``indices``), in that order."""
    model.eval()
    indices = list(range(len(dataset))) if indices is None else indices
    out = []
    for start in range(0, len(indices), batch_size):
        images, targets = load_batch(dataset, indices[start : start + batch_size], device)
        for det in detect(model, images, targets):
            out.append(ImageDetections(det["boxes"].cpu(), det["scores"].cpu(), det["labels"].cpu()))
    return out


def detect(model: nn.Module, images: list[torch.Tensor], targets: list[dict] | None = None) -> list[dict]:
    """Eval-mode detections (torchvision dicts, original pixels), with the model's test options:
    proposals from ``targets`` for Fast R-CNN, ``model.box_voting`` (+B) and
    ``model.test_min_sizes`` (+M). With proposals, +M is Fast R-CNN's image pyramid (each RoI at the
    scale where it is nearest 224 px square); with an RPN, each scale proposes and detects on its
    own and the detections are pooled, then NMS per class."""
    proposals = None
    if getattr(model, "needs_proposals", False):
        if targets is None or any("proposals" not in t for t in targets):
            raise ValueError(f"{type(model).__name__} reads proposals: set data.test_proposals (a proposal file)")
        proposals = [t["proposals"] for t in targets]
    sizes = getattr(model, "test_min_sizes", None)
    if not sizes:
        return _detect_once(model, images, proposals)
    if proposals is not None:
        if getattr(model, "box_voting", False):
            nms = model.roi_heads.nms_thresh
            return iterative_box_regression_detect(model, images, proposals, nms_thresh=nms, scales=sizes)
        return pyramid_detect(model, images, proposals, sizes)
    transform = model.transform
    saved = transform.min_size
    try:
        per_scale = []
        for size in sizes:
            transform.min_size = (size,)
            per_scale.append(_detect_once(model, images, proposals))
    finally:
        transform.min_size = saved
    if len(per_scale) == 1:
        return per_scale[0]
    heads = model.roi_heads
    merged = []
    for dets in zip(*per_scale):
        boxes = torch.cat([d["boxes"] for d in dets])
        scores, labels = torch.cat([d["scores"] for d in dets]), torch.cat([d["labels"] for d in dets])
        keep = batched_nms(boxes, scores, labels, heads.nms_thresh)[: heads.detections_per_img]
        merged.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return merged


def _detect_once(model: nn.Module, images: list[torch.Tensor], proposals: list[torch.Tensor] | None) -> list[dict]:
    if getattr(model, "box_voting", False):
        return iterative_box_regression_detect(model, images, proposals, nms_thresh=model.roi_heads.nms_thresh)
    return model(images, proposals=proposals) if proposals is not None else model(images)


def evaluate(
    model: nn.Module,
    dataset,  # noqa: ANN001
    device: torch.device,
    batch_size: int = 2,
    d: distributed.Dist = distributed.Dist(),  # noqa: B008 - frozen dataclass
    metric: str = "voc",
) -> dict[str, Any]:
    """``score_detections`` of ``model`` on ``dataset`` (default: VOC area mAP@0.5); under
    torchrun each process predicts a share of the images and rank 0 scores them all."""
    mine = list(range(d.rank, len(dataset), d.world))
    shares = distributed.gather(d, list(zip(mine, predict(model, dataset, device, batch_size, mine))))
    if not d.main:
        return distributed.broadcast(d, None)
    detections = [det for _, det in sorted((pair for share in shares for pair in share), key=lambda p: p[0])]
    return distributed.broadcast(d, score_detections(dataset, detections, metric))


METRICS = ("voc", "voc07", "coco")
METRIC_NAMES = {"voc": "mAP@0.5", "voc07": "mAP@0.5 (VOC07 11-point)", "coco": "AP@[.5:.95]"}


def score_detections(dataset, detections: list[ImageDetections], metric: str = "voc") -> dict[str, Any]:  # noqa: ANN001
    """``{"mAP", "AP": {class: AP}, ...}`` of one detection list per image of ``dataset``.

    voc: area AP at IoU 0.5 (VOC 2010+); voc07: the 11-point AP of VOC 2007; coco: pycocotools'
    AP@[.5:.95] as mAP plus AP50/AP75/AP_small/... (on a VOC set, difficult boxes become crowd
    regions: matched detections are ignored, as the devkit ignores them).
    """
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {', '.join(METRICS)}, got {metric!r}")
    if len(detections) != len(dataset):
        raise ValueError(f"{len(detections)} detection lists for {len(dataset)} images")
    annotations = [_annotations(dataset, i) for i in range(len(dataset))]
    if metric == "coco":
        from ohem.evaluation.coco import coco_evaluate  # pycocotools: imported only when asked for

        gt, image_ids = coco_ground_truth(dataset, annotations)
        results = []
        for image_id, det in zip(image_ids, detections):
            for box, score, label in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist()):
                x1, y1, x2, y2 = box
                category = dataset.category_ids[label - 1]
                results.append({"image_id": image_id, "category_id": category, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "score": score})  # fmt: skip
        metrics = coco_evaluate(gt, results, list(dataset.classes))
    else:
        metrics = voc_evaluate(detections, annotations, dataset.classes, use_07_metric=metric == "voc07")
    metrics["metric"] = metric
    metrics["num_images"] = len(dataset)
    return metrics


def _annotations(dataset, index: int) -> ImageAnnotations:  # noqa: ANN001
    target = dataset.annotations(index) if hasattr(dataset, "annotations") else dataset[index][1]
    return ImageAnnotations(target["boxes"], target["labels"], target.get("difficult"))


def coco_ground_truth(dataset, annotations: list[ImageAnnotations]) -> tuple[dict, list[int]]:  # noqa: ANN001
    """A COCO-format ground truth of ``dataset`` and the integer image id of each image.
    A COCO dataset's own file (crowd regions included) is used as it is."""
    if hasattr(dataset, "coco_ground_truth"):
        return dataset.coco_ground_truth(), list(dataset.image_ids)
    images, anns = [], []
    for i, a in enumerate(annotations):
        h, w = dataset.image_size(i)
        images.append({"id": i + 1, "width": w, "height": h})
        difficult = a.difficult.tolist() if a.difficult is not None else [False] * len(a.labels)
        for box, label, crowd in zip(a.boxes.tolist(), a.labels.tolist(), difficult):
            x1, y1, x2, y2 = box
            category = dataset.category_ids[label - 1]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": category, "iscrowd": int(crowd),
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})  # fmt: skip
    categories = [{"id": c, "name": n} for c, n in zip(dataset.category_ids, dataset.classes)]
    return {"images": images, "annotations": anns, "categories": categories}, [i + 1 for i in range(len(images))]


def save_checkpoint(
    path: Path,
    model: nn.Module,
    cfg: Config,
    classes: list[str],
    iteration: int,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: torch.amp.GradScaler | None = None,
    rng_per_rank: list[torch.Tensor] | None = None,
) -> None:
    """Atomically write a checkpoint; ``rng_per_rank``: every process's RNG state under torchrun."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "config": cfg.to_dict(),
        "classes": classes,
        "iteration": iteration,
        "optimizer": optimizer.state_dict() if optimizer else None,
        "scheduler": scheduler.state_dict() if scheduler else None,
        "scaler": scaler.state_dict() if scaler and scaler.is_enabled() else None,
        "rng": {
            "torch": rng_per_rank if rng_per_rank else torch.get_rng_state(),
            "python": _from_python_random_state(random.getstate()),
        },
    }
    with atomic_open(path, binary=True) as f:
        torch.save(state, f)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents, loaded tensors-only: a file that carries pickled code is refused."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path}: no such file") from None
    except Exception as e:  # noqa: BLE001 - torch raises several types for truncated or unsafe files
        reason = " ".join(str(e).split())[:200]
        raise ValueError(
            f"checkpoint {path}: cannot be loaded safely (truncated, corrupt or not tensors-only): {reason}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {path}: not an ohem checkpoint (no format {CHECKPOINT_FORMAT!r})")
    return state


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The model weights of an ohem checkpoint, or a plain state-dict file (tensors only)."""
    try:
        return load_checkpoint(path)["model"]
    except ValueError as e:
        if "not an ohem checkpoint" not in str(e):
            raise
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights {path}: neither an ohem checkpoint nor a state dict of tensors")
    return state


def model_from_checkpoint(path: str | Path, device: torch.device) -> tuple[nn.Module, Config, list[str]]:
    state = load_checkpoint(path)
    cfg = config_from_dict(state["config"], source=f"checkpoint {path}")
    model = build_detector(cfg.model, cfg.sampler, len(state["classes"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg, state["classes"]


def write_json_atomic(path: Path, data: Any) -> None:
    with atomic_open(path) as f:
        f.write(json.dumps(data, indent=2, allow_nan=True) + "\n")


def _truncate_jsonl(path: Path, iteration: int) -> None:
    """Keep the records of ``path`` up to ``iteration`` (those a resumed run will not repeat)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["iteration"] <= iteration]
    with atomic_open(path) as f:
        f.write("".join(line + "\n" for line in kept))


def _from_python_random_state(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _to_python_random_state(state: list) -> tuple:
    version, internal, gauss = state
    return version, tuple(internal), gauss


def format_metrics(metrics: dict[str, Any]) -> str:
    """A per-class AP table (then the COCO summary numbers, if there)."""
    width = max([len(n) for n in metrics["AP"]] + [len("AP_medium")])
    header = "AP" if metrics.get("metric") == "coco" else "AP@0.5"
    lines = [f"{'class':<{width}}  {header}"]
    for name, ap in metrics["AP"].items():
        lines.append(f"{name:<{width}}  {ap * 100:6.2f}" if not math.isnan(ap) else f"{name:<{width}}     n/a")
    lines.append(f"{'mAP':<{width}}  {metrics['mAP'] * 100:6.2f}")
    for key in ("AP50", "AP75", "AP_small", "AP_medium", "AP_large"):
        if key in metrics:
            lines.append(f"{key:<{width}}  {metrics[key] * 100:6.2f}")
    return "\n".join(lines)
