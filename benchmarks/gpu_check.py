"""CUDA check: training steps of heuristic vs OHEM sampling on a GPU, s/iter and peak memory.

    PYTHONPATH=. python benchmarks/gpu_check.py [--iters 20] [--models small@160 vgg16-frcn@600 r50fpn@600]

Runs, side by side in one process, without and with autocast (bf16; fp16 with a grad scaler):
the small demo model (160 px synthetic images); the paper's VGG16 Fast R-CNN (``fast_rcnn_vgg16``,
random init, synthetic images resized to 600 px, 2000 proposals per image from a proposal file, as
selective search gives); optionally torchvision's fasterrcnn_resnet50_fpn (600 px, 2000 RPN
proposals). Each with the Fast R-CNN heuristic (64 RoIs/image), torchvision's default sampler
(512/image) and OHEM (64/image mined from all) with its read-only pass in fp32, tf32 (the default) and
bf16 (``sampler.readonly_precision``). Then short ``ohem.train.train`` runs with evaluation: the small
model (bf16) and the VGG16 Fast R-CNN with +M (two test scales) and +B (box voting), to exercise the
whole CUDA path.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from ohem import train as training
from ohem.config import load_config
from ohem.data import build_dataset
from ohem.data.proposals import write_proposals
from ohem.models import PROPOSAL_MODELS, build_detector

SAMPLERS = {
    "heuristic": ["sampler.method=heuristic"],
    "tv-default": ["sampler.method=heuristic", "sampler.batch_size_per_image=512", "sampler.bg_iou_low=0.0"],
    "ohem-ro-fp32": ["sampler.method=ohem", "sampler.readonly_precision=fp32"],  # read-only pass in IEEE fp32
    "ohem": ["sampler.method=ohem"],  # the default: read-only pass with TF32 matmuls and convolutions
    "ohem-ro-bf16": ["sampler.method=ohem", "sampler.readonly_precision=bf16"],
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
}


PROPOSAL_DIR = tempfile.mkdtemp(prefix="ohem-gpu-check-")


def proposal_overrides(overrides: list[str], num_train: int, num_test: int) -> list[str]:
    """For a Fast R-CNN model: proposal files (2000 random and jittered-gt boxes per image) of the
    synthetic splits, written once."""
    cfg = load_config("configs/demo.yaml", overrides + [f"data.num_train={num_train}", f"data.num_test={num_test}"])
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


def time_steps(overrides: list[str], iters: int, device: torch.device, amp: str = "none") -> tuple[float, float, float]:
    overrides = overrides + ["data.num_train=16"]
    cfg = load_config("configs/demo.yaml", overrides + proposal_overrides(overrides, 16, 4))
    data = build_dataset(cfg.data, "train")
    torch.manual_seed(0)
    model = build_detector(cfg.model, cfg.sampler, len(data.classes)).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    batches = [training.load_batch(data, [2 * i % 16, (2 * i + 1) % 16], device) for i in range(iters + 3)]
    cuda = device.type == "cuda"
    dtype = training.autocast_dtype(amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    for i, (images, targets) in enumerate(batches):
        if i == 3:  # warm-up done
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            losses = model(images, targets)
        loss = sum(v.float() for k, v in losses.items() if k.startswith("loss_"))
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / iters
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else float("nan")
    return seconds, peak, loss.item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--train-iters", type=int, default=200)
    parser.add_argument("--vgg-train-iters", type=int, default=20)
    parser.add_argument("--vgg-size", type=int, default=600, help="shorter side for VGG16 (smaller for a CPU dry run)")
    parser.add_argument("--models", nargs="+", default=["small@160", "vgg16-frcn@600"], choices=list(MODELS))
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}, torchvision {torchvision.__version__}")
    print(
        f"{'model':<12} {'amp':<5} {'sampler':<13} {'s/iter':>8} {'peak MiB':>9} {'x heur time':>12} {'x heur mem':>11}"
    )
    amps = ["none", "bf16", "fp16"] if device.type == "cuda" else ["none", "bf16"]
    MODELS["vgg16-frcn@600"][2] = f"model.min_size={args.vgg_size}"
    for model_name in args.models:
        model_overrides = MODELS[model_name]
        for amp in amps:
            base = None
            for sampler, sampler_overrides in SAMPLERS.items():
                sec, mem, loss = time_steps(model_overrides + sampler_overrides, args.iters, device, amp)
                base = base or (sec, mem)
                print(
                    f"{model_name:<12} {amp:<5} {sampler:<13} {sec:8.4f} {mem:9.0f} {sec / base[0]:12.2f} "
                    f"{mem / base[1]:11.2f}   (last loss {loss:.3f})",
                    flush=True,
                )
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(
            "configs/demo.yaml",
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
        metrics = training.train(load_config("configs/demo.yaml", overrides), out)
        seconds = time.perf_counter() - start
        what = f"{args.vgg_train_iters} OHEM iterations + eval with +M +B"
        print(f"train fast_rcnn_vgg16 on {args.device}, bf16, {what}: {seconds:.1f} s")
        print(f"test mAP@0.5 {metrics['mAP']:.3f} (random init, a few iterations: only that it runs)")


if __name__ == "__main__":
    main()
