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
import warnings
from pathlib import Path

import torch

from ohem.data.common import EMPTY_IMAGES, BoxChecker, check_choice, read_image, to_target


class COCODetection(torch.utils.data.Dataset):
    """``(image, target)`` with ``boxes``, ``labels`` (1..C), ``difficult`` (all False), ``image_id``."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train2017",
        image_dir: str | Path | None = None,
        empty_images: str = "skip",
        invalid_boxes: str = "fix",
    ) -> None:
        check_choice("data.empty_images", empty_images, EMPTY_IMAGES)
        root = Path(root)
        if split.endswith(".json"):
            ann_file = Path(split) if Path(split).is_absolute() else root / split
            images = Path(image_dir) if image_dir else ann_file.parent
        else:
            ann_file = root / "annotations" / f"instances_{split}.json"
            images = Path(image_dir) if image_dir else root / split
        self.ann_file, self.image_dir = ann_file, images
        self.gt = _load_json(ann_file)
        where = f"COCO annotations {ann_file}"
        categories = sorted(_entries(self.gt, "categories", where, ("id", "name")), key=lambda c: c["id"])
        self.classes = tuple(str(c["name"]) for c in categories)
        self.category_ids = [int(c["id"]) for c in categories]
        label_of = {cid: i for i, cid in enumerate(self.category_ids, start=1)}
        per_image: dict = {}
        for img in _entries(self.gt, "images", where, ("id", "file_name", "width", "height")):
            if img["id"] in per_image:
                raise ValueError(f"{where}: image id {img['id']!r} appears twice")
            per_image[img["id"]] = (img, [])
        checker = BoxChecker(f"COCO {ann_file}", invalid_boxes)
        for k, ann in enumerate(_entries(self.gt, "annotations", where, ("image_id", "category_id", "bbox"))):
            item = f"{where}: annotation {k} (id {ann.get('id', '?')})"
            if ann["image_id"] not in per_image:
                raise ValueError(f"{item}: image_id {ann['image_id']!r} is not in 'images'")
            if ann["category_id"] not in label_of:
                raise ValueError(f"{item}: category_id {ann['category_id']!r} is not in 'categories'")
            if ann.get("iscrowd", 0):
                continue
            bbox = ann["bbox"]
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
                raise ValueError(f"{item}: bbox {bbox!r} is not 4 numbers [x, y, w, h]")
            img = per_image[ann["image_id"]][0]
            x, y, w, h = (float(v) for v in bbox)
            box = checker.check([x, y, x + w, y + h], float(img["width"]), float(img["height"]), item)
            if box is not None:
                per_image[ann["image_id"]][1].append((box, label_of[ann["category_id"]]))
        checker.report()
        self.records = []
        skipped = 0
        for img, objects in per_image.values():
            if not objects and empty_images != "keep":
                if empty_images == "error":
                    raise ValueError(f"{where}: image {img['id']!r} ({img['file_name']}) has no object to train on")
                skipped += 1
                continue
            self.records.append((img, objects))
        if skipped:
            warnings.warn(f"{where}: {skipped} images without objects skipped (data.empty_images)", stacklevel=2)
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


def _entries(data: dict, key: str, where: str, required: tuple[str, ...]) -> list[dict]:
    if key not in data or not isinstance(data[key], list):
        raise ValueError(f"{where}: lacks the list {key!r}")
    for k, entry in enumerate(data[key]):
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: {key}[{k}] is not an object")
        missing = [r for r in required if r not in entry]
        if missing:
            raise ValueError(f"{where}: {key}[{k}] lacks {', '.join(repr(m) for m in missing)}")
    return data[key]


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
