"""ohem.structures: the shared types import nothing that imports them back, and every dataset
offers what the ``DetectionDataset`` protocol lists."""

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np

import ohem.structures
from ohem.data import COCODetection, SyntheticShapes, VOCDetection, WithProposals
from ohem.data.export import export_synthetic
from ohem.data.proposals import write_proposals
from ohem.evaluation.score import coco_ground_truth, score_detections
from ohem.structures import DetectionDataset, ImageDetections, ProposalDataset


def protocol_members(protocol: type) -> set[str]:
    """The methods and properties ``protocol`` (and the protocols it extends) lists."""
    bases = [b for b in protocol.__mro__ if getattr(b, "_is_protocol", False) and b.__module__ == "ohem.structures"]
    return {name for b in bases for name in vars(b) if not name.startswith("_") or name in ("__len__", "__getitem__")}


def test_structures_imports_nothing_from_ohem_but_util():
    tree = ast.parse(Path(ohem.structures.__file__).read_text())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert [m for m in imported if m.startswith("ohem") and m != "ohem.util"] == []


def test_inference_does_not_import_evaluation():
    code = "import sys, ohem.inference; print(sorted(m for m in sys.modules if m.startswith('ohem.evaluation')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_dataset_has_what_the_protocol_lists(tmp_path):
    synthetic = SyntheticShapes("train", num_images=2, image_size=128)
    export_synthetic(synthetic, tmp_path / "voc", "voc")
    export_synthetic(synthetic, tmp_path / "coco", "coco")
    names = [synthetic.image_name(i) for i in range(2)]
    proposals = write_proposals(tmp_path / "p.npz", {n: np.array([[0, 0, 10, 10]], np.float32) for n in names})
    datasets = {
        "synthetic": synthetic,
        "voc": VOCDetection(tmp_path / "voc", "train", classes=synthetic.classes),
        "coco": COCODetection(tmp_path / "coco", "train"),
        "with proposals": WithProposals(synthetic, str(proposals), None, allow_empty=False),
    }
    members = protocol_members(DetectionDataset)
    assert {"classes", "image_name", "image_size", "annotations", "coco_ground_truth", "__getitem__"} <= members
    for name, dataset in datasets.items():
        missing = [m for m in members if not hasattr(dataset, m)]
        assert missing == [], name
    assert "proposals" in protocol_members(ProposalDataset) and hasattr(datasets["with proposals"], "proposals")
    # The optional part: only COCO has its own ground truth; a wrapper passes on its dataset's.
    assert datasets["synthetic"].coco_ground_truth() is None and datasets["voc"].coco_ground_truth() is None
    assert datasets["with proposals"].coco_ground_truth() is None
    assert datasets["coco"].coco_ground_truth()["images"][0]["id"] == 1
    coco_proposals = WithProposals(datasets["coco"], str(proposals_for(datasets["coco"], tmp_path)), None, False)
    assert coco_ground_truth(coco_proposals, [])[0] == datasets["coco"].coco_ground_truth()


def proposals_for(dataset: COCODetection, tmp_path: Path) -> Path:
    names = [dataset.image_name(i) for i in range(len(dataset))]
    return write_proposals(tmp_path / "c.npz", {n: np.array([[0, 0, 10, 10]], np.float32) for n in names})


def test_score_detections_reads_annotations_through_the_protocol():
    synthetic = SyntheticShapes("test", num_images=2, image_size=128)
    truth = [synthetic.annotations(i) for i in range(2)]
    perfect = [ImageDetections(t["boxes"], t["labels"].float() * 0 + 1, t["labels"]) for t in truth]
    assert score_detections(synthetic, perfect, "voc")["mAP"] == 1.0
