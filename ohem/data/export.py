"""Write the built-in synthetic dataset in the VOC devkit or COCO layout, so the file loaders (and
anyone's other tools) can read it. Images are PNG, so pixels survive the round trip exactly.

VOC:  OUT/Annotations/NAME.xml, OUT/JPEGImages/NAME.png, OUT/ImageSets/Main/SPLIT.txt
COCO: OUT/annotations/instances_SPLIT.json, OUT/SPLIT/NAME.png

``OUT/.ohem-export.json`` (the manifest) lists the files each export (layout and split) wrote. An
export replaces only files the manifest lists: a file of the same name that it did not write (your
own ``ImageSets/Main/train.txt``) stops it before anything is written, unless ``force``. Exporting a
split again removes the files of its previous export that the new one does not write (a smaller
split leaves no stale images behind), and only those whose bytes still have the SHA-256 the manifest
records: files it does not list, or lists with another digest (a hand-edited or forged manifest naming
``thesis.tex``), are never removed (a warning names them). The manifest is written before the files
(listing old and new), so an interrupted export is still known.
"""

from __future__ import annotations

import json
import os
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from PIL import Image
from torchvision.ops import box_convert
from tqdm import tqdm

from ohem.data.files import check_inside, entry_path, load_json
from ohem.data.synthetic import SyntheticShapes
from ohem.output_folder import OutputFolder
from ohem.util import check_output_folder, file_sha256, output_folder, refuse_symlink, strict_json

MANIFEST = ".ohem-export.json"
MANIFEST_FORMAT = "ohem-export-2"  # 1: lists of paths; 2: each path with its SHA-256


def export_synthetic(dataset: SyntheticShapes, out: str | Path, layout: str, force: bool = False) -> list[Path]:
    """Write every image of ``dataset`` under ``out``; returns the index files written. ``force``:
    replace files of the same names that ohem export did not write (else a one-line error)."""
    out = check_output_folder(out)  # before any work: not a link, not a file, writable
    if layout not in ("voc", "coco"):
        raise ValueError(f"export layout: expected voc or coco, got {layout!r}")
    planned = planned_files(dataset, layout)
    key = f"{layout}:{dataset.split}"
    manifest = read_manifest(out)
    check_outputs(out, planned, manifest, force)
    previous = manifest.get(key, {})
    elsewhere = {rel for other, files in manifest.items() if other != key for rel in files}
    stale = sorted(set(previous) - set(planned) - elsewhere)
    for rel in stale:  # checked before anything is written: the manifest may have been edited
        check_inside(out / rel, out, f"export manifest {out / MANIFEST}")
    subfolders = ("Annotations", "JPEGImages", "ImageSets/Main") if layout == "voc" else ("annotations", dataset.split)
    for sub in subfolders:  # checked before the manifest is written: a refused export leaves nothing behind
        check_output_folder(out / sub, "export folder", inside=out)
    output_folder(out)
    with OutputFolder(out) as folder:  # every write below goes into this folder, or stops (a swapped folder)
        # first the old files and the new (not hashed yet: written next), so an interrupted export is still its own
        write_manifest(folder, {**manifest, key: {**dict.fromkeys(planned), **previous}})
        index = _export_voc(dataset, folder) if layout == "voc" else _export_coco(dataset, folder)
        folder.check()  # before removing: through a swapped folder, they would be another folder's files
        kept = [rel for rel in stale if not _remove_if_ours(out / rel, previous[rel])]
        write_manifest(folder, {**manifest, key: {rel: file_sha256(out / rel) for rel in planned}})
    if kept:  # a hand-edited (or forged) manifest: what ohem did not write as it is now stays
        shown = ", ".join(str(out / rel) for rel in kept[:3]) + (", ..." if len(kept) > 3 else "")
        print(
            f"ohem export: warning: left in place {len(kept)} file(s) {out / MANIFEST} lists but ohem export did "
            f"not write as they are (their sha256 differs from the one recorded, or none is): {shown}",
            file=sys.stderr,
        )
    return [index]


def _remove_if_ours(path: Path, recorded: str | None) -> bool:
    """Remove ``path`` if it holds the bytes an earlier export recorded; True if removed (or gone)."""
    if not os.path.lexists(path):
        return True
    if recorded is None or path.is_symlink() or not path.is_file() or file_sha256(path) != recorded:
        return False
    path.unlink()
    return True


def planned_files(dataset: SyntheticShapes, layout: str) -> list[str]:
    """The files an export writes, relative to its folder, the index file first."""
    names = [dataset.image_name(i) for i in range(len(dataset))]
    if layout == "voc":
        per_image = [(f"JPEGImages/{name}.png", f"Annotations/{name}.xml") for name in names]
        return [f"ImageSets/Main/{dataset.split}.txt", *(rel for pair in per_image for rel in pair)]
    return [f"annotations/instances_{dataset.split}.json", *(f"{dataset.split}/{name}.png" for name in names)]


def read_manifest(out: Path) -> dict[str, dict[str, str | None]]:
    """The files each earlier export into ``out`` wrote, with their SHA-256 (``{"voc:train": {path
    relative to out: hex digest, or None: not recorded}}``); empty when there is no manifest. A manifest
    ohem did not write is a one-line error. Format 1 (lists of paths, no digests) is read too."""
    path = out / MANIFEST
    if not os.path.lexists(path):
        return {}
    refuse_symlink(path)
    where = f"export manifest {path}"
    data = load_json(path, "export manifest")
    known = isinstance(data, dict) and data.get("format") in (MANIFEST_FORMAT, "ohem-export-1")
    files = data.get("files") if known else None
    if not isinstance(files, dict):
        raise ValueError(f"{where}: not a manifest ohem export wrote (no format {MANIFEST_FORMAT!r}); move it away")
    read: dict[str, dict[str, str | None]] = {}
    for key, listed in files.items():
        if isinstance(listed, list):  # format 1: no digests
            listed = dict.fromkeys(listed)
        if not isinstance(listed, dict):
            raise ValueError(f"{where}: files.{key}: expected an object of paths, got {type(listed).__name__}")
        for k, (rel, digest) in enumerate(listed.items()):
            entry_path(out, rel, f"{where}: files.{key}[{k}]", "path")  # relative, inside out
            if digest is not None and not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
                raise ValueError(f"{where}: files.{key}[{k}]: sha256 must be 64 hex digits or null, got {digest!r}")
        read[key] = listed
    return read


def check_outputs(out: Path, planned: list[str], manifest: dict[str, dict[str, str | None]], force: bool) -> None:
    """Raise, before anything is written, if an output is a link or not a regular file, or (unless
    ``force``) a file that no earlier export into ``out`` wrote."""
    ours = {rel for files in manifest.values() for rel in files}
    for rel in [MANIFEST, *planned]:
        path = out / rel
        refuse_symlink(path)
        if os.path.lexists(path) and not path.is_file():
            raise ValueError(f"{path}: exists and is not a regular file; ohem export replaces only files")
        if not force and rel != MANIFEST and rel not in ours and os.path.lexists(path):
            raise ValueError(
                f"{path}: exists and was not written by ohem export (not in {out / MANIFEST}); "
                "export into an empty folder or one it wrote, or give --force to replace such files"
            )


def write_manifest(folder: OutputFolder, files: dict[str, dict[str, str | None]]) -> None:
    _write_text(folder, folder.path / MANIFEST, strict_json({"format": MANIFEST_FORMAT, "files": files}))


def _pixels(dataset: SyntheticShapes, index: int) -> tuple[Image.Image, dict]:
    image, target = dataset[index]
    array = (image * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array), target


def _save_png(folder: OutputFolder, image: Image.Image, path: Path) -> None:
    with folder.open(path, binary=True) as f:  # never through a symlink; a full disk: one line naming the file
        image.save(f, format="PNG")


def _export_voc(dataset: SyntheticShapes, folder: OutputFolder) -> Path:
    out = folder.path
    subfolders = ("Annotations", "JPEGImages", "ImageSets/Main")
    for sub in subfolders:  # all checked before any is made: a refused export leaves nothing behind
        check_output_folder(out / sub, "export folder", inside=out)
    for sub in subfolders:
        folder.subfolder(sub)  # made (not through a link) and held from now on
    names = []
    for i in tqdm(range(len(dataset)), desc=f"export voc {dataset.split}", dynamic_ncols=True):
        image, target = _pixels(dataset, i)
        name = dataset.image_name(i)
        _save_png(folder, image, out / "JPEGImages" / f"{name}.png")
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
        with folder.open(out / "Annotations" / f"{name}.xml", binary=True) as f:
            ET.ElementTree(root).write(f)
        names.append(name)
    split_file = out / "ImageSets" / "Main" / f"{dataset.split}.txt"
    _write_text(folder, split_file, "".join(f"{n}\n" for n in names))
    return split_file


def _export_coco(dataset: SyntheticShapes, folder: OutputFolder) -> Path:
    out = folder.path
    for sub in ("annotations", dataset.split):
        check_output_folder(out / sub, "export folder", inside=out)
    for sub in ("annotations", dataset.split):
        folder.subfolder(sub)  # made (not through a link) and held from now on
    images: list[dict] = []
    annotations: list[dict] = []
    for i in tqdm(range(len(dataset)), desc=f"export coco {dataset.split}", dynamic_ncols=True):
        image, target = _pixels(dataset, i)
        file_name = f"{dataset.image_name(i)}.png"
        _save_png(folder, image, out / dataset.split / file_name)
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
    _write_text(folder, ann_file, json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return ann_file


def _write_text(folder: OutputFolder, path: Path, text: str) -> None:
    with folder.open(path) as f:
        f.write(text)
