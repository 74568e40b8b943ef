"""COCO box AP through pycocotools' COCOeval (the reference implementation; not re-implemented).

``coco_evaluate`` takes the ground truth as a COCO instances dict and the detections as COCO
results entries, so no file has to be written. What it adds around COCOeval:

* the dicts are copied first (COCOeval writes ``ignore`` into ground-truth annotations, loadRes
  writes ``area``/``id`` into results), and pycocotools' progress prints are silenced;
* ground-truth annotations without ``area`` get ``w * h`` and without ``iscrowd`` get 0;
* results naming an image or a category the ground truth lacks raise ValueError (COCOeval would
  assert on the image and silently skip the category);
* an empty results list is evaluated as "no detections" (loadRes cannot take one): every category
  with ground truth then has AP 0, exactly what COCOeval gives when a detector finds nothing;
* COCOeval's -1 ("no ground truth to measure against") becomes NaN.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from typing import Any

import numpy as np

_RESULT_KEYS = ("image_id", "category_id", "bbox", "score")
_STAT_NAMES = ("mAP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")


def coco_evaluate(gt: dict, results: list[dict], class_names: list[str] | None = None) -> dict:
    """COCO box metrics of ``results`` against ``gt``.

    Returns ``{"mAP": AP@[.5:.95], "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AP": {class_name: AP@[.5:.95]}, "summary": COCOeval's printed table}`` (maxDets 100).
    Per-class AP is the mean of COCOeval's precision over IoU thresholds and recall points for
    that category (area "all", 100 detections); NaN where the category has no ground truth.
    ``class_names`` names the categories in ascending category-id order (COCOeval's order); by
    default the categories' own ``name``.
    """
    gt = {**gt, "annotations": [_complete_gt(a) for a in gt.get("annotations", [])]}
    for key in ("images", "categories"):
        if key not in gt:
            raise ValueError(f"coco_evaluate: ground truth has no {key!r} list")
    gt.setdefault("info", {})
    from pycocotools.coco import COCO  # imported when used: importing ohem needs no pycocotools
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
    cat_ids = sorted(coco_gt.getCatIds())
    if class_names is None:
        class_names = [coco_gt.cats[c].get("name", str(c)) for c in cat_ids]
    elif len(class_names) != len(cat_ids):
        raise ValueError(f"coco_evaluate: {len(class_names)} class names for {len(cat_ids)} categories")
    results = _checked_results(results, set(coco_gt.getImgIds()), set(cat_ids))

    with contextlib.redirect_stdout(io.StringIO()):  # progress prints
        coco_dt = coco_gt.loadRes(results) if results else _no_detections(coco_gt)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()

    out = {name: _nan_if_missing(v) for name, v in zip(_STAT_NAMES, evaluator.stats)}
    precision = evaluator.eval["precision"]  # [iou thresholds, recall points, categories, areas, max dets]
    out["AP"] = {}
    for k, name in enumerate(class_names):
        p = precision[:, :, k, 0, -1]
        valid = p[p > -1]
        out["AP"][name] = float(np.mean(valid)) if valid.size else float("nan")
    out["summary"] = summary.getvalue()
    return out


def _complete_gt(annotation: dict) -> dict:
    """A copy with COCOeval's required ``area`` and ``iscrowd`` filled in when missing."""
    a = dict(annotation)
    if "area" not in a and "bbox" in a:
        a["area"] = float(a["bbox"][2]) * float(a["bbox"][3])
    a.setdefault("iscrowd", 0)
    return a


def _checked_results(results: list[dict], image_ids: set, cat_ids: set) -> list[dict]:
    """Copies of the entries (loadRes writes into them), after checking what COCOeval would not."""
    checked = []
    for i, entry in enumerate(results):
        missing = [k for k in _RESULT_KEYS if k not in entry]
        if missing:
            raise ValueError(f"coco_evaluate: results entry {i}: missing {', '.join(map(repr, missing))}")
        if entry["image_id"] not in image_ids:
            raise ValueError(
                f"coco_evaluate: results entry {i}: image_id {entry['image_id']!r} is not in the ground truth"
            )
        if entry["category_id"] not in cat_ids:
            raise ValueError(
                f"coco_evaluate: results entry {i}: category_id {entry['category_id']!r} is not in the ground truth"
            )
        checked.append({**entry, "bbox": list(entry["bbox"])})
    return checked


def _no_detections(coco_gt: Any) -> Any:  # pycocotools COCO objects
    """What loadRes would build from a results list with nothing in it."""
    coco_dt = type(coco_gt)()
    coco_dt.dataset = {
        "info": {},
        "images": list(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    coco_dt.createIndex()
    return coco_dt


def _nan_if_missing(value: float) -> float:
    """COCOeval reports -1 where there is nothing to measure; NaN says so without looking like a score."""
    value = float(value)
    return float("nan") if value == -1 or math.isnan(value) else value
