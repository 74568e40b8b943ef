"""PASCAL VOC in the devkit layout, any year, any split, or any tree in that layout.

    VOCdevkit/VOC2007/Annotations/000001.xml
    VOCdevkit/VOC2007/JPEGImages/000001.jpg
    VOCdevkit/VOC2007/ImageSets/Main/trainval.txt

``split`` names one or more ``[YEAR:]NAME`` parts joined by ``+``: ``"2007:test"``,
``"2007:trainval+2012:trainval"`` (the paper's 07+12). ``root`` is the ``VOCdevkit`` folder (a part
without a year uses ``default_year``) or a single tree that holds ``Annotations`` itself (then
parts name only the split). Each split line names an image inside the tree: absolute paths, ``..``
and symlinks leaving ``Annotations`` / ``JPEGImages`` are refused, and only regular files are opened
(``ohem.data.files``). Coordinates: the devkit's 1-based pixel indices become continuous
``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax``.

``difficult`` objects are kept with ``target["difficult"]`` set when ``keep_difficult`` (evaluation:
neither TP nor FP), and left out otherwise (training, as Fast R-CNN did). Annotations are all read
and checked when the dataset is built, so bad input stops a run before it starts.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
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
from ohem.data.files import check_inside, entry_path, read_bytes, read_text
from ohem.structures import DetectionDatasetBase
from ohem.util import regular_file

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


class VOCDetection(DetectionDatasetBase):
    """``(image, target)`` with ``boxes``, ``labels`` (1..C in ``classes`` order), ``difficult``, ``image_id``."""

    def __init__(
        self,
        root: str | Path,
        split: str = "2007:trainval",
        classes: list[str] | tuple[str, ...] | None = None,
        keep_difficult: bool = False,
        empty_images: EmptyImages = "skip",
        invalid_boxes: InvalidBoxes = "fix",
        default_year: str = "2007",
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        exif_orientation: bool = False,
    ) -> None:
        self.root, self.split, self.max_image_pixels = Path(root), split, max_image_pixels
        self.exif_orientation = exif_orientation  # the devkit's boxes refer to the stored pixels: off by default
        self.classes = tuple(classes) if classes else VOC_CLASSES
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"data.classes: names repeat in {list(self.classes)}")
        self.category_ids = list(range(1, len(self.classes) + 1))  # the devkit's class order, 1-based
        self.keep_difficult = keep_difficult
        if not self.root.is_dir():
            raise FileNotFoundError(f"VOC root {self.root}: no such folder")
        label_of = {name: i for i, name in enumerate(self.classes, start=1)}
        checker = BoxChecker(f"VOC {self.root} {split}", invalid_boxes)
        empty = EmptyImageFilter(f"VOC {self.root} {split}", empty_images)
        self.records: list[dict] = []
        for tree, name, listed in self._split_files(split, default_year):
            record = self._parse(tree, name, listed, label_of, checker)
            if empty.keeps(len(record["labels"]), f"VOC annotation {record['xml']}"):
                self.records.append(record)
        checker.report()
        empty.report()
        names = [r["name"] for r in self.records]
        if len(set(names)) != len(names):
            dup = next(n for i, n in enumerate(names) if n in names[:i])
            raise ValueError(f"VOC {self.root} {split}: image {dup!r} is listed twice in the split")
        self.image_ids = names  # what detection files call the images ("000001")

    def _split_files(self, split: str, default_year: str) -> list[tuple[Path, str, str]]:
        """(tree, image name, where it is listed) of every line of the split's files, in order."""
        items, self.split_files = [], []
        for part in split.split("+"):
            year, _, name = part.strip().rpartition(":")
            if (self.root / "Annotations").is_dir() and not year:
                tree = self.root  # a single VOC-layout tree
            else:
                tree = self.root / f"VOC{year or default_year}"
                if not tree.is_dir():
                    raise FileNotFoundError(f"VOC root {self.root}: no VOC{year or default_year} folder for {part!r}")
            split_file = tree / "ImageSets" / "Main" / f"{name}.txt"
            if not split_file.exists():
                known = sorted(p.stem for p in split_file.parent.glob("*.txt") if "_" not in p.stem)
                raise FileNotFoundError(f"VOC split file {split_file}: no such file (splits there: {known})")
            text = read_text(split_file, "VOC split file")
            self.split_files.append(split_file)
            for k, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    where = f"VOC split file {split_file}: line {k}"
                    entry_path(tree, line.split()[0], where, "image name")
                    items.append((tree, line.split()[0], where))
        return items

    def _class_list(self) -> str:
        """The class list an object's name was looked up in, and the key that sets it."""
        if self.classes == VOC_CLASSES:
            return "(the 20 VOC classes; for your own, set data.classes, or --classes, to all of their names)"
        shown = ", ".join(self.classes[:30]) + (", ..." if len(self.classes) > 30 else "")
        return f"data.classes [{shown}] (it, or --classes for eval and proposals, must name every annotated class)"

    def _parse(self, tree: Path, name: str, listed: str, label_of: dict[str, int], checker: BoxChecker) -> dict:
        """The record of image ``name`` from its annotation; ``listed``: the split file and line naming it."""
        xml = check_inside(tree / "Annotations" / f"{name}.xml", tree / "Annotations", listed)
        if not xml.exists():
            raise FileNotFoundError(f"VOC annotation {xml}: no such file (listed in {listed})")
        try:
            root = ET.fromstring(read_bytes(xml, "VOC annotation"))
        except ET.ParseError as e:
            raise ValueError(f"VOC annotation {xml}: XML does not parse ({e})") from None
        image = _image_path(tree, name, listed)
        width, height = _size(root, "size/width", xml), _size(root, "size/height", xml)
        check_image_size(width, height, f"VOC annotation {xml}", self.max_image_pixels)
        boxes, labels, difficult = [], [], []
        for k, obj in enumerate(root.findall("object"), start=1):
            where = f"VOC annotation {xml}: object {k}"
            cls = (obj.findtext("name") or "").strip()
            if not cls:
                raise ValueError(f"{where} lacks <name>")
            if cls not in label_of:
                raise ValueError(f"{where}: class {cls!r} is not in the class list {self._class_list()}")
            is_difficult = _flag(obj, "difficult", xml, f"object {k}")
            if is_difficult and not self.keep_difficult:
                continue
            xmin, ymin, xmax, ymax = (_number(obj, f"bndbox/{t}", xml, f"object {k}") for t in _BOX_TAGS)
            box = checker.check([xmin - 1, ymin - 1, xmax, ymax], width, height, f"{where} ({cls})")
            if box is None:
                continue
            boxes.append(box)
            labels.append(label_of[cls])
            difficult.append(is_difficult)
        return dict(
            name=name,
            xml=xml,
            image=image,
            size=(int(height), int(width)),
            boxes=boxes,
            labels=labels,
            difficult=difficult,
        )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        record = self.records[index]
        image = read_image(record["image"], "VOC image", self.max_image_pixels, self.exif_orientation)
        if tuple(image.shape[-2:]) != record["size"]:
            h, w = record["size"]
            raise ValueError(
                f"VOC image {record['image']}: is {image.shape[-1]}x{image.shape[-2]} but its annotation says {w}x{h}"
            )
        return image, self.annotations(index)

    def annotations(self, index: int) -> dict[str, torch.Tensor]:
        r = self.records[index]
        return to_target(r["boxes"], r["labels"], r["difficult"], index)

    def image_name(self, index: int) -> str:
        return self.records[index]["name"]

    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) from the annotation, without decoding the image."""
        return self.records[index]["size"]

    def image_path(self, index: int) -> Path:
        return self.records[index]["image"]


_BOX_TAGS = ("xmin", "ymin", "xmax", "ymax")


def _number(node: ET.Element, path: str, xml: Path, item: str, default: float | None = None) -> float:
    text = node.findtext(path)
    if text is None or not text.strip():
        if default is not None:
            return default
        raise ValueError(f"VOC annotation {xml}: {item} lacks <{path}>")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"VOC annotation {xml}: {item} <{path}> is {text.strip()!r}, not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"VOC annotation {xml}: {item} <{path}> is {text.strip()!r}, not a finite number")
    return value


def _size(node: ET.Element, path: str, xml: Path) -> int:
    """An image side: a whole number of pixels (checked further by ``check_image_size``)."""
    value = _number(node, path, xml, "size")
    if not value.is_integer() or value <= 0:
        raise ValueError(f"VOC annotation {xml}: size <{path}> is {value:g}, not a positive whole number of pixels")
    return int(value)


def _flag(node: ET.Element, path: str, xml: Path, item: str) -> bool:
    """A 0/1 field such as ``<difficult>`` (absent: 0)."""
    value = _number(node, path, xml, item, default=0)
    if value not in (0, 1):
        raise ValueError(f"VOC annotation {xml}: {item} <{path}> is {value:g}, not 0 or 1")
    return bool(value)


def _image_path(tree: Path, name: str, listed: str) -> Path:
    """The image file of ``name`` (the first extension found), a regular file inside ``JPEGImages``."""
    folder = tree / "JPEGImages"
    for ext in IMAGE_EXTENSIONS:
        path = folder / f"{name}{ext}"
        if os.path.lexists(path):
            check_inside(path, folder, listed)
            return regular_file(path, "VOC image")
    raise FileNotFoundError(f"VOC image {folder / name}.jpg: no such file (listed in {listed})")
