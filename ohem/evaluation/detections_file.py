"""Detections files: a COCO results JSON list, read into and written from ``ImageDetections``.

Each entry is ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``, the format COCO's
evaluation server and pycocotools take. ``image_ids[i]`` names image ``i`` of the dataset split
(VOC: the devkit name string such as ``"000001"``; COCO: the int id) and ``category_ids[k]`` is the
category id of contiguous label ``k + 1``.

Reading is strict: every problem raises ValueError with one line naming the file and the entry,
and no entry is silently dropped (a detections file that does not fit its dataset would otherwise
score as a weak detector instead of failing). Only a regular file is opened (a directory or FIFO is
refused); numbers beyond float range, nesting deeper than ``ohem.data.files.MAX_JSON_DEPTH`` and
boxes or scores that a float32 cannot hold (``[1e308, 0, 1e308, 1]`` has x2 = inf) are errors.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from torchvision.ops import box_convert

from ohem.data.files import load_json
from ohem.structures import ImageDetections
from ohem.util import atomic_open, is_coco_bbox, is_int, is_number, json_object, json_type, xywh_to_xyxy

_KEYS = ("image_id", "category_id", "bbox", "score")


def read_detections(
    path: str | os.PathLike, image_ids: Sequence[str | int], category_ids: Sequence[int]
) -> list[ImageDetections]:
    """One ImageDetections per dataset image, in dataset order (boxes ``x1, y1, x2, y2`` float32,
    labels contiguous ``1..len(category_ids)``); entries keep their file order within an image."""
    where = f"detections {os.fspath(path)}"
    image_index = _index(image_ids, "image_ids")
    label_of = {c: k for k, c in enumerate(_index(category_ids, "category_ids"), start=1)}
    boxes: list[list[list[float]]] = [[] for _ in image_ids]
    scores: list[list[float]] = [[] for _ in image_ids]
    labels: list[list[int]] = [[] for _ in image_ids]
    for i, entry in enumerate(_read_entries(path, where)):
        at = f"{where}: entry {i}"
        entry = json_object(entry, _KEYS, at)
        image_id, category_id, bbox, score = (entry[k] for k in _KEYS)
        if not isinstance(image_id, (str, int)) or isinstance(image_id, bool):
            raise ValueError(f"{at}: image_id must be a string or an integer, got {_short(image_id)}")
        if image_id not in image_index:
            raise ValueError(f"{at}: image_id {image_id!r} is not in the dataset split{_id_hint(image_id, image_ids)}")
        if not is_int(category_id):
            raise ValueError(f"{at}: category_id must be an integer, got {_short(category_id)}")
        if category_id not in label_of:
            raise ValueError(
                f"{at}: category_id {category_id} is not one of the dataset's categories ({_id_range(category_ids)})"
            )
        box = _checked_box(bbox, at)
        if not is_number(score) or not _fits_float32(score):
            raise ValueError(f"{at}: score must be a finite number, got {_short(score)}")
        img = image_index[image_id]
        boxes[img].append(box)
        scores[img].append(float(score))
        labels[img].append(label_of[category_id])
    return [
        ImageDetections(
            torch.tensor(b, dtype=torch.float32).reshape(-1, 4),
            torch.tensor(s, dtype=torch.float32),
            torch.tensor(lab, dtype=torch.int64),
        )
        for b, s, lab in zip(boxes, scores, labels)
    ]


def _read_entries(path: str | os.PathLike, where: str) -> list:
    """The file's JSON list (its entries not yet checked)."""
    entries = load_json(path, "detections")
    if not isinstance(entries, list):
        raise ValueError(
            f"{where}: expected a JSON list of COCO results entries "
            f"({{image_id, category_id, bbox, score}}), got a JSON {json_type(entries)}"
        )
    return entries


def _checked_box(bbox: Any, at: str) -> list[float]:
    """An entry's ``[x, y, w, h]`` as ``[x1, y1, x2, y2]``; an error unless it is four finite
    numbers with a width and height of at least 0."""
    if not is_coco_bbox(bbox):
        raise ValueError(f"{at}: bbox must be a list of 4 numbers [x, y, w, h], got {_short(bbox)}")
    if not all(math.isfinite(v) for v in bbox):
        raise ValueError(f"{at}: bbox {bbox} is not finite")
    if bbox[2] < 0 or bbox[3] < 0:
        raise ValueError(f"{at}: bbox {bbox} has a negative width or height (COCO boxes are [x, y, w, h])")
    xyxy = xywh_to_xyxy(bbox)
    if not all(_fits_float32(v) for v in xyxy):
        raise ValueError(f"{at}: bbox {bbox} has corners x1, y1, x2, y2 = {xyxy} beyond float32 range")
    return xyxy


_FLOAT32_MAX = 3.4028234663852886e38


def _fits_float32(v: float) -> bool:
    """Finite, and finite still when stored as float32 (as boxes and scores are)."""
    return math.isfinite(v) and -_FLOAT32_MAX <= v <= _FLOAT32_MAX


def to_coco_results(
    detections: Sequence[ImageDetections], image_ids: Sequence[str | int], category_ids: Sequence[int]
) -> list[dict]:
    """COCO results entries (``image_id``, ``category_id``, ``bbox`` x, y, w, h, ``score``) of one
    detection list per image; label ``k`` is ``category_ids[k - 1]``. Non-finite values, inverted
    boxes and labels out of range are errors naming the image."""
    if len(detections) != len(image_ids):
        raise ValueError(f"detections: {len(detections)} detection lists for {len(image_ids)} image ids")
    results = []
    for image_id, d in zip(image_ids, detections):
        image_id = image_id if isinstance(image_id, str) else int(image_id)  # numpy ints are not JSON
        xywh = box_convert(d.boxes.detach().cpu().double().reshape(-1, 4), "xyxy", "xywh")
        if not torch.isfinite(xywh).all():
            raise ValueError(f"detections: image {image_id!r} has a non-finite box")
        if (xywh[:, 2:] < 0).any():
            raise ValueError(f"detections: image {image_id!r} has a box with x2 < x1 or y2 < y1")
        scores = d.scores.detach().cpu().double().reshape(-1).tolist()
        for bbox, score, label in zip(xywh.tolist(), scores, d.labels.detach().cpu().reshape(-1).tolist()):
            if not 1 <= label <= len(category_ids):
                raise ValueError(f"detections: image {image_id!r} has label {label}, not in 1..{len(category_ids)}")
            if not math.isfinite(score):
                raise ValueError(f"detections: image {image_id!r} has a non-finite score")
            results.append(
                {"image_id": image_id, "category_id": int(category_ids[label - 1]), "bbox": bbox, "score": score}
            )
    return results


def write_detections(
    path: str | os.PathLike,
    detections: Sequence[ImageDetections],
    image_ids: Sequence[str | int],
    category_ids: Sequence[int],
) -> None:
    """Write ``detections`` (one per dataset image, in dataset order) as a COCO results JSON list.

    Boxes are rounded to 0.01 px and scores to 5 significant digits, so ``read_detections`` gives
    them back within that rounding. The file is replaced atomically: a reader never sees half of it.
    """
    _index(image_ids, "image_ids")
    entries = to_coco_results(detections, image_ids, category_ids)
    # One entry per line: diffable, and a JSON error's line number points at the entry.
    lines = [
        json.dumps({**e, "bbox": [round(v, 2) for v in e["bbox"]], "score": float(f"{e['score']:.5g}")})
        for e in entries
    ]
    text = "[\n" + ",\n".join(lines) + "\n]\n" if lines else "[]\n"
    with atomic_open(path) as f:
        f.write(text)


def _index(ids: Sequence, what: str) -> dict:
    """``{id: position}``; duplicates would make the mapping ambiguous."""
    index: dict[str | int, int] = {}
    for k, i in enumerate(ids):
        i = i if isinstance(i, str) else int(i)
        if i in index:
            raise ValueError(f"{what}: {i!r} appears twice (positions {index[i]} and {k})")
        index[i] = k
    return index


def _id_hint(image_id: str | int, image_ids: Sequence[str | int]) -> str:
    """Why an unknown id might be meant as a known one: the same number written as an int or a string."""
    if not image_ids:
        return " (the split has no images)"
    example = image_ids[0]
    if isinstance(image_id, int) and isinstance(example, str):
        if any(isinstance(s, str) and s.isdigit() and int(s) == image_id for s in image_ids):
            return f"; this dataset's image ids are strings like {example!r}, not integers"
    if isinstance(image_id, str) and not isinstance(example, str):
        if image_id.strip().isdigit() and int(image_id) in set(int(i) for i in image_ids):
            return f"; this dataset's image ids are integers like {int(example)}, not strings"
    return f" ({len(image_ids)} images, e.g. {example if isinstance(example, str) else int(example)!r})"


def _id_range(category_ids: Sequence[int]) -> str:
    ids = sorted(int(c) for c in category_ids)
    if not ids:
        return "none"
    if ids == list(range(ids[0], ids[-1] + 1)):
        return f"{ids[0]}..{ids[-1]}"
    return f"{len(ids)} ids from {ids[0]} to {ids[-1]}"


def _short(v: object, limit: int = 60) -> str:
    """A value for an error message, cut short so the message stays one readable line."""
    text = json.dumps(v) if not isinstance(v, float) or math.isfinite(v) else repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."
