"""COCO-format instance annotations: the official files and any dataset in that format.

    root/annotations/instances_val2017.json   root/val2017/000000000139.jpg

``split`` is a name (``val2017``: the file and folder above) or the path of a JSON file (images
then in ``image_dir``, default: the JSON file's folder). Category ids (COCO's skip numbers) map to
contiguous labels 1..C in ascending id order, and back through ``category_ids``. ``iscrowd``
regions are never trained on (pycocotools ignores them in evaluation). Images without a
trainable object are skipped, kept or refused as ``empty_images`` says; evaluation keeps them all.

The file is checked strictly when the dataset is built (types as well as presence): ids are
integers, unique per list; category names unique; ``file_name`` a relative path inside the image
folder (no ``..``, not absolute; a symlink leaving the folder is refused when the image is read);
``width`` / ``height`` positive integers of a usable size (``common.check_image_size``);
``iscrowd`` 0 or 1; ``bbox`` four finite numbers with finite corners; ``area`` a finite number >= 0.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ohem.config import EmptyImages, InvalidBoxes
from ohem.data.common import (
    DEFAULT_MAX_IMAGE_PIXELS,
    BoxChecker,
    EmptyImageFilter,
    check_image_size,
    read_image,
    to_target,
)
from ohem.data.files import check_inside, entry_path, json_text, load_json
from ohem.structures import DetectionDatasetBase
from ohem.util import finite_box_corners, is_coco_bbox, is_int, is_number, json_object

Objects = list[tuple[list[float], int]]  # one image's (box x1, y1, x2, y2, label 1..C)


class COCODetection(DetectionDatasetBase):
    """``(image, target)`` with ``boxes``, ``labels`` (1..C), ``difficult`` (all False), ``image_id``."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train2017",
        image_dir: str | Path | None = None,
        empty_images: EmptyImages = "skip",
        invalid_boxes: InvalidBoxes = "fix",
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        exif_orientation: bool = False,
    ) -> None:
        root, self.max_image_pixels = Path(root), max_image_pixels
        self.exif_orientation = exif_orientation  # COCO's boxes refer to the stored pixels: off by default
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
        categories = _categories(self.gt, where)
        self.classes = tuple(c["name"] for c in categories)
        self.category_ids = [c["id"] for c in categories]
        checker = BoxChecker(f"COCO {ann_file}", invalid_boxes)
        entries = _images(self.gt, where, self.image_dir, max_image_pixels)
        per_image = _objects_per_image(self.gt, where, entries, self.category_ids, checker)
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
        listed = f"COCO annotations {self.ann_file}: image id {img['id']} (file_name {img['file_name']!r})"
        path = check_inside(self.image_path(index), self.image_dir, listed)
        image = read_image(path, "COCO image", self.max_image_pixels, self.exif_orientation)
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
    data = load_json(path, "COCO annotations")
    if not isinstance(data, dict):
        raise ValueError(f"COCO annotations {path}: expected an object with images/annotations/categories")
    return data


def _int(entry: dict, key: str, item: str, positive: bool = False) -> int:
    """``entry[key]`` if it is an integer (a JSON number without a fraction; not a boolean)."""
    value = entry[key]
    if not is_int(value) or (positive and value <= 0):
        raise ValueError(f"{item}: {key} must be {'a positive' if positive else 'an'} integer, got {json_text(value)}")
    return value


def _categories(gt: dict, where: str) -> list[dict]:
    """The categories sorted by id; ids integers and names non-empty strings, neither repeated."""
    categories: list[dict] = []
    ids: dict[int, int] = {}
    names: dict[str, int] = {}
    for k, cat in enumerate(_entries(gt, "categories", where, ("id", "name"))):
        item = f"{where}: categories[{k}]"
        cid, name = _int(cat, "id", item), cat["name"]
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{item} (id {cid}): name must be a non-empty string, got {json_text(name)}")
        if cid in ids:
            raise ValueError(f"{item}: id {cid} repeats categories[{ids[cid]}] (ids must be unique)")
        if name in names:
            raise ValueError(f"{item} (id {cid}): name {name!r} repeats categories[{names[name]}] (must be unique)")
        ids[cid], names[name] = k, k
        categories.append(cat)
    if not categories:
        raise ValueError(f"{where}: 'categories' is empty: no class to train on or evaluate")
    return sorted(categories, key=lambda c: c["id"])


def _images(gt: dict, where: str, folder: Path, max_pixels: int | None) -> dict[int, dict]:
    """``{image id: image entry}`` in file order, every field checked (the file itself is only
    opened when the image is read)."""
    images: dict[int, dict] = {}
    for k, img in enumerate(_entries(gt, "images", where, ("id", "file_name", "width", "height"))):
        image_id = _int(img, "id", f"{where}: images[{k}]")
        item = f"{where}: images[{k}] (id {image_id})"
        if image_id in images:
            raise ValueError(f"{item}: image id {image_id} appears twice")
        entry_path(folder, img["file_name"], item, "file_name")
        width, height = _int(img, "width", item, positive=True), _int(img, "height", item, positive=True)
        check_image_size(width, height, item, max_pixels)
        images[image_id] = img
    return images


def _objects_per_image(
    gt: dict, where: str, images: dict[int, dict], category_ids: list[int], checker: BoxChecker
) -> dict[int, tuple[dict, Objects]]:
    """``{image id: (image entry, its objects)}`` in file order; crowd regions left out, boxes
    checked (and fixed or dropped) by ``checker``."""
    label_of = {cid: i for i, cid in enumerate(category_ids, start=1)}
    per_image: dict[int, tuple[dict, Objects]] = {image_id: (img, []) for image_id, img in images.items()}
    seen: dict[int, int] = {}
    for k, ann in enumerate(_entries(gt, "annotations", where, ("id", "image_id", "category_id", "bbox"))):
        ann_id = _int(ann, "id", f"{where}: annotation {k}")
        item = f"{where}: annotation {k} (id {ann_id})"
        if ann_id in seen:
            raise ValueError(f"{item}: id {ann_id} repeats annotation {seen[ann_id]} (ids must be unique)")
        seen[ann_id] = k
        if _int(ann, "image_id", item) not in per_image:
            raise ValueError(f"{item}: image_id {ann['image_id']!r} is not in 'images'")
        if _int(ann, "category_id", item) not in label_of:
            raise ValueError(f"{item}: category_id {ann['category_id']!r} is not in 'categories'")
        crowd, xyxy = _crowd(ann, item), _bbox(ann["bbox"], item)
        if "area" in ann and not (is_number(ann["area"]) and math.isfinite(ann["area"]) and ann["area"] >= 0):
            raise ValueError(f"{item}: area must be a finite number >= 0, got {json_text(ann['area'])}")
        if crowd:
            continue
        img, objects = per_image[ann["image_id"]]
        box = checker.check(xyxy, float(img["width"]), float(img["height"]), item)
        if box is not None:
            objects.append((box, label_of[ann["category_id"]]))
    return per_image


def _crowd(ann: dict, item: str) -> bool:
    value = ann.get("iscrowd", 0)
    if value not in (0, 1) or not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{item}: iscrowd must be 0 or 1, got {json_text(value)}")
    return value == 1


def _bbox(bbox: object, item: str) -> list[float]:
    """A ``[x, y, w, h]`` as ``[x1, y1, x2, y2]``: four finite numbers whose corners are finite too."""
    if not is_coco_bbox(bbox):
        shown = repr(bbox) if len(repr(bbox)) <= 60 else repr(bbox)[:57] + "..."
        raise ValueError(f"{item}: bbox {shown} is not 4 numbers [x, y, w, h]")
    xyxy = finite_box_corners(bbox)
    if xyxy is None:
        raise ValueError(f"{item}: bbox {json_text(bbox)} is not finite (its numbers or corners x + w, y + h)")
    return xyxy


def _entries(data: dict, key: str, where: str, required: tuple[str, ...]) -> list[dict]:
    """The list ``data[key]``, each of its entries an object holding the ``required`` keys."""
    if key not in data or not isinstance(data[key], list):
        raise ValueError(f"{where}: lacks the list {key!r}")
    return [json_object(entry, required, f"{where}: {key}[{k}]") for k, entry in enumerate(data[key])]
