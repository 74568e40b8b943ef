"""Write the built-in synthetic dataset in the VOC devkit or COCO layout, so the file loaders (and
anyone's other tools) can read it. Images are PNG, so pixels survive the round trip exactly.

VOC:  OUT/Annotations/NAME.xml, OUT/JPEGImages/NAME.png, OUT/ImageSets/Main/SPLIT.txt
COCO: OUT/annotations/instances_SPLIT.json, OUT/SPLIT/NAME.png
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from PIL import Image
from torchvision.ops import box_convert
from tqdm import tqdm

from ohem.data.synthetic import SyntheticShapes
from ohem.util import atomic_open, check_output_folder, output_folder


def export_synthetic(dataset: SyntheticShapes, out: str | Path, layout: str) -> list[Path]:
    """Write every image of ``dataset`` under ``out``; returns the index files written."""
    out = output_folder(out)
    if layout == "voc":
        return [_export_voc(dataset, out)]
    if layout == "coco":
        return [_export_coco(dataset, out)]
    raise ValueError(f"export layout: expected voc or coco, got {layout!r}")


def _pixels(dataset: SyntheticShapes, index: int) -> tuple[Image.Image, dict]:
    image, target = dataset[index]
    array = (image * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array), target


def _export_voc(dataset: SyntheticShapes, out: Path) -> Path:
    subfolders = ("Annotations", "JPEGImages", "ImageSets/Main")
    for sub in subfolders:  # all checked before any is made: a refused export leaves nothing behind
        check_output_folder(out / sub, "export folder", inside=out)
    for sub in subfolders:
        output_folder(out / sub, "export folder", inside=out)
    names = []
    for i in tqdm(range(len(dataset)), desc=f"export voc {dataset.split}", dynamic_ncols=True):
        image, target = _pixels(dataset, i)
        name = dataset.image_name(i)
        _write_png(out / "JPEGImages" / f"{name}.png", image)
        root = ET.Element("annotation")
        ET.SubElement(root, "filename").text = f"{name}.png"
        size = ET.SubElement(root, "size")
        for tag, value in (("width", image.width), ("height", image.height), ("depth", 3)):
            ET.SubElement(size, tag).text = str(value)
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = dataset.classes[label - 1]
            ET.SubElement(obj, "difficult").text = "0"
            bndbox = ET.SubElement(obj, "bndbox")
            # continuous x1 (0-based edge) -> the devkit's 1-based first pixel
            for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), (box[0] + 1, box[1] + 1, box[2], box[3])):
                ET.SubElement(bndbox, tag).text = f"{value:g}"
        with atomic_open(out / "Annotations" / f"{name}.xml", binary=True) as f:
            ET.ElementTree(root).write(f)
        names.append(name)
    split_file = out / "ImageSets" / "Main" / f"{dataset.split}.txt"
    _write_text(split_file, "".join(f"{n}\n" for n in names))
    return split_file


def _export_coco(dataset: SyntheticShapes, out: Path) -> Path:
    for sub in ("annotations", dataset.split):
        check_output_folder(out / sub, "export folder", inside=out)
    for sub in ("annotations", dataset.split):
        output_folder(out / sub, "export folder", inside=out)
    images: list[dict] = []
    annotations: list[dict] = []
    for i in tqdm(range(len(dataset)), desc=f"export coco {dataset.split}", dynamic_ncols=True):
        image, target = _pixels(dataset, i)
        file_name = f"{dataset.image_name(i)}.png"
        _write_png(out / dataset.split / file_name, image)
        images.append({"id": i + 1, "file_name": file_name, "width": image.width, "height": image.height})
        xywh = box_convert(target["boxes"].double(), "xyxy", "xywh")
        for (x, y, w, h), label in zip(xywh.tolist(), target["labels"].tolist()):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": label,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": k, "name": name} for k, name in enumerate(dataset.classes, start=1)]
    ann_file = out / "annotations" / f"instances_{dataset.split}.json"
    _write_text(ann_file, json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return ann_file


def _write_png(path: Path, image: Image.Image) -> None:
    with atomic_open(path, binary=True) as f:  # never through a symlink; a full disk: one line naming the file
        image.save(f, format="PNG")


def _write_text(path: Path, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)
