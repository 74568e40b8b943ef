"""COCO-format instance annotations: the official files and any dataset in that format.

    root/annotations/instances_val2017.json   root/val2017/000000000139.jpg

``split`` is a name (``val2017``: the file and folder above) or the path of a JSON file (images
then in ``image_dir``, default: the JSON file's folder). Category ids (COCO's skip numbers) map to
contiguous labels 1..C in ascending id order, and back through ``category_ids``. ``iscrowd``
regions are never trained on (pycocotools ignores them in evaluation). Images without a
trainable object are skipped, kept or refused as ``empty_images`` says; evaluation keeps them all.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ohem.config import EmptyImages, InvalidBoxes
from ohem.data.common import BoxChecker, EmptyImageFilter, read_image, to_target
from ohem.util import is_coco_bbox, json_object, xywh_to_xyxy

Objects = list[tuple[list[float], int]]  # one image's (box x1, y1, x2, y2, label 1..C)


class COCODetection(torch.utils.data.Dataset):
    """``(image, target)`` with ``boxes``, ``labels`` (1..C), ``difficult`` (all False), ``image_id``."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train2017",
        image_dir: str | Path | None = None,
        empty_images: EmptyImages = "skip",
        invalid_boxes: InvalidBoxes = "fix",
    ) -> None:
        root = Path(root)
        if split.endswith(".json"):
            ann_file = Path(split) if Path(split).is_absolute() else root / split
            images = Path(image_dir) if image_dir else ann_file.parent
        else:
            ann_file = root / "annotations" / f"instances_{split}.json"
            images = Path(image_dir) if image_dir else root / split
        self.ann_file, self.image_dir = ann_file, images
        where = f"COCO annotations {ann_file}"
        empty = EmptyImageFilter(where, empty_images)
        self.gt = _load_json(ann_file)
        categories = sorted(_entries(self.gt, "categories", where, ("id", "name")), key=lambda c: c["id"])
        self.classes = tuple(str(c["name"]) for c in categories)
        self.category_ids = [int(c["id"]) for c in categories]
        checker = BoxChecker(f"COCO {ann_file}", invalid_boxes)
        per_image = _objects_per_image(self.gt, where, self.category_ids, checker)
        checker.report()
        self.records = [
            (img, objects)
            for img, objects in per_image.values()
            if empty.keeps(len(objects), f"{where}: image {img['id']!r} ({img['file_name']})")
        ]
        empty.report()
        self.image_ids = [img["id"] for img, _ in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        img = self.records[index][0]
        image = read_image(self.image_path(index), "COCO image")
        if image.shape[-2:] != (img["height"], img["width"]):
            raise ValueError(
                f"COCO image {self.image_path(index)}: is {image.shape[-1]}x{image.shape[-2]} but "
                f"{self.ann_file} says {img['width']}x{img['height']} (image id {img['id']})"
            )
        return image, self.annotations(index)

    def annotations(self, index: int) -> dict[str, torch.Tensor]:
        objects = self.records[index][1]
        return to_target([b for b, _ in objects], [lab for _, lab in objects], [False] * len(objects), index)

    def image_name(self, index: int) -> str:
        return str(self.records[index][0]["id"])

    def image_size(self, index: int) -> tuple[int, int]:
        img = self.records[index][0]
        return int(img["height"]), int(img["width"])

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.records[index][0]["file_name"]

    def coco_ground_truth(self) -> dict:
        """The annotation file's dict restricted to this dataset's images (for pycocotools)."""
        keep = set(self.image_ids)
        return {
            "images": [img for img in self.gt["images"] if img["id"] in keep],
            "annotations": [a for a in self.gt["annotations"] if a["image_id"] in keep],
            "categories": self.gt["categories"],
        }


def _load_json(path: Path) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"COCO annotations {path}: no such file") from None
    except json.JSONDecodeError as e:
        where = f"line {e.lineno} column {e.colno}"
        raise ValueError(f"COCO annotations {path}: not valid JSON ({e.msg} at {where})") from None
    except UnicodeDecodeError:
        raise ValueError(f"COCO annotations {path}: not valid JSON (not UTF-8 text)") from None
    if not isinstance(data, dict):
        raise ValueError(f"COCO annotations {path}: expected an object with images/annotations/categories")
    return data


def _objects_per_image(
    gt: dict, where: str, category_ids: list[int], checker: BoxChecker
) -> dict[object, tuple[dict, Objects]]:
    """``{image id: (image entry, its objects)}`` in file order; crowd regions left out, boxes
    checked (and fixed or dropped) by ``checker``."""
    label_of = {cid: i for i, cid in enumerate(category_ids, start=1)}
    per_image: dict[object, tuple[dict, Objects]] = {}
    for img in _entries(gt, "images", where, ("id", "file_name", "width", "height")):
        if img["id"] in per_image:
            raise ValueError(f"{where}: image id {img['id']!r} appears twice")
        per_image[img["id"]] = (img, [])
    for k, ann in enumerate(_entries(gt, "annotations", where, ("image_id", "category_id", "bbox"))):
        item = f"{where}: annotation {k} (id {ann.get('id', '?')})"
        if ann["image_id"] not in per_image:
            raise ValueError(f"{item}: image_id {ann['image_id']!r} is not in 'images'")
        if ann["category_id"] not in label_of:
            raise ValueError(f"{item}: category_id {ann['category_id']!r} is not in 'categories'")
        if ann.get("iscrowd", 0):
            continue
        if not is_coco_bbox(ann["bbox"]):
            raise ValueError(f"{item}: bbox {ann['bbox']!r} is not 4 numbers [x, y, w, h]")
        img, objects = per_image[ann["image_id"]]
        box = checker.check(xywh_to_xyxy(ann["bbox"]), float(img["width"]), float(img["height"]), item)
        if box is not None:
            objects.append((box, label_of[ann["category_id"]]))
    return per_image


def _entries(data: dict, key: str, where: str, required: tuple[str, ...]) -> list[dict]:
    """The list ``data[key]``, each of its entries an object holding the ``required`` keys."""
    if key not in data or not isinstance(data[key], list):
        raise ValueError(f"{where}: lacks the list {key!r}")
    return [json_object(entry, required, f"{where}: {key}[{k}]") for k, entry in enumerate(data[key])]
