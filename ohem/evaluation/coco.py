"""COCO box AP through pycocotools' COCOeval (the reference implementation; not re-implemented).

``coco_evaluate`` takes the ground truth as a COCO instances dict and the detections as COCO
results entries, so no file has to be written. What it adds around COCOeval:

* the dicts are copied first (COCOeval writes ``ignore`` into ground-truth annotations, loadRes
  writes ``area``/``id`` into results), and pycocotools' progress prints are silenced;
* ground-truth annotations without ``area`` get ``w * h`` and without ``iscrowd`` get 0;
* results naming an image or a category the ground truth lacks raise ValueError (COCOeval would
  assert on the image and silently skip the category), and so do results whose box or score is
  not finite (corners ``x + w`` included);
* a ground truth without images, with repeated category ids or names, repeated annotation ids
  (pycocotools would keep one of each silently), ``iscrowd`` other than 0/1 or a box that is not four
  finite numbers raises ValueError, as do repeated ``class_names`` (one AP per name);
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

from ohem.util import finite_box_corners, is_int, is_number

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
    for key in ("images", "categories"):
        if not isinstance(gt.get(key), list):
            raise ValueError(f"coco_evaluate: ground truth has no {key!r} list")
    if not gt["images"]:
        raise ValueError("coco_evaluate: ground truth has no images (nothing to evaluate on)")
    _check_categories(gt["categories"])
    gt = {**gt, "annotations": _complete_annotations(gt.get("annotations", []))}
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
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"coco_evaluate: class names repeat ({_first_repeat(class_names)!r}): one AP per name")
    results = _checked_results(results, set(coco_gt.getImgIds()), set(cat_ids))

    with contextlib.redirect_stdout(io.StringIO()):  # progress prints
        coco_dt = coco_gt.loadRes(results) if results else _no_detections(coco_gt)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()

    out: dict[str, Any] = {name: _nan_if_missing(v) for name, v in zip(_STAT_NAMES, evaluator.stats)}
    precision = evaluator.eval["precision"]  # [iou thresholds, recall points, categories, areas, max dets]
    out["AP"] = {}
    for k, name in enumerate(class_names):
        p = precision[:, :, k, 0, -1]
        valid = p[p > -1]
        out["AP"][name] = float(np.mean(valid)) if valid.size else float("nan")
    out["summary"] = summary.getvalue()
    return out


def _check_categories(categories: list) -> None:
    ids, names = [], []
    for k, cat in enumerate(categories):
        if not isinstance(cat, dict) or not is_int(cat.get("id")):
            raise ValueError(f"coco_evaluate: ground truth categories[{k}]: expected an object with an integer id")
        if not isinstance(cat.get("name", ""), str):
            raise ValueError(f"coco_evaluate: ground truth categories[{k}]: name {cat['name']!r} is not a string")
        ids.append(cat["id"])
        names.append(cat.get("name", str(cat["id"])))
    for what, values in (("ids", ids), ("names", names)):
        if len(set(values)) != len(values):
            raise ValueError(f"coco_evaluate: ground truth category {what} repeat ({_first_repeat(values)!r})")


def _complete_annotations(annotations: list) -> list[dict]:
    """Copies with COCOeval's required ``area`` and ``iscrowd`` filled in when missing, after checking
    what pycocotools takes on trust: unique integer ids, 0/1 ``iscrowd``, finite boxes."""
    out, seen = [], set()
    for k, annotation in enumerate(annotations):
        where = f"coco_evaluate: ground truth annotations[{k}]"
        if not isinstance(annotation, dict) or not is_int(annotation.get("id")):
            raise ValueError(f"{where}: expected an object with an integer id")
        if annotation["id"] in seen:
            raise ValueError(f"{where}: id {annotation['id']} appears twice")
        seen.add(annotation["id"])
        a = dict(annotation)
        _check_box(a.get("bbox"), where)
        a.setdefault("iscrowd", 0)
        if a["iscrowd"] not in (0, 1) or not is_int(a["iscrowd"]):
            raise ValueError(f"{where}: iscrowd must be 0 or 1, got {a['iscrowd']!r}")
        if "area" not in a:
            a["area"] = float(a["bbox"][2]) * float(a["bbox"][3])
        out.append(a)
    return out


def _check_box(bbox: object, where: str) -> None:
    """Four finite numbers ``[x, y, w, h]`` whose corners ``x + w``, ``y + h`` are finite too."""
    if finite_box_corners(bbox) is None:
        raise ValueError(f"{where}: bbox {bbox!r} is not 4 finite numbers [x, y, w, h] with finite corners")


def _first_repeat(values: list) -> object:
    seen: set[object] = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    raise ValueError("no value repeats")


def _checked_results(results: list[dict], image_ids: set, cat_ids: set) -> list[dict]:
    """Copies of the entries (loadRes writes into them), after checking what COCOeval would not."""
    checked = []
    for i, entry in enumerate(results):
        missing = [k for k in _RESULT_KEYS if k not in entry]
        if missing:
            raise ValueError(f"coco_evaluate: results entry {i}: missing {', '.join(map(repr, missing))}")
        if not isinstance(entry["image_id"], (int, str)) or entry["image_id"] not in image_ids:
            raise ValueError(
                f"coco_evaluate: results entry {i}: image_id {entry['image_id']!r} is not in the ground truth"
            )
        if not is_int(entry["category_id"]) or entry["category_id"] not in cat_ids:
            raise ValueError(
                f"coco_evaluate: results entry {i}: category_id {entry['category_id']!r} is not in the ground truth"
            )
        _check_box(entry["bbox"], f"coco_evaluate: results entry {i}")
        if not is_number(entry["score"]) or not math.isfinite(entry["score"]):
            raise ValueError(f"coco_evaluate: results entry {i}: score {entry['score']!r} is not a finite number")
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
