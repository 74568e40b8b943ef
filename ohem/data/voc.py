"""PASCAL VOC in the devkit layout, any year, any split, or any tree in that layout.

    VOCdevkit/VOC2007/Annotations/000001.xml
    VOCdevkit/VOC2007/JPEGImages/000001.jpg
    VOCdevkit/VOC2007/ImageSets/Main/trainval.txt

``split`` names one or more ``[YEAR:]NAME`` parts joined by ``+``: ``"2007:test"``,
``"2007:trainval+2012:trainval"`` (the paper's 07+12). ``root`` is the ``VOCdevkit`` folder (a part
without a year uses ``default_year``) or a single tree that holds ``Annotations`` itself (then
parts name only the split). Coordinates: the devkit's 1-based pixel indices become continuous
``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax``.

``difficult`` objects are kept with ``target["difficult"]`` set when ``keep_difficult`` (evaluation:
neither TP nor FP), and left out otherwise (training, as Fast R-CNN did). Annotations are all read
and checked when the dataset is built, so bad input stops a run before it starts.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import torch

from ohem.config import EmptyImages, InvalidBoxes
from ohem.data.common import BoxChecker, EmptyImageFilter, read_image, to_target

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


class VOCDetection(torch.utils.data.Dataset):
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
    ) -> None:
        self.root, self.split = Path(root), split
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
        for tree, name in self._split_files(split, default_year):
            record = self._parse(tree, name, label_of, checker)
            if empty.keeps(len(record["labels"]), f"VOC annotation {record['xml']}"):
                self.records.append(record)
        checker.report()
        empty.report()
        names = [r["name"] for r in self.records]
        if len(set(names)) != len(names):
            raise ValueError(f"VOC {self.root} {split}: image names repeat across the parts of the split")
        self.image_ids = names  # what detection files call the images ("000001")

    def _split_files(self, split: str, default_year: str) -> list[tuple[Path, str]]:
        items = []
        for part in split.split("+"):
            year, _, name = part.strip().rpartition(":")
            if (self.root / "Annotations").is_dir() and not year:
                tree = self.root  # a single VOC-layout tree
            else:
                tree = self.root / f"VOC{year or default_year}"
                if not tree.is_dir():
                    raise FileNotFoundError(f"VOC root {self.root}: no VOC{year or default_year} folder for {part!r}")
            split_file = tree / "ImageSets" / "Main" / f"{name}.txt"
            if not split_file.is_file():
                known = sorted(p.stem for p in split_file.parent.glob("*.txt") if "_" not in p.stem)
                raise FileNotFoundError(f"VOC split file {split_file}: no such file (splits there: {known})")
            ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
            items += [(tree, i) for i in ids]
        return items

    def _parse(self, tree: Path, name: str, label_of: dict[str, int], checker: BoxChecker) -> dict:
        xml = tree / "Annotations" / f"{name}.xml"
        try:
            root = ET.parse(xml).getroot()
        except FileNotFoundError:
            raise FileNotFoundError(f"VOC annotation {xml}: no such file (listed in the split)") from None
        except ET.ParseError as e:
            raise ValueError(f"VOC annotation {xml}: XML does not parse ({e})") from None
        image = _image_path(tree, name)
        width, height = _number(root, "size/width", xml, "size"), _number(root, "size/height", xml, "size")
        if width <= 0 or height <= 0:
            raise ValueError(f"VOC annotation {xml}: image size {width:g}x{height:g} is not positive")
        boxes, labels, difficult = [], [], []
        for k, obj in enumerate(root.findall("object"), start=1):
            where = f"VOC annotation {xml}: object {k}"
            cls = (obj.findtext("name") or "").strip()
            if not cls:
                raise ValueError(f"{where} lacks <name>")
            if cls not in label_of:
                raise ValueError(f"{where}: class {cls!r} is not in the class list (set data.classes for your own)")
            is_difficult = bool(int(_number(obj, "difficult", xml, f"object {k}", default=0)))
            if is_difficult and not self.keep_difficult:
                continue
            xmin, ymin, xmax, ymax = (_number(obj, f"bndbox/{t}", xml, f"object {k}") for t in _BOX_TAGS)
            box = checker.check([xmin - 1, ymin - 1, xmax, ymax], width, height, f"{where} ({cls})")
            if box is None:
                continue
            boxes.append(box)
            labels.append(label_of[cls])
            difficult.append(is_difficult)
        return dict(name=name, xml=xml, image=image, size=(int(height), int(width)), boxes=boxes, labels=labels,
                    difficult=difficult)  # fmt: skip

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        record = self.records[index]
        image = read_image(record["image"], "VOC image")
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
        return float(text)
    except ValueError:
        raise ValueError(f"VOC annotation {xml}: {item} <{path}> is {text.strip()!r}, not a number") from None


def _image_path(tree: Path, name: str) -> Path:
    for ext in IMAGE_EXTENSIONS:
        path = tree / "JPEGImages" / f"{name}{ext}"
        if path.is_file():
            return path
    raise FileNotFoundError(f"VOC image {tree / 'JPEGImages' / name}.jpg: no such file (listed in the split)")
