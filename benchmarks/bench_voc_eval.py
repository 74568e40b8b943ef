"""VOC AP evaluation speed: vectorized ``voc_evaluate`` vs the plain devkit-style loop, side by side.

    python benchmarks/bench_voc_eval.py [--images 4952] [--dets 100] [--repeats 3] [--seed 0]

Input is VOC07-test-sized and random but seeded: 20 classes, ~2.4 ground-truth boxes per image
(10 % difficult) on 500 x 375 images, and 100 detections per image, 30 % jittered copies of the
image's boxes (mostly with the right class, scored higher) and the rest random boxes of random
classes. Both implementations are run on the same input for both metrics (VOC 2010+ area and VOC
2007 11-point) and must agree to 1e-6 on every class before the times are printed.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from ohem.evaluation import voc_evaluate
from ohem.evaluation.voc_reference import reference_voc_evaluate
from ohem.structures import ImageAnnotations, ImageDetections

CLASSES = [f"class{k}" for k in range(1, 21)]


def make_case(num_images: int, dets_per_image: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    size = torch.tensor([500.0, 375.0, 500.0, 375.0])
    dets, gts = [], []
    for _ in range(num_images):
        m = 1 + int(torch.poisson(torch.tensor(1.4), generator=g))  # mean 2.4
        xy = torch.rand(m, 2, generator=g) * torch.tensor([400.0, 300.0])
        gt_boxes = torch.cat([xy, xy + 20 + torch.rand(m, 2, generator=g) * 150], 1).minimum(size)
        gt_labels = torch.randint(1, 21, (m,), generator=g)
        difficult = torch.rand(m, generator=g) < 0.1

        n_near = int(dets_per_image * 0.3)
        src = torch.randint(0, m, (n_near,), generator=g)
        wh = (gt_boxes[src, 2:] - gt_boxes[src, :2]).repeat(1, 2)
        near = gt_boxes[src] + torch.randn(n_near, 4, generator=g) * 0.1 * wh
        near_labels = torch.where(
            torch.rand(n_near, generator=g) < 0.8, gt_labels[src], torch.randint(1, 21, (n_near,), generator=g)
        )
        near_scores = 0.3 + 0.7 * torch.rand(n_near, generator=g)
        n_far = dets_per_image - n_near
        xy = torch.rand(n_far, 2, generator=g) * torch.tensor([450.0, 325.0])
        far = torch.cat([xy, xy + 10 + torch.rand(n_far, 2, generator=g) * 200], 1)
        boxes = torch.cat([near, far]).clamp(min=0).minimum(size)
        boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        labels = torch.cat([near_labels, torch.randint(1, 21, (n_far,), generator=g)])
        scores = torch.cat([near_scores, 0.6 * torch.rand(n_far, generator=g)])
        order = torch.argsort(scores, descending=True)  # detectors emit score-sorted lists
        dets.append(ImageDetections(boxes[order], scores[order], labels[order]))
        gts.append(ImageAnnotations(gt_boxes, gt_labels, difficult))
    return dets, gts


def timed(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4952)
    parser.add_argument("--dets", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    dets, gts = make_case(args.images, args.dets, args.seed)
    num_gt = sum(len(a.labels) for a in gts)
    num_det = sum(len(d.labels) for d in dets)
    print(
        f"{args.images} images, {len(CLASSES)} classes, {num_gt} gt boxes ({num_gt / args.images:.2f}/image), "
        f"{num_det} detections; torch threads {torch.get_num_threads()}; median of {args.repeats} runs"
    )
    for use_07 in (False, True):
        metric = "VOC07 11-point" if use_07 else "VOC10 area"
        t_vec, got = timed(lambda: voc_evaluate(dets, gts, CLASSES, use_07_metric=use_07), args.repeats)  # noqa: B023
        t_ref, want = timed(lambda: reference_voc_evaluate(dets, gts, CLASSES, use_07=use_07), args.repeats)  # noqa: B023
        worst = max(
            0.0 if math.isnan(want["AP"][c]) and math.isnan(got["AP"][c]) else abs(got["AP"][c] - want["AP"][c])
            for c in CLASSES
        )
        if not worst <= 1e-6:
            raise SystemExit(f"{metric}: vectorized and reference disagree by {worst:.3g}")
        print(
            f"{metric:15s} mAP {got['mAP']:.4f} (max |diff| {worst:.1e})  vectorized {t_vec:.3f} s  "
            f"reference loop {t_ref:.3f} s  speed-up {t_ref / t_vec:.1f}x"
        )


if __name__ == "__main__":
    main()
