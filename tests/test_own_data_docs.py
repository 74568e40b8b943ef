"""docs/OWN_DATA.md's command sequences, run as written (a tiny model and run appended to ``train``
with ``--set``, which overrides what the documented command sets) on a small COCO-format and a
small VOC-format folder this test writes at the documented paths."""

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ohem.checkpoint import load_checkpoint
from ohem.cli import main
from tests.conftest import TINY

DOC = Path(__file__).resolve().parent.parent / "docs" / "OWN_DATA.md"
CLASSES = ["cat", "dog"]
# A small model on 128-pixel images for 2 iterations on the CPU: no download, seconds not hours.
TINY_TAIL = [
    "model.name=small",
    "model.backbone_weights=null",
    *(item for item in TINY if item.startswith(("model.", "sampler."))),  # the suite's tiny sizes
    "solver.iterations=2",
    "solver.warmup_iterations=0",
    "solver.steps=[]",
    "train.device=cpu",
    "train.vis_images=1",
    "data.workers=0",
]
# name: [(class, x1, y1, x2, y2)], pixel corners
IMAGES = {
    "train": {"0001": [("cat", 10, 12, 60, 70)], "0002": [("dog", 50, 40, 120, 110), ("cat", 5, 5, 30, 40)],
              "0003": [("dog", 20, 30, 90, 100)], "0004": [("cat", 64, 64, 120, 120)]},
    "val": {"0005": [("dog", 30, 20, 100, 90)], "0006": [("cat", 15, 60, 70, 120)]},
}  # fmt: skip


def documented_commands(section: str) -> list[list[str]]:
    """The ``ohem`` commands of the bash block under the heading ``section``, continuation lines joined."""
    text = DOC.read_text().split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    commands = block.replace("\\\n", " ").strip().splitlines()
    assert commands and all(c.startswith("ohem ") for c in commands), commands
    return [shlex.split(c)[1:] for c in commands]


def picture(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


def write_coco(root):
    categories = [{"id": k, "name": name} for k, name in enumerate(CLASSES, start=1)]
    for split, images in IMAGES.items():
        entries, annotations = [], []
        for i, (name, boxes) in enumerate(images.items(), start=1):
            picture(root / split / f"{name}.jpg", seed=int(name))
            entries.append({"id": i, "file_name": f"{name}.jpg", "width": 128, "height": 128})
            for cls, x1, y1, x2, y2 in boxes:
                bbox = [x1, y1, x2 - x1, y2 - y1]
                annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": CLASSES.index(cls) + 1,
                                    "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0})  # fmt: skip
        gt = {"images": entries, "annotations": annotations, "categories": categories}
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(gt))


def write_voc(root):
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for split, images in IMAGES.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{name}\n" for name in images))
        for name, boxes in images.items():
            picture(root / "JPEGImages" / f"{name}.jpg", seed=int(name))
            objects = "".join(  # devkit corners: 1-based pixel indices
                f"<object><name>{cls}</name><difficult>0</difficult><bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}"
                f"</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
                for cls, x1, y1, x2, y2 in boxes
            )
            xml = f"<annotation><size><width>128</width><height>128</height></size>{objects}</annotation>"
            (root / "Annotations" / f"{name}.xml").write_text(xml)


SECTIONS = [
    ("A COCO-format folder", write_coco, "runs/mycoco"),
    ("A VOC-format folder with your own classes", write_voc, "runs/myvoc"),
]


@pytest.mark.parametrize("section, write, run", SECTIONS)
def test_the_documented_sequence_runs(tmp_path, monkeypatch, capsys, section, write, run):
    monkeypatch.chdir(tmp_path)  # the documented relative paths, under tmp_path
    commands = [c for c in documented_commands(section) if c[0] != "export-model"]  # the next test exports
    assert [c[0] for c in commands] == ["train", "eval", "detect", "report"]
    data_root = next(c.split("=", 1)[1] for c in commands[0] if c.startswith("data.root="))
    write(tmp_path / data_root)
    for argv in commands:
        if argv[0] == "train":
            argv = argv + [a for item in TINY_TAIL for a in ("--set", item)]
        assert main(argv) == 0, (argv, capsys.readouterr().err)
    out = tmp_path / run
    assert "classes (2): cat, dog" in (out / "summary.txt").read_text()
    best = load_checkpoint(out / "checkpoint_best.pt")
    assert best["classes"] == CLASSES and best["iteration"] == 2
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert list(metrics["AP"]) == CLASSES and metrics["num_images"] == 2  # the val split
    detections = json.loads((out / "detect" / "detections.json").read_text())
    assert len(detections) == 1 and (out / "detect" / "0005.png").is_file()
    drawn = {p.name for p in (out / "report").glob("*.png")}
    assert {"losses.png", "mined_fg_fraction.png", "mined_classes.png", "hardest_rois.png"} <= drawn


def test_the_coco_path_end_to_end_with_the_documented_model_then_the_exported_file(tmp_path, monkeypatch, capsys):
    """Train (the documented ResNet-50 FPN, random weights, 128 px, 2 iterations), eval, detect, export to
    TorchScript, and the printed lines run the file: its detections are predict's."""
    import torch

    from ohem.data.common import read_image
    from ohem.inference import model_from_checkpoint, predict

    monkeypatch.chdir(tmp_path)
    commands = documented_commands("A COCO-format folder")
    assert [c[0] for c in commands] == ["train", "eval", "detect", "report", "export-model"]
    write_coco(tmp_path / "data" / "mycoco")
    documented_model = ["model.backbone_weights=null", "model.min_size=128", "model.max_size=128"]
    documented_model.append("model.box_score_thresh=0")  # 2 iterations from random weights score low
    tail = [*documented_model, *(t for t in TINY_TAIL if not t.startswith(("model.", "sampler.")))]
    for argv in commands:
        if argv[0] == "train":
            argv = argv + [a for item in tail for a in ("--set", item)]
        assert main(argv) == 0, (argv, capsys.readouterr().err)
    out = tmp_path / "runs" / "mycoco"
    assert "fasterrcnn_resnet50_fpn" in (out / "summary.txt").read_text()
    printed = capsys.readouterr().out
    code = printed[printed.index("wrote runs/mycoco/model.ts") :].split("\n", 1)[1]
    image = read_image(tmp_path / "data" / "mycoco" / "val" / "0005.jpg", "image")
    namespace = {"image": image}
    with torch.no_grad():
        exec(code, namespace)  # the printed lines, as a user runs them
    ours, _, _ = model_from_checkpoint(out / "checkpoint_best.pt", torch.device("cpu"))
    expected = predict(ours, [(image, {})], torch.device("cpu"))[0]
    assert len(expected.scores) > 0  # the comparison below is not of two empty lists
    torch.testing.assert_close(namespace["boxes"], expected.boxes)  # same ops, same weights: float32 rounding
    torch.testing.assert_close(namespace["scores"], expected.scores)
    assert torch.equal(namespace["labels"], expected.labels) and namespace["classes"][1:] == CLASSES
