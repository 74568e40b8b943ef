"""Scoring glue: a model on a data set (``evaluate``), detections on a data set
(``score_detections``), and the per-class table the CLI prints (``format_metrics``)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torchvision.ops import box_area, box_convert

from ohem import distributed
from ohem.config import Metric, check_choice
from ohem.evaluation.detections_file import to_coco_results
from ohem.evaluation.voc import voc_evaluate
from ohem.inference import TestTime, predict
from ohem.structures import DetectionDataset, ImageAnnotations, ImageDetections

METRIC_NAMES = {"voc": "mAP@0.5", "voc07": "mAP@0.5 (VOC07 11-point)", "coco": "AP@[.5:.95]"}


def evaluate(
    model: nn.Module,
    dataset: DetectionDataset,
    device: torch.device,
    batch_size: int = 2,
    metric: Metric = "voc",
    test_time: TestTime | None = None,
    d: distributed.Dist | None = None,
    workers: int = 0,
) -> dict[str, Any]:
    """``score_detections`` of ``model`` on ``dataset`` (images read by ``workers`` loader processes);
    under torchrun each process predicts a share of the images and rank 0 scores them all."""
    d = d or distributed.Dist()
    mine = list(range(d.rank, len(dataset), d.world))
    detections = predict(model, dataset, device, batch_size, mine, test_time, workers)
    shares = distributed.gather(d, list(zip(mine, detections)))
    if not d.main:
        return distributed.broadcast(d, None)
    ordered = [det for _, det in sorted((pair for share in shares for pair in share), key=lambda p: p[0])]
    return distributed.broadcast(d, score_detections(dataset, ordered, metric))


def score_detections(
    dataset: DetectionDataset, detections: list[ImageDetections], metric: Metric = "voc"
) -> dict[str, Any]:
    """``{"mAP", "AP": {class: AP}, "metric", "num_images", ...}`` of one detection list per image.

    voc: area AP at IoU 0.5 (VOC 2010+); voc07: the 11-point AP of VOC 2007; coco: pycocotools'
    AP@[.5:.95] as mAP plus AP50/AP75/AP_small/... (on a VOC set, difficult boxes become crowd
    regions: matched detections are ignored, as the devkit ignores them).
    """
    check_choice("metric", metric, Metric)
    if len(detections) != len(dataset):
        raise ValueError(f"{len(detections)} detection lists for {len(dataset)} images")
    annotations = [_annotations(dataset, i) for i in range(len(dataset))]
    if metric == "coco":
        from ohem.evaluation.coco import coco_evaluate  # pycocotools: imported only when asked for

        gt, image_ids = coco_ground_truth(dataset, annotations)
        metrics = coco_evaluate(gt, to_coco_results(detections, image_ids, dataset.category_ids), list(dataset.classes))
    else:
        metrics = voc_evaluate(detections, annotations, dataset.classes, use_07_metric=metric == "voc07")
    return {**metrics, "metric": metric, "num_images": len(dataset)}


def _annotations(dataset: DetectionDataset, index: int) -> ImageAnnotations:
    target = dataset.annotations(index)
    return ImageAnnotations(target["boxes"], target["labels"], target.get("difficult"))


def coco_ground_truth(dataset: DetectionDataset, annotations: list[ImageAnnotations]) -> tuple[dict, list[int]]:
    """A COCO-format ground truth of ``dataset`` and the integer image id of each image.
    A COCO dataset's own file (crowd regions included) is used as it is."""
    own = dataset.coco_ground_truth()
    if own is not None:
        return own, [int(i) for i in dataset.image_ids]  # a COCO file's ids: integers
    images: list[dict] = []
    anns: list[dict] = []
    for i, a in enumerate(annotations):
        h, w = dataset.image_size(i)
        images.append({"id": i + 1, "width": w, "height": h})
        crowd = a.difficult.tolist() if a.difficult is not None else [False] * len(a.labels)
        boxes = a.boxes.double().reshape(-1, 4)
        xywh, areas = box_convert(boxes, "xyxy", "xywh").tolist(), box_area(boxes).tolist()
        for box, area, label, is_crowd in zip(xywh, areas, a.labels.tolist(), crowd):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": dataset.category_ids[label - 1],
                    "iscrowd": int(is_crowd),
                    "bbox": box,
                    "area": area,
                }
            )
    categories = [{"id": c, "name": n} for c, n in zip(dataset.category_ids, dataset.classes)]
    return {"images": images, "annotations": anns, "categories": categories}, [image["id"] for image in images]


def format_metrics(metrics: dict[str, Any]) -> str:
    """A per-class AP table (then the COCO summary numbers, if there); an AP not measured (a class
    without test objects, or none at all) is ``n/a``."""
    width = max([len(n) for n in metrics["AP"]] + [len("AP_medium")])
    header = "AP" if metrics.get("metric") == "coco" else "AP@0.5"
    lines = [f"{'class':<{width}}  {header}"]
    for name, ap in [*metrics["AP"].items(), ("mAP", metrics["mAP"])]:
        lines.append(f"{name:<{width}}  {format_ap(ap, 2, 100):>6}")
    for key in ("AP50", "AP75", "AP_small", "AP_medium", "AP_large"):
        if key in metrics:
            lines.append(f"{key:<{width}}  {format_ap(metrics[key], 2, 100):>6}")
    return "\n".join(lines)


def format_ap(value: Any, digits: int = 4, scale: float = 1) -> str:
    """An AP or mAP as text; ``n/a`` where it was not measured (None in strict JSON, or NaN)."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value * scale:.{digits}f}"


def metrics_note(metrics: dict[str, Any]) -> str | None:
    """One line to say that the mAP is n/a and why (no class has objects in the test split), or None."""
    value = metrics.get("mAP")
    if value is not None and math.isfinite(value):
        return None
    images = metrics.get("num_images", "?")
    return f"mAP n/a: no class has objects in the test split ({images} images); nothing was measured"
