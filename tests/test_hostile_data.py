"""Hostile data-set inputs, table-driven: each case writes a bad input under tmp_path and names the call
that must fail with a one-line error naming the file and the item, without blocking (FIFOs) and without
writing anything. Add a bad input as one line of ``CASES``. Positive cases (image modes, allowed
symlinks, limits that fit) follow the table."""

from __future__ import annotations

import json
import os
import re
import signal
import tracemalloc
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from ohem.config import ConfigError, load_config
from ohem.data import COCODetection, ProposalFile, SyntheticShapes, VOCDetection, build_dataset
from ohem.data.common import read_image
from ohem.data.export import export_synthetic
from ohem.data.mat_proposals import read_mat_proposals
from ohem.data.proposals import FORMAT, compute_proposals, write_proposals
from ohem.evaluation.coco import coco_evaluate
from ohem.evaluation.detections_file import read_detections

NAME0 = "synthetic-test-000000"  # the first image the synthetic exporter writes
HAS_FIFO = hasattr(os, "mkfifo")


# --------------------------------------------------------------------------------------------- writers
def voc(tmp: Path) -> Path:
    """A valid 2-image VOC-layout tree (its split is "test"), plus secret files outside it."""
    export_synthetic(SyntheticShapes("test", num_images=2, image_size=128), tmp / "voc", "voc")
    (tmp / "outside").mkdir(exist_ok=True)
    Image.new("RGB", (128, 128)).save(tmp / "outside" / "secret.png")
    (tmp / "outside" / "secret.xml").write_bytes((tmp / "voc" / "Annotations" / f"{NAME0}.xml").read_bytes())
    return tmp / "voc"


def coco(tmp: Path) -> Path:
    """A valid 2-image COCO tree (annotations/instances_test.json, images in test/), plus a secret file."""
    export_synthetic(SyntheticShapes("test", num_images=2, image_size=128), tmp / "coco", "coco")
    (tmp / "outside").mkdir(exist_ok=True)
    Image.new("RGB", (128, 128)).save(tmp / "outside" / "secret.png")
    return tmp / "coco"


def coco_json(tmp: Path) -> Path:
    return tmp / "coco" / "annotations" / "instances_test.json"


def edit_coco(tmp: Path, change: Callable[[dict], object]) -> Callable[[], object]:
    """A COCO tree whose JSON ``change`` edits; the call builds the dataset."""
    root = coco(tmp)
    gt = json.loads(coco_json(tmp).read_text())
    change(gt)
    coco_json(tmp).write_text(json.dumps(gt))
    return lambda: COCODetection(root, "test")


def img0(tmp: Path, **fields: object) -> Callable[[], object]:
    return edit_coco(tmp, lambda gt: gt["images"][0].update(fields))


def ann0(tmp: Path, index: int = 0, **fields: object) -> Callable[[], object]:
    return edit_coco(tmp, lambda gt: gt["annotations"][index].update(fields))


def cat(tmp: Path, index: int, **fields: object) -> Callable[[], object]:
    return edit_coco(tmp, lambda gt: gt["categories"][index].update(fields))


def raw_coco(tmp: Path, old: str, new: str | bytes) -> Callable[[], object]:
    """A COCO tree whose JSON text has ``old`` (first occurrence) replaced by ``new`` (bytes: as they are)."""
    root = coco(tmp)
    data = coco_json(tmp).read_bytes()
    assert old.encode() in data
    coco_json(tmp).write_bytes(data.replace(old.encode(), new if isinstance(new, bytes) else new.encode(), 1))
    return lambda: COCODetection(root, "test")


def coco_text(tmp: Path, text: str) -> Callable[[], object]:
    root = coco(tmp)
    coco_json(tmp).write_text(text)
    return lambda: COCODetection(root, "test")


def edit_xml(tmp: Path, *changes: tuple[str, str]) -> Callable[[], object]:
    """A VOC tree whose first annotation has each ``(regex, replacement)`` applied once."""
    root = voc(tmp)
    xml = root / "Annotations" / f"{NAME0}.xml"
    text = xml.read_text()
    for pattern, replacement in changes:
        text, n = re.subn(pattern, replacement, text, count=1)
        assert n == 1, pattern
    xml.write_text(text)
    return lambda: VOCDetection(root, "test", classes=SyntheticShapes.classes)


def split_line(tmp: Path, line: str | bytes) -> Callable[[], object]:
    root = voc(tmp)
    with open(root / "ImageSets" / "Main" / "test.txt", "ab") as f:
        f.write((line if isinstance(line, bytes) else line.encode()) + b"\n")
    return lambda: VOCDetection(root, "test", classes=SyntheticShapes.classes)


def replace_with(path: Path, kind: str, target: Path | None = None) -> None:
    """Put a FIFO, a directory or a symlink to ``target`` where ``path`` was."""
    if path.is_dir():
        path.rmdir()
    elif path.exists() or path.is_symlink():
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dir":
        path.mkdir()
    else:
        path.symlink_to(target)


def voc_with(tmp: Path, sub: str, kind: str, target: str = "outside/secret.png") -> Callable[[], object]:
    root = voc(tmp)
    replace_with(root / sub, kind, tmp / target)
    return lambda: VOCDetection(root, "test", classes=SyntheticShapes.classes)


def coco_image_with(tmp: Path, kind: str) -> Callable[[], object]:
    root = coco(tmp)
    replace_with(root / "test" / f"{NAME0}.png", kind, tmp / "outside" / "secret.png")
    return lambda: COCODetection(root, "test")[0]


def coco_json_fifo(tmp: Path) -> Callable[[], object]:
    root = coco(tmp)
    replace_with(coco_json(tmp), "fifo")
    return lambda: COCODetection(root, "test")


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A real 8x8 PNG whose IHDR is patched to claim ``width`` x ``height`` (CRC fixed)."""
    Image.new("L", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    path.write_bytes(bytes(data))
    return path


def claimed_png(tmp: Path, width: int, height: int, **limits: object) -> Callable[[], object]:
    return then(png_claiming(tmp / "x.png", width, height), lambda path: read_image(path, **limits))


def claimed_npz(
    tmp: Path, shape: tuple[int, ...], key: str = "000001.npy", descr: str = "<f4", **limits: object
) -> Callable[[], object]:
    return then(npz_claiming(tmp / "p.npz", shape, key, descr), lambda path: ProposalFile(path, **limits))


def image_of(tmp: Path, size: tuple[int, int]) -> Callable[[], object]:
    Image.new("L", size).save(tmp / "x.png")
    return lambda: read_image(tmp / "x.png")


def npz_claiming(path: Path, shape: tuple[int, ...], key: str = "000001.npy", descr: str = "<f4") -> Path:
    """An .npz whose member ``key`` is a .npy header claiming ``shape`` and holding no data at all."""
    with zipfile.ZipFile(path, "w") as zf:
        with zf.open("__format__.npy", "w") as member:
            np.lib.format.write_array(member, np.array(FORMAT))
        with zf.open(key, "w") as member:
            np.lib.format.write_array_header_2_0(member, {"descr": descr, "fortran_order": False, "shape": shape})
    return path


def detections(tmp: Path, text: str) -> Callable[[], object]:
    path = tmp / "r.json"
    path.write_text(text)
    return lambda: read_detections(path, ["000001"], [1, 2])


def entry_text(**overrides: object) -> str:
    entry = {"image_id": "000001", "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5, **overrides}
    return "[" + json.dumps(entry) + "]"


def then(path: Path, reader: Callable[[Path], object]) -> Callable[[], object]:
    """The call ``reader(path)``, for a ``path`` written beforehand."""
    return lambda: reader(path)


def fifo_at(tmp: Path, name: str) -> Path:
    os.mkfifo(tmp / name)
    return tmp / name


def build(tmp: Path, *overrides: str) -> Callable[[], object]:
    return lambda: build_dataset(load_config(None, list(overrides)).data, "test")


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def evaluate(tmp: Path, results: list | None = None, **changes: object) -> Callable[[], object]:
    gt = {
        "images": [{"id": 1, "width": 10, "height": 10}],
        "annotations": [],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    return lambda: coco_evaluate({**gt, **changes}, results or [])


def tif(tmp: Path, array: np.ndarray) -> Callable[[], object]:
    Image.fromarray(array).save(tmp / "x.tif")
    return lambda: read_image(tmp / "x.tif")


def voc_png_claiming(tmp: Path, width: int, height: int) -> Callable[[], object]:
    root = voc(tmp)
    png_claiming(root / "JPEGImages" / f"{NAME0}.png", width, height)
    dataset = VOCDetection(root, "test", classes=SyntheticShapes.classes)
    return lambda: dataset[0]


def three_images(tmp: Path, synthetic: bool = False) -> Path:
    names = [f"synthetic-test-{i:06d}" if synthetic else f"img{i}" for i in range(3)]
    box = np.tile(np.array([[0, 0, 10, 10]], np.float32), (10, 1))
    return write_proposals(tmp / "p.npz", {n: box for n in names})


def meta_not_json(tmp: Path) -> Callable[[], object]:
    np.savez(tmp / "p.npz", __format__=np.array(FORMAT), __meta__=np.array("{not json"))
    return lambda: ProposalFile(tmp / "p.npz")


def broken_manifest(tmp: Path) -> Callable[[], object]:
    (tmp / "p.npz.parts").mkdir()
    (tmp / "p.npz.parts" / "manifest.json").write_text("{torn")
    return lambda: compute_proposals(SyntheticShapes("test", num_images=1, image_size=128), tmp / "p.npz")


def empty_voc_split(tmp: Path) -> Callable[[], object]:
    root = voc(tmp)
    (root / "ImageSets" / "Main" / "test.txt").write_text("\n")
    return build(tmp, "data.dataset=voc", f"data.root={root}", "data.test_split=test", "data.classes=[circle]")


def coco_without_images(tmp: Path) -> Callable[[], object]:
    edit_coco(tmp, lambda gt: gt.update(images=[], annotations=[]))
    return build(tmp, "data.dataset=coco", f"data.root={tmp / 'coco'}", "data.test_split=test")


# --------------------------------------------------------------------------------------------- the table
@dataclass
class Case:
    id: str
    make: Callable[[Path], Callable[[], object]]  # writes the input under tmp_path, returns the call
    error: type[Exception]
    match: str  # regex the one-line message must contain: the file and the item
    fifo: bool = False


V, C, X = r"voc/ImageSets/Main/test\.txt", r"coco/annotations/instances_test\.json", rf"{NAME0}\.xml"
CASES = [
    # ---- confinement: VOC split lines, COCO file_name, symlinks
    Case(
        "voc-split-dotdot",
        lambda t: split_line(t, "../../outside/secret"),
        ValueError,
        V + r": line 3: image name '\.\./\.\./outside/secret' leaves .*'\.\.' is not allowed",
    ),
    Case(
        "voc-split-absolute",
        lambda t: split_line(t, str(t / "outside" / "secret")),
        ValueError,
        V + r": line 3: image name '/.*outside/secret' is an absolute path",
    ),
    Case(
        "voc-image-symlink-out",
        lambda t: voc_with(t, f"JPEGImages/{NAME0}.png", "link"),
        ValueError,
        V + rf": line 1: .*JPEGImages/{NAME0}\.png resolves to .*outside/secret\.png, outside .*JPEGImages",
    ),
    Case(
        "voc-xml-symlink-out",
        lambda t: voc_with(t, f"Annotations/{NAME0}.xml", "link", "outside/secret.xml"),
        ValueError,
        V + rf": line 1: .*Annotations/{X} resolves to .*outside/secret\.xml, outside",
    ),
    Case(
        "coco-file-name-dotdot",
        lambda t: img0(t, file_name="../../outside/secret.png"),
        ValueError,
        C + r": images\[0\] \(id 1\): file_name '\.\./\.\./outside/secret\.png' leaves .*test",
    ),
    Case(
        "coco-file-name-absolute",
        lambda t: img0(t, file_name=str(t / "outside/secret.png")),
        ValueError,
        C + r": images\[0\] \(id 1\): file_name '/.*secret\.png' is an absolute path",
    ),
    Case(
        "coco-image-symlink-out",
        lambda t: coco_image_with(t, "link"),
        ValueError,
        C + rf": image id 1 \(file_name '{NAME0}\.png'\): .*test/{NAME0}\.png resolves to .*outside/secret\.png",
    ),
    # ---- only regular files: FIFOs, directories
    Case(
        "voc-image-fifo",
        lambda t: voc_with(t, f"JPEGImages/{NAME0}.png", "fifo"),
        ValueError,
        rf"VOC image .*JPEGImages/{NAME0}\.png: is a FIFO \(named pipe\), not a regular file",
        fifo=True,
    ),
    Case(
        "voc-xml-fifo",
        lambda t: voc_with(t, f"Annotations/{NAME0}.xml", "fifo"),
        ValueError,
        rf"VOC annotation .*Annotations/{X}: is a FIFO",
        fifo=True,
    ),
    Case(
        "voc-split-fifo",
        lambda t: voc_with(t, "ImageSets/Main/test.txt", "fifo"),
        ValueError,
        V + r": is a FIFO",
        fifo=True,
    ),
    Case(
        "voc-xml-directory",
        lambda t: voc_with(t, f"Annotations/{NAME0}.xml", "dir"),
        ValueError,
        rf"VOC annotation .*{X}: is a directory, not a regular file",
    ),
    Case(
        "coco-image-fifo",
        lambda t: coco_image_with(t, "fifo"),
        ValueError,
        rf"COCO image .*coco/test/{NAME0}\.png: is a FIFO",
        fifo=True,
    ),
    Case(
        "coco-image-directory",
        lambda t: coco_image_with(t, "dir"),
        ValueError,
        rf"COCO image .*coco/test/{NAME0}\.png: is a directory",
    ),
    Case("coco-json-fifo", coco_json_fifo, ValueError, C + r": is a FIFO", fifo=True),
    Case(
        "image-fifo",
        lambda t: then(fifo_at(t, "x.png"), read_image),
        ValueError,
        r"image .*x\.png: is a FIFO",
        fifo=True,
    ),
    Case("image-directory", lambda t: lambda: read_image(t), ValueError, r"image .*: is a directory"),
    Case(
        "proposals-fifo",
        lambda t: then(fifo_at(t, "p.npz"), ProposalFile),
        ValueError,
        r"proposals file .*p\.npz: is a FIFO",
        fifo=True,
    ),
    Case("proposals-directory", lambda t: lambda: ProposalFile(t), ValueError, r"proposals file .*: is a directory"),
    Case(
        "mat-fifo",
        lambda t: then(fifo_at(t, "p.mat"), read_mat_proposals),
        ValueError,
        r"MATLAB proposals file .*p\.mat: is a FIFO",
        fifo=True,
    ),
    Case(
        "detections-directory",
        lambda t: lambda: read_detections(t, ["a"], [1]),
        ValueError,
        r"detections .*: is a directory, not a regular file",
    ),
    Case(
        "detections-fifo",
        lambda t: then(fifo_at(t, "r.json"), lambda p: read_detections(p, ["a"], [1])),
        ValueError,
        r"detections .*r\.json: is a FIFO",
        fifo=True,
    ),
    # ---- strict COCO types
    Case(
        "coco-iscrowd-string",
        lambda t: ann0(t, iscrowd="0"),
        ValueError,
        C + r": annotation 0 \(id 1\): iscrowd must be 0 or 1, got \"0\"",
    ),
    Case(
        "coco-iscrowd-bool",
        lambda t: ann0(t, iscrowd=True),
        ValueError,
        C + r": annotation 0 \(id 1\): iscrowd must be 0 or 1, got true",
    ),
    Case(
        "coco-duplicate-category-id",
        lambda t: cat(t, 1, id=1),
        ValueError,
        C + r": categories\[1\]: id 1 repeats categories\[0\]",
    ),
    Case(
        "coco-duplicate-category-name",
        lambda t: cat(t, 1, name="circle"),
        ValueError,
        C + r": categories\[1\] \(id 2\): name 'circle' repeats categories\[0\]",
    ),
    Case(
        "coco-category-id-string",
        lambda t: cat(t, 0, id="1"),
        ValueError,
        C + r": categories\[0\]: id must be an integer, got \"1\"",
    ),
    Case(
        "coco-width-null",
        lambda t: img0(t, width=None),
        ValueError,
        C + r": images\[0\] \(id 1\): width must be a positive integer, got null",
    ),
    Case(
        "coco-width-string",
        lambda t: img0(t, width="160"),
        ValueError,
        C + r": images\[0\] \(id 1\): width must be a positive integer, got \"160\"",
    ),
    Case(
        "coco-width-float",
        lambda t: img0(t, width=128.0),
        ValueError,
        C + r": images\[0\] \(id 1\): width must be a positive integer, got 128\.0",
    ),
    Case(
        "coco-height-zero",
        lambda t: img0(t, height=0),
        ValueError,
        C + r": images\[0\] \(id 1\): height must be a positive integer, got 0",
    ),
    Case(
        "coco-image-id-list",
        lambda t: img0(t, id=[1]),
        ValueError,
        C + r": images\[0\]: id must be an integer, got \[1\]",
    ),
    Case(
        "coco-annotation-id-list",
        lambda t: ann0(t, id=[1]),
        ValueError,
        C + r": annotation 0: id must be an integer, got \[1\]",
    ),
    Case(
        "coco-image-id-ref-list",
        lambda t: ann0(t, image_id=[1]),
        ValueError,
        C + r": annotation 0 \(id 1\): image_id must be an integer, got \[1\]",
    ),
    Case(
        "coco-duplicate-annotation-id",
        lambda t: ann0(t, 1, id=1),
        ValueError,
        C + r": annotation 1 \(id 1\): id 1 repeats annotation 0",
    ),
    Case(
        "coco-file-name-int",
        lambda t: img0(t, file_name=7),
        ValueError,
        C + r": images\[0\] \(id 1\): file_name must be a non-empty string, got 7",
    ),
    Case(
        "coco-bbox-corner-overflow",
        lambda t: ann0(t, bbox=[1e308, 0, 1e308, 5]),
        ValueError,
        C + r": annotation 0 \(id 1\): bbox .* is not finite \(its numbers or corners",
    ),
    Case(
        "coco-bbox-nan",
        lambda t: ann0(t, bbox=[float("nan"), 0, 5, 5]),
        ValueError,
        C + r": annotation 0 \(id 1\): bbox \[NaN, 0, 5, 5\] is not finite",
    ),
    Case(
        "coco-area-negative",
        lambda t: ann0(t, area=-1),
        ValueError,
        C + r": annotation 0 \(id 1\): area must be a finite number >= 0, got -1",
    ),
    Case(
        "coco-1e999",
        lambda t: raw_coco(t, '"bbox": [', '"bbox": [1e999, '),
        ValueError,
        C + r": annotations\[0\]\.bbox\[0\]: a number beyond float range",
    ),
    Case(
        "coco-huge-int",
        lambda t: raw_coco(t, '"width": 128', '"width": 1' + "0" * 400),
        ValueError,
        C + r": images\[0\]\.width: a number beyond float range",
    ),
    Case(
        "coco-5000-digits",
        lambda t: raw_coco(t, '"width": 128', '"width": 1' + "0" * 5000),
        ValueError,
        C + r": not valid JSON \(.*digits",
    ),
    Case(
        "coco-deep-100000",
        lambda t: raw_coco(t, '"images": [', '"x": ' + deep(100_000) + ', "images": ['),
        ValueError,
        C + r": JSON nested too deeply",
    ),
    Case(
        "coco-deep-200",
        lambda t: raw_coco(t, '"images": [', '"x": ' + deep(200) + ', "images": ['),
        ValueError,
        C + r": x\[0\]\[0\]\[0\]\[0\]\.\.\.: JSON nested more than 100 levels deep",
    ),
    Case(
        "coco-not-utf8",
        lambda t: raw_coco(t, '"circle"', b'"c\xffircle"'),
        ValueError,
        C + r": not UTF-8 text \(byte \d+\)",
    ),
    Case(
        "coco-degenerate-size",
        lambda t: img0(t, width=1, height=5000),
        ValueError,
        C + r": images\[0\] \(id 1\): image size 1x5000 is degenerate",
    ),
    Case(
        "coco-pixels-over-limit",
        lambda t: img0(t, width=20000, height=20000),
        ValueError,
        C + r": images\[0\] \(id 1\): 20000x20000 = 400,000,000 pixels, .*data\.max_image_pixels = 50,000,000",
    ),
    # ---- strict VOC numbers
    Case(
        "voc-width-nan",
        lambda t: edit_xml(t, ("<width>128<", "<width>nan<")),
        ValueError,
        rf"VOC annotation .*{X}: size <size/width> is 'nan', not a finite number",
    ),
    Case(
        "voc-width-1e999",
        lambda t: edit_xml(t, ("<width>128<", "<width>1e999<")),
        ValueError,
        rf"{X}: size <size/width> is '1e999', not a finite number",
    ),
    Case(
        "voc-width-fraction",
        lambda t: edit_xml(t, ("<width>128<", "<width>127.5<")),
        ValueError,
        rf"{X}: size <size/width> is 127\.5, not a positive whole number",
    ),
    Case(
        "voc-height-zero",
        lambda t: edit_xml(t, ("<height>128<", "<height>0<")),
        ValueError,
        rf"{X}: size <size/height> is 0, not a positive whole number",
    ),
    Case(
        "voc-xmin-inf",
        lambda t: edit_xml(t, ("<xmin>[^<]*<", "<xmin>inf<")),
        ValueError,
        rf"{X}: object 1 <bndbox/xmin> is 'inf', not a finite number",
    ),
    Case(
        "voc-difficult-2",
        lambda t: edit_xml(t, ("<difficult>0<", "<difficult>2<")),
        ValueError,
        rf"{X}: object 1 <difficult> is 2, not 0 or 1",
    ),
    Case(
        "voc-degenerate-size",
        lambda t: edit_xml(t, ("<width>128<", "<width>1<")),
        ValueError,
        rf"VOC annotation .*{X}: image size 1x128 is degenerate",
    ),
    Case(
        "voc-pixels-over-limit",
        lambda t: edit_xml(t, ("<width>128<", "<width>8000<"), ("<height>128<", "<height>8000<")),
        ValueError,
        rf"{X}: 8000x8000 = 64,000,000 pixels, .*data\.max_image_pixels",
    ),
    Case("voc-split-not-utf8", lambda t: split_line(t, b"\xff"), ValueError, V + r": not UTF-8 text \(byte \d+\)"),
    # ---- bounded resources: images
    Case(
        "png-claims-20000x20000",
        lambda t: claimed_png(t, 20000, 20000),
        ValueError,
        r"image .*x\.png: 20000x20000 = 400,000,000 pixels, .*data\.max_image_pixels = 50,000,000",
    ),
    Case(
        "png-10000x10000-dataset",
        lambda t: voc_png_claiming(t, 10000, 10000),
        ValueError,
        rf"VOC image .*{NAME0}\.png: 10000x10000 = 100,000,000 pixels",
    ),
    Case(
        "png-over-a-small-limit",
        lambda t: claimed_png(t, 128, 128, max_pixels=100),
        ValueError,
        r"image .*x\.png: 128x128 = 16,384 pixels, more pixels than data\.max_image_pixels = 100 allows",
    ),
    Case(
        "image-1x5000",
        lambda t: image_of(t, (1, 5000)),
        ValueError,
        r"image .*x\.png: image size 1x5000 is degenerate \(a side under 2 px\)",
    ),
    Case(
        "image-3x5000",
        lambda t: image_of(t, (3, 5000)),
        ValueError,
        r"image .*x\.png: image size 3x5000 is degenerate \(aspect 1667:1",
    ),
    Case(
        "image-mode-I-negative",
        lambda t: tif(t, np.full((4, 4), -5, np.int32)),
        ValueError,
        r"image .*x\.tif: 32-bit integer pixels outside 0\.\.65535",
    ),
    Case(
        "image-mode-F-nan",
        lambda t: tif(t, np.full((4, 4), np.nan, np.float32)),
        ValueError,
        r"image .*x\.tif: float pixels \(mode F\) not finite",
    ),
    # ---- bounded resources: proposal files
    Case(
        "npz-claims-5.4GB",
        lambda t: claimed_npz(t, (337_500_000, 4)),
        ValueError,
        r"proposals file .*p\.npz: image '000001': boxes claim an array of shape \(337500000, 4\) <f4 "
        r"\(5,400,000,000 bytes\), more than data\.max_proposal_boxes_per_image = 100,000",
    ),
    Case(
        "npz-claims-no-limit",
        lambda t: claimed_npz(t, (337_500_000, 4), max_boxes_per_image=None),
        ValueError,
        r"p\.npz: member 000001\.npy claims 5,400,000,000 bytes of data but holds 0 \(truncated or forged",
    ),
    Case(
        "npz-meta-claims-huge",
        lambda t: claimed_npz(t, (), "__meta__.npy", "<U99999999"),
        ValueError,
        r"p\.npz: __meta__ claims 399,999,996 bytes",
    ),
    Case(
        "npz-total-over-limit",
        lambda t: then(three_images(t), lambda p: ProposalFile(p, max_boxes=20)),
        ValueError,
        r"p\.npz: claims 30 boxes in all, more than data\.max_proposal_boxes = 20",
    ),
    Case(
        "npz-per-image-config-key",
        lambda t: build(
            t,
            "data.num_test=3",
            "data.max_proposal_boxes_per_image=5",
            f"data.test_proposals={three_images(t, synthetic=True)}",
        ),
        ValueError,
        r"p\.npz: image 'synthetic-test-000000': boxes claim .*= 5 boxes",
    ),
    Case("npz-meta-not-json", meta_not_json, ValueError, r"proposals file .*p\.npz: __meta__ is not JSON"),
    Case(
        "parts-manifest-not-json",
        broken_manifest,
        ValueError,
        r"p\.npz\.parts/manifest\.json: not a JSON manifest .*pass resume=False",
    ),
    # ---- detections files (read side)
    Case(
        "detections-1e999",
        lambda t: detections(t, entry_text().replace("0.5", "1e999")),
        ValueError,
        r"detections .*r\.json: \[0\]\.score: a number beyond float range",
    ),
    Case(
        "detections-x2-overflow",
        lambda t: detections(t, entry_text(bbox=[1e308, 0, 1e308, 1])),
        ValueError,
        r"r\.json: entry 0: bbox \[1e\+308, 0, 1e\+308, 1\] has corners .* beyond float32 range",
    ),
    Case(
        "detections-x1-beyond-float32",
        lambda t: detections(t, entry_text(bbox=[1e300, 0, 1, 1])),
        ValueError,
        r"r\.json: entry 0: bbox .* beyond float32 range",
    ),
    Case(
        "detections-score-beyond-float32",
        lambda t: detections(t, entry_text(score=1e39)),
        ValueError,
        r"r\.json: entry 0: score must be a finite number, got 1e\+39",
    ),
    Case("detections-deep", lambda t: detections(t, deep(100_000)), ValueError, r"r\.json: JSON nested too deeply"),
    Case(
        "detections-top-level-number",
        lambda t: detections(t, "5"),
        ValueError,
        r"r\.json: expected a JSON list of COCO results entries .*got a JSON number",
    ),
    Case(
        "detections-top-level-1e999",
        lambda t: detections(t, "1e999"),
        ValueError,
        r"r\.json: .*: a number beyond float range",
    ),
    Case(
        "coco-top-level-list",
        lambda t: coco_text(t, "[1, 2]"),
        ValueError,
        C + r": expected an object with images/annotations/categories",
    ),
    # ---- empty splits and bad limits
    Case("voc-empty-split-eval", empty_voc_split, ValueError, V + r": no images to evaluate on"),
    Case("coco-no-images-eval", coco_without_images, ValueError, C + r": no images to evaluate on"),
    Case(
        "synthetic-num-test-0",
        lambda t: build(t, "data.num_test=0"),
        ConfigError,
        r"^override 'data\.num_test=0': data\.num_test must be an integer in \[1, 1000000000000000\], got 0$",
    ),
    Case(
        "max-image-pixels-0",
        lambda t: build(t, "data.max_image_pixels=0"),
        ConfigError,
        r"^override 'data\.max_image_pixels=0': data\.max_image_pixels must be an integer in \[1, 1000000000000\] "
        r"or null, got 0$",
    ),
    # ---- coco_evaluate on hand-made ground truth and results
    Case(
        "eval-duplicate-names",
        lambda t: evaluate(t, categories=[{"id": 1, "name": "a"}, {"id": 2, "name": "a"}]),
        ValueError,
        r"coco_evaluate: ground truth category names repeat \('a'\)",
    ),
    Case("eval-no-images", lambda t: evaluate(t, images=[]), ValueError, r"coco_evaluate: ground truth has no images"),
    Case(
        "eval-result-overflow",
        lambda t: evaluate(t, [{"image_id": 1, "category_id": 1, "bbox": [1e308, 0, 1e308, 1], "score": 1}]),
        ValueError,
        r"coco_evaluate: results entry 0: bbox .* finite corners",
    ),
    Case(
        "eval-iscrowd-string",
        lambda t: evaluate(
            t, annotations=[{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2], "iscrowd": "0"}]
        ),
        ValueError,
        r"coco_evaluate: ground truth annotations\[0\]: iscrowd must be 0 or 1, got '0'",
    ),
]


def snapshot(*folders: Path) -> dict[str, tuple]:
    """Every entry under ``folders`` (not following symlinks): type, size, modification time."""
    found = {}
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in dirnames + filenames:
                st = os.lstat(os.path.join(dirpath, name))
                found[os.path.join(dirpath, name)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return found


@pytest.fixture
def no_hang():
    """Fail instead of blocking forever (a FIFO opened for reading waits for a writer)."""

    def alarm(*_: object) -> None:
        raise TimeoutError("blocked: the call opened something that never answered")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_hostile_input_is_a_one_line_error(tmp_path, case, no_hang):
    if case.fifo and not HAS_FIFO:
        pytest.skip("no os.mkfifo on this platform")
    call = case.make(tmp_path)
    cwd = Path.cwd()
    before = snapshot(tmp_path), sorted(os.listdir(cwd))
    with pytest.raises(Exception) as info:
        call()
    message = str(info.value)
    assert type(info.value) is case.error, f"{type(info.value).__name__}: {message}"
    assert "\n" not in message and message.strip() == message
    assert re.search(case.match, message), message
    assert (snapshot(tmp_path), sorted(os.listdir(cwd))) == before  # nothing written, nothing moved


def test_table_ids_are_unique():
    assert len({c.id for c in CASES}) == len(CASES)


# --------------------------------------------------------------------------------------------- images as they are
def test_16_bit_png_reads_as_its_8_bit_twin(tmp_path):
    eight = np.random.default_rng(0).integers(0, 256, (24, 32), dtype=np.uint8)
    Image.fromarray(eight).save(tmp_path / "8.png")
    detail = np.where(eight < 255, 100, 0).astype(np.uint16)  # 16-bit detail below 1/255
    sixteen = Image.fromarray(eight.astype(np.uint16) * 257 + detail)
    assert sixteen.mode == "I;16"
    sixteen.save(tmp_path / "16.png")
    with Image.open(tmp_path / "16.png") as im:
        assert im.mode == "I;16"  # PIL's convert("RGB") of this is all white: the bug
    a, b = read_image(tmp_path / "8.png"), read_image(tmp_path / "16.png")
    assert a.shape == b.shape == (3, 24, 32) and b.dtype == torch.float32
    assert (a - b).abs().max() <= 1 / 255
    assert b.min() >= 0 and b.max() <= 1 and b.std() > 0.2  # not clipped to white


@pytest.mark.parametrize(
    "mode, array, expected",
    [
        ("L", np.array([[0, 51]], np.uint8), [[0, 0.2]] * 3),
        ("1", np.array([[0, 1]], bool), [[0, 1]] * 3),
        ("LA", np.array([[[51, 0], [102, 255]]], np.uint8), [[0.2, 0.4]] * 3),
        ("RGBA", np.array([[[255, 0, 0, 0], [0, 51, 0, 255]]], np.uint8), [[1, 0], [0, 0.2], [0, 0]]),
        ("CMYK", np.array([[[0, 0, 0, 0], [255, 255, 255, 0]]], np.uint8), [[1, 0]] * 3),
        ("I;16B", np.array([[0, 65535]], ">u2"), [[0, 1]] * 3),
        ("I", np.array([[0, 65535]], np.int32), [[0, 1]] * 3),
        ("F", np.array([[0, 0.5]], np.float32), [[0, 0.5]] * 3),
        ("F", np.array([[0, 51]], np.float32), [[0, 0.2]] * 3),
    ],
)
def test_every_mode_is_scaled_to_rgb_in_0_1(tmp_path, mode, array, expected):
    array = np.repeat(array, 2, axis=0)  # 2 x 2: a size the degenerate-size rule accepts
    h, w = array.shape[:2]
    im = Image.frombytes(mode, (w, h), array.tobytes()) if mode == "CMYK" else Image.fromarray(array)
    im.save(tmp_path / "x.tif")
    with Image.open(tmp_path / "x.tif") as im:
        assert im.mode == mode
    image = read_image(tmp_path / "x.tif")
    assert image.shape == (3, 2, 2)
    assert torch.allclose(image[:, 0, :], torch.tensor(expected, dtype=torch.float32), atol=1e-6)


def test_palette_image(tmp_path):
    im = Image.new("P", (4, 2))
    im.putpalette([0, 0, 0, 255, 0, 51])
    im.putpixel((1, 0), 1)
    im.save(tmp_path / "p.png")
    image = read_image(tmp_path / "p.png")
    assert image[:, 0, 1].tolist() == pytest.approx([1, 0, 0.2]) and image[:, 0, 0].tolist() == [0, 0, 0]


# --------------------------------------------------------------------------------------------- what stays allowed
def test_symlinked_folders_and_inside_symlinks_are_allowed(tmp_path):
    root = voc(tmp_path)
    (tmp_path / "disk").mkdir()
    (root / "JPEGImages").rename(tmp_path / "disk" / "JPEGImages")
    (root / "JPEGImages").symlink_to(tmp_path / "disk" / "JPEGImages")  # the folder on another disk
    inside = root / "JPEGImages" / f"{NAME0}.png"
    inside.rename(root / "JPEGImages" / "real.png")
    inside.symlink_to("real.png")  # a link that stays inside the folder
    ds = VOCDetection(root, "test", classes=SyntheticShapes.classes)
    assert ds[0][0].shape == (3, 128, 128)
    coco_root = coco(tmp_path)
    (coco_root / "test").rename(tmp_path / "disk" / "test")
    (coco_root / "test").symlink_to(tmp_path / "disk" / "test")
    assert COCODetection(coco_root, "test")[1][0].shape == (3, 128, 128)


def test_limits_are_config_keys_and_null_lifts_them(tmp_path):
    cfg = load_config().data
    assert (cfg.max_image_pixels, cfg.max_proposal_boxes_per_image, cfg.max_proposal_boxes) == (
        50_000_000,
        100_000,
        1_000_000_000,
    )
    path = tmp_path / "x.png"
    Image.new("L", (128, 128)).save(path)
    with pytest.raises(ValueError, match="data.max_image_pixels = 16,383"):
        read_image(path, max_pixels=128 * 128 - 1)
    assert read_image(path, max_pixels=128 * 128).shape == (3, 128, 128)
    assert read_image(path, max_pixels=None).shape == (3, 128, 128)
    three = three_images(tmp_path)
    assert len(ProposalFile(three, max_boxes_per_image=10, max_boxes=30)) == 3
    assert len(ProposalFile(three, max_boxes_per_image=None, max_boxes=None)) == 3


@pytest.mark.parametrize("kind", ["error", "warning"])
def test_pil_decompression_bomb_becomes_our_message(tmp_path, monkeypatch, kind):
    """PIL's own check (decoders of multi-frame formats run it while decoding) ends in our one line."""
    Image.new("L", (8, 8)).save(tmp_path / "x.png")

    def bomb(self: ImageFile.ImageFile) -> None:
        if kind == "error":
            raise Image.DecompressionBombError("Image size (99 pixels) exceeds limit of 20 pixels")
        warnings.warn("Image size (99 pixels) exceeds limit of 40", Image.DecompressionBombWarning, stacklevel=2)

    monkeypatch.setattr(ImageFile.ImageFile, "load", bomb)
    with pytest.raises(ValueError) as info:
        read_image(tmp_path / "x.png", max_pixels=64)
    assert re.fullmatch(
        r"image .*x\.png: more pixels than data\.max_image_pixels = 64 allows .*\(Image size \(99 .*\)", str(info.value)
    )


def test_header_check_allocates_nothing(tmp_path):
    path = npz_claiming(tmp_path / "p.npz", (337_500_000, 4))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError):
            ProposalFile(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20
