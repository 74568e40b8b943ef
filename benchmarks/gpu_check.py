"""CUDA check: training steps of heuristic vs OHEM sampling on a GPU, s/iter and peak memory.

    PYTHONPATH=. python benchmarks/gpu_check.py [--iters 20] [--models small@160 vgg16-frcn@600 r50fpn@600]

Runs, side by side in one process, without and with autocast (bf16; fp16 with a grad scaler):
the small demo model (160 px synthetic images); the paper's VGG16 Fast R-CNN (``fast_rcnn_vgg16``,
random init, synthetic images resized to 600 px, 2000 proposals per image from a proposal file, as
selective search gives); optionally torchvision's fasterrcnn_resnet50_fpn (600 px, 2000 RPN
proposals). Each with the Fast R-CNN heuristic (64 RoIs/image), torchvision's default sampler
(512/image) and OHEM (64/image mined from all) with its read-only pass in fp32, tf32 (the default) and
bf16 (``sampler.readonly_precision``). Then short ``ohem.engine.train`` runs with evaluation: the small
model (bf16) and the VGG16 Fast R-CNN with +M (two test scales) and +B (box voting), to exercise the
whole CUDA path. Last, end to end (``--e2e-iters``, default 200): ``ohem.engine.train`` of the VGG16
Fast R-CNN (on dense proposal files, 2000 per image) and the ResNet-50 FPN Faster R-CNN (2000 RPN
RoIs) on the synthetic data exported to the VOC layout at 600 px (PNG files decoded by ``--workers``
loader processes), heuristic / torchvision default / OHEM, fp32 and bf16: s/iter, images/s, the
share of the step spent waiting for data, and the OHEM / heuristic ratio of wall time per iteration.

    PYTHONPATH=. python benchmarks/gpu_check.py --only-e2e --device cpu --e2e-iters 12 --e2e-size 128  # dry run

Parts can be left out or narrowed (``--amps``, ``--samplers``, ``--train-iters 0``,
``--vgg-train-iters 0``, ``--e2e-iters 0``, ``--e2e-amps``); ``--profile N`` runs N more steps of
each step-table row under ``torch.profiler`` and prints its top ops by device time and by CPU time
(host-bound steps show up as kernel launches and ``cudaStreamSynchronize``).

Beside each step-table row: its FLOPs (forward and backward, counted on one more step), the FLOP
ratio to the first sampler (the heuristic) and time ratio ÷ FLOP ratio (1.00: the step costs what
its arithmetic predicts), RoI pooling's MB, the host syncs ``ohem.bench.opcount`` names, and those
``torch.cuda.set_sync_debug_mode`` reports in one step (the check of that list).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

from ohem.bench.opcount import OpCount, count_ops
from ohem.config import load_config
from ohem.data import build_dataset
from ohem.data.loader import eval_batches
from ohem.data.proposals import write_proposals
from ohem.engine import trainer as training
from ohem.engine.runlog import step_seconds
from ohem.mining import build_detector
from ohem.models import PROPOSAL_MODELS

SAMPLERS = {
    "heuristic": ["sampler.method=heuristic"],
    "tv-default": ["sampler.method=heuristic", "sampler.batch_size_per_image=512", "sampler.bg_iou_low=0.0"],
    "ohem-ro-fp32": ["sampler.method=ohem", "sampler.readonly_precision=fp32"],  # read-only pass in IEEE fp32
    "ohem": ["sampler.method=ohem"],  # the default: read-only pass with TF32 matmuls and convolutions
    "ohem-ro-bf16": ["sampler.method=ohem", "sampler.readonly_precision=bf16"],
    "ohem-ro-nodrop": ["sampler.method=ohem", "sampler.readonly_dropout=false"],  # what dropout costs there
}
MODELS = {
    "small@160": [],
    "vgg16-frcn@600": [
        "model.name=fast_rcnn_vgg16",
        "data.image_size=320",
        "model.min_size=600",
        "model.max_size=1000",
        "model.box_nms_thresh=0.3",
    ],
    "r50fpn@600": [
        "model.name=fasterrcnn_resnet50_fpn",
        "data.image_size=320",
        "model.min_size=600",
        "model.max_size=1000",
        "model.rpn_pre_nms_top_n_train=12000",
        "model.rpn_post_nms_top_n_train=2000",
    ],
    "r50fpn@800": [  # torchvision's own training size
        "model.name=fasterrcnn_resnet50_fpn",
        "data.image_size=320",
        "model.min_size=800",
        "model.max_size=1333",
        "model.rpn_pre_nms_top_n_train=12000",
        "model.rpn_post_nms_top_n_train=2000",
    ],
}


PROPOSAL_DIR = tempfile.mkdtemp(prefix="ohem-gpu-check-")


def proposal_overrides(overrides: list[str], num_train: int, num_test: int) -> list[str]:
    """For a Fast R-CNN model: proposal files (2000 random and jittered-gt boxes per image) of the
    synthetic splits, written once."""
    cfg = load_config("demo", overrides + [f"data.num_train={num_train}", f"data.num_test={num_test}"])
    if cfg.model.name not in PROPOSAL_MODELS:
        return []
    paths = []
    for role in ("train", "test"):
        data = build_dataset(cfg.data, role)
        path = Path(PROPOSAL_DIR) / f"{role}-{cfg.data.image_size}-{len(data)}.npz"
        if not path.exists():
            g = torch.Generator().manual_seed(0)
            boxes = {}
            for i in range(len(data)):
                size = cfg.data.image_size
                gt = data.annotations(i)["boxes"]
                xy = torch.rand(2000 - 20 * len(gt), 2, generator=g) * size * 0.8
                wh = 8 + torch.rand(xy.shape[0], 2, generator=g) * size * 0.4
                near = gt.repeat(20, 1) + torch.randn(20 * len(gt), 4, generator=g) * 4
                boxes[data.image_name(i)] = torch.cat([near, torch.cat([xy, xy + wh], 1)]).clamp(0, size).numpy()
            write_proposals(path, boxes)
        paths.append(path)
    return [f"data.proposals={paths[0]}", f"data.test_proposals={paths[1]}"]


def time_steps(
    overrides: list[str], iters: int, device: torch.device, amp: str = "none", profile: int = 0, warmup: int = 3
) -> tuple[float, float, float, OpCount, int]:
    """s/iter and peak MiB of ``iters`` steps after ``warmup`` steps, the last loss, then one more step
    counted (``ohem.bench.opcount``: FLOPs, RoI pooling bytes, host syncs by name) and the host syncs CUDA's
    own sync debug mode reports in one step (-1 off CUDA)."""
    overrides = overrides + ["data.num_train=16"]
    cfg = load_config("demo", overrides + proposal_overrides(overrides, 16, 4))
    data = build_dataset(cfg.data, "train")
    torch.manual_seed(0)
    model = build_detector(cfg.model, cfg.sampler, len(data.classes)).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    pairs = [[2 * i % 16, (2 * i + 1) % 16] for i in range(warmup + iters + 2)]
    batches = [next(eval_batches(data, pair, 2, 0, device))[1:] for pair in pairs]
    cuda = device.type == "cuda"
    dtype = training.autocast_dtype(amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    def step(images: list[torch.Tensor], targets: list[dict]) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            losses = model(images, targets)
        loss = sum(v.float() for k, v in losses.items() if k.startswith("loss_"))
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    for i, (images, targets) in enumerate(batches[: warmup + iters]):
        if i == warmup:  # warm-up done
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        loss = step(images, targets)
    if cuda:
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / iters
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else float("nan")
    with count_ops() as count:  # after the timing: counting slows the step
        step(*batches[warmup + iters])
    cuda_syncs = -1
    if cuda:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step(*batches[warmup + iters + 1])
            finally:
                torch.cuda.set_sync_debug_mode("default")
        cuda_syncs = sum("synchronizing" in str(w.message) for w in caught)
    if profile:
        print_profile(lambda: [step(*batch) for batch in batches[:profile]], device)
    return seconds, peak, loss.item(), count, cuda_syncs


def print_profile(run: Callable[[], object], device: torch.device, rows: int = 15) -> None:
    """``run`` under ``torch.profiler``: the top ops by time on the device (or the CPU) and by CPU time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    table = prof.key_averages()
    keys = ["self_device_time_total", "cpu_time_total"] if device.type == "cuda" else ["self_cpu_time_total"]
    for key in keys:
        print(table.table(sort_by=key, row_limit=rows, max_name_column_width=48), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3, help="step table: untimed steps first")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--amps", nargs="+", choices=["none", "bf16", "fp16"], help="step table (default: all)")
    parser.add_argument("--samplers", nargs="+", choices=list(SAMPLERS), help="step table (default: all)")
    parser.add_argument("--train-iters", type=int, default=200, help="small model's run (0: skip it)")
    parser.add_argument("--vgg-train-iters", type=int, default=20, help="VGG16 +M +B run (0: skip it)")
    parser.add_argument("--vgg-size", type=int, default=600, help="shorter side for VGG16 (smaller for a CPU dry run)")
    parser.add_argument("--models", nargs="+", default=["small@160", "vgg16-frcn@600"], choices=list(MODELS))
    parser.add_argument("--e2e-iters", type=int, default=200, help="end-to-end runs' iterations (0: skip them)")
    parser.add_argument("--workers", type=int, default=4, help="end-to-end runs' loader processes")
    parser.add_argument("--e2e-size", type=int, default=600, help="end-to-end runs' image size, px")
    parser.add_argument("--e2e-models", nargs="+", default=list(E2E_MODELS), choices=list(E2E_MODELS))
    parser.add_argument("--e2e-amps", nargs="+", default=["none", "bf16"], choices=["none", "bf16"])
    parser.add_argument("--only-e2e", action="store_true", help="skip the step table and the short checks")
    parser.add_argument(
        "--profile", type=int, default=0, help="step table: profile this many more steps of each row (torch.profiler)"
    )
    args = parser.parse_args()
    if args.only_e2e:
        end_to_end(args)
        return
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}, torchvision {torchvision.__version__}")
    print(
        f"{'model':<12} {'amp':<5} {'sampler':<13} {'s/iter':>8} {'peak MiB':>9} {'x heur time':>12} "
        f"{'x heur mem':>11} {'GFLOP':>8} {'x heur FLOPs':>13} {'time/FLOPs':>11} {'RoI pool MB':>12} "
        f"{'syncs':>6} {'CUDA syncs':>11}"
    )
    amps = args.amps or (["none", "bf16", "fp16"] if device.type == "cuda" else ["none", "bf16"])
    MODELS["vgg16-frcn@600"][2] = f"model.min_size={args.vgg_size}"
    for model_name in args.models:
        model_overrides = MODELS[model_name]
        for amp in amps:
            base = None
            for sampler in args.samplers or SAMPLERS:
                sampler_overrides = SAMPLERS[sampler]
                sec, mem, loss, count, cuda_syncs = time_steps(
                    model_overrides + sampler_overrides, args.iters, device, amp, args.profile, args.warmup
                )
                base = base or (sec, mem, count.flops)
                time_x, flops_x = sec / base[0], count.flops / base[2]
                print(
                    f"{model_name:<12} {amp:<5} {sampler:<13} {sec:8.4f} {mem:9.0f} {time_x:12.2f} "
                    f"{mem / base[1]:11.2f} {count.flops / 1e9:8.2f} {flops_x:13.2f} {time_x / flops_x:11.2f} "
                    f"{count.roi_pool_bytes / 1e6:12.0f} {count.syncs:6d} {cuda_syncs:11d}   (last loss {loss:.3f})",
                    flush=True,
                )
    if args.train_iters:
        short_run(args)
    if args.vgg_train_iters:
        vgg_run(args)
    if args.e2e_iters:
        end_to_end(args)


def short_run(args: argparse.Namespace) -> None:
    """The small model trained and evaluated on the device, bf16: that it learns there."""
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(
            "demo",
            [
                f"train.device={args.device}",
                "train.amp=bf16",
                f"solver.iterations={args.train_iters}",
                f"solver.steps=[{args.train_iters * 3 // 4}]",
                "data.num_train=200",
                "data.num_test=50",
                f"train.eval_every={args.train_iters // 2}",
                f"train.checkpoint_every={args.train_iters // 2}",
            ],
        )
        start = time.perf_counter()
        metrics = training.train(cfg, out)
        seconds = time.perf_counter() - start
        print(f"train on {args.device}, bf16, {args.train_iters} OHEM iterations + 2 evals: {seconds:.1f} s")
        print(f"test mAP@0.5 {metrics['mAP']:.3f}")


def vgg_run(args: argparse.Namespace) -> None:
    """The VGG16 Fast R-CNN for a few steps, then evaluated with +M (two scales) and +B (box voting)."""
    with tempfile.TemporaryDirectory() as out:
        overrides = MODELS["vgg16-frcn@600"] + [
            f"train.device={args.device}",
            "train.amp=bf16",
            f"solver.iterations={args.vgg_train_iters}",
            "solver.lr=0.001",
            "solver.warmup_iterations=0",
            "solver.steps=[1000]",
            f"model.min_size={args.vgg_size}",
            f"model.test_min_size=[{args.vgg_size * 4 // 5}, {args.vgg_size}]",
            "model.box_voting=true",
            "train.eval_every=0",
            "train.checkpoint_every=0",
        ]
        overrides += ["data.num_train=16", "data.num_test=8", *proposal_overrides(overrides, 16, 8)]
        start = time.perf_counter()
        metrics = training.train(load_config("demo", overrides), out)
        seconds = time.perf_counter() - start
        what = f"{args.vgg_train_iters} OHEM iterations + eval with +M +B"
        print(f"train fast_rcnn_vgg16 on {args.device}, bf16, {what}: {seconds:.1f} s")
        print(f"test mAP@0.5 {metrics['mAP']:.3f} (random init, a few iterations: only that it runs)")


E2E_MODELS = {  # end-to-end runs: 600 px images from the VOC-layout files, 2000 RoIs per image
    "vgg16-frcn": ["model.name=fast_rcnn_vgg16", "model.box_nms_thresh=0.3"],
    "r50fpn": [
        "model.name=fasterrcnn_resnet50_fpn",
        "model.rpn_pre_nms_top_n_train=12000",
        "model.rpn_post_nms_top_n_train=2000",
    ],
}
E2E_SAMPLERS = ["heuristic", "tv-default", "ohem"]


def voc_copy(root: Path, num_train: int, num_test: int, size: int) -> list[str]:
    """The synthetic data exported to the VOC layout (PNG files) at ``size`` px, with dense proposal
    files (2000 boxes per image, ``ohem.data.dense_proposals``); returns the data overrides."""
    from ohem.data import SyntheticShapes, VOCDetection
    from ohem.data.dense_proposals import dense_proposals
    from ohem.data.export import export_synthetic
    from ohem.data.synthetic import CLASSES

    overrides = [
        "data.dataset=voc",
        f"data.root={root}",
        f"data.classes=[{','.join(CLASSES)}]",
        "data.train_split=train",
        "data.test_split=test",
    ]
    for split, count in (("train", num_train), ("test", num_test)):
        if not (root / "ImageSets" / "Main" / f"{split}.txt").exists():
            export_synthetic(SyntheticShapes(split, num_images=count, image_size=size), root, "voc")
            dense_proposals(VOCDetection(root, split, classes=CLASSES), root / f"{split}-dense.npz")
        key = "proposals" if split == "train" else "test_proposals"
        overrides.append(f"data.{key}={root / f'{split}-dense.npz'}")
    return overrides


def end_to_end(args: argparse.Namespace) -> None:
    """``ohem.engine.train`` runs through the whole input pipeline (PNG decoding in ``--workers``
    loader processes): images/s, the share of the step spent waiting for data, OHEM / heuristic."""
    iters, size = args.e2e_iters, args.e2e_size
    data = voc_copy(Path(PROPOSAL_DIR) / f"voc{size}", 2 * iters, 4, size)
    print(f"\nend to end: {iters} iterations, {size} px, {args.workers} loader workers, 2000 RoIs/image")
    print(f"{'model':<11} {'amp':<5} {'sampler':<11} {'s/iter':>7} {'img/s':>6} {'data wait':>9} {'x heur':>7}")
    for model_name in args.e2e_models:
        for amp in args.e2e_amps:
            base = None
            for sampler in E2E_SAMPLERS:
                sets = [
                    *data,
                    *E2E_MODELS[model_name],
                    *SAMPLERS[sampler],
                    f"train.amp={amp}",
                    f"train.device={args.device}",
                    f"solver.iterations={iters}",
                    "solver.warmup_iterations=0",
                    "solver.lr=0.001",
                    "train.eval_every=0",
                    "train.checkpoint_every=0",
                    "train.vis_images=0",
                    f"data.workers={args.workers}",
                    f"model.min_size={size}",
                    "model.max_size=1000",
                ]
                with tempfile.TemporaryDirectory() as out:
                    training.train(load_config("demo", sets), out)
                    per_iter, wait = step_seconds(Path(out) / "log.jsonl")
                base = base or per_iter
                print(
                    f"{model_name:<11} {amp:<5} {sampler:<11} {per_iter:7.4f} {2 / per_iter:6.1f} "
                    f"{wait:9.1%} {per_iter / base:7.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
