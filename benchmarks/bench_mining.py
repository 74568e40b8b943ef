"""Hard-RoI selection cost: select_hard_examples vs full batched_nms + per-image top-k, side by side.

    python benchmarks/bench_mining.py [--rois 4000] [--images 2] [--keep 64] [--repeats 200] [--device cuda]

RoIs are proposal-like: most are jittered copies of a few dozen object boxes (so NMS has heavy
overlap to resolve, as with RPN or selective-search proposals), the rest uniform over a 600 px image.
Losses are random. The paths are checked to select the same RoIs before timing. On CUDA,
``select_hard_examples`` runs ``select_by_batched_nms`` (everything on the device: ``batched_nms`` on a
loss-ordered prefix of each image's RoIs, grown until enough survive); the greedy walk is timed from
the CPU copies, as it would run with a host round trip. The two lines of ``--device cuda`` decide which
path CUDA should take.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torchvision.ops import batched_nms

from ohem.mining import select_hard_examples
from ohem.mining.select import select_by_batched_nms


def make_rois(num: int, num_images: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(40, 2, generator=g) * 500
    sizes = torch.rand(40, 2, generator=g) * 150 + 20
    objects = torch.cat([centres, centres + sizes], 1)
    pick = torch.randint(0, 40, (num,), generator=g)
    jittered = objects[pick] + torch.randn(num, 4, generator=g) * 8
    xy = torch.rand(num, 2, generator=g) * 550
    uniform = torch.cat([xy, xy + torch.rand(num, 2, generator=g) * 200 + 5], 1)
    boxes = torch.where(torch.rand(num, 1, generator=g) < 0.7, jittered, uniform)
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    losses = torch.rand(num, generator=g)
    image_ids = torch.arange(num) * num_images // num
    return losses, boxes, image_ids


def full_nms_topk(losses, boxes, image_ids, keep, nms_iou):
    survivors = batched_nms(boxes, losses, image_ids, nms_iou)  # sorted by descending loss
    return torch.cat([survivors[image_ids[survivors] == i][:keep] for i in torch.unique(image_ids)])


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rois", type=int, default=4000)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--keep", type=int, default=64)
    parser.add_argument("--nms-iou", type=float, default=0.7)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--device", default="cpu", help="cpu | cuda: where the device path runs")
    args = parser.parse_args()
    losses, boxes, image_ids = make_rois(args.rois, args.images)
    device = torch.device(args.device)
    on_device = [t.to(device) for t in (losses, boxes, image_ids)]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def device_path() -> torch.Tensor:
        picked = select_by_batched_nms(*on_device, args.keep, args.nms_iou)
        sync()
        return picked

    def greedy_with_round_trip() -> torch.Tensor:
        cpu = [t.cpu() for t in on_device]
        return select_hard_examples(*cpu, args.keep, nms_iou=args.nms_iou).to(device)

    ours = select_hard_examples(losses, boxes, image_ids, args.keep, nms_iou=args.nms_iou)
    theirs = full_nms_topk(losses, boxes, image_ids, args.keep, args.nms_iou)
    assert set(ours.tolist()) == set(theirs.tolist()), "selections differ"
    assert torch.equal(device_path().cpu(), ours), "the device path selects differently"
    t_ours = timed(
        lambda: select_hard_examples(losses, boxes, image_ids, args.keep, nms_iou=args.nms_iou), args.repeats
    )
    t_full = timed(lambda: full_nms_topk(losses, boxes, image_ids, args.keep, args.nms_iou), args.repeats)
    t_device = timed(device_path, args.repeats)
    t_trip = timed(greedy_with_round_trip, args.repeats)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.rois} RoIs, {args.images} images, "
        f"keep {args.keep}/image, NMS IoU {args.nms_iou}; median of {args.repeats}"
    )
    print(f"select_hard_examples      {t_ours:8.2f} ms")
    print(f"batched_nms + top-k       {t_full:8.2f} ms")
    print(f"speed-up                  {t_full / t_ours:8.1f} x   (target: select <= 5 ms)")
    print(
        f"on {device}: device path (prefix batched_nms + rank) {t_device:8.2f} ms; greedy walk with host round trip "
        f"{t_trip:8.2f} ms"
    )


if __name__ == "__main__":
    main()
