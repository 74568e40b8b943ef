"""A user's own data: what the messages say when a COCO split, a VOC class or the ImageNet weights
are not where the config expects them, and ``eval`` reading a VOC tree with the checkpoint's classes."""

import json
import urllib.error

import pytest
import torchvision

from ohem.cli import main
from ohem.config import DataConfig
from ohem.data import build_dataset
from ohem.data.voc import VOCDetection
from tests.conftest import TINY
from tests.test_datasets import write_voc_tree


def sets(items):
    return [a for item in items for a in ("--set", item)]


def error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    return err[0]


def coco_folder(root, names):
    (root / "annotations").mkdir(parents=True)
    for name in names:
        (root / "annotations" / name).write_text("{}")
    return root


def test_coco_missing_train_file_names_the_key_and_the_files_there(tmp_path, capsys):
    root = coco_folder(tmp_path / "mine", ["instances_mytrain.json", "instances_myval.json", "notes.json"])
    argv = ["train", "--config", "demo", "--out", str(tmp_path / "run")]
    assert main(argv + sets(["data.dataset=coco", f"data.root={root}", "train.device=cpu"])) == 1
    line = error_line(capsys)
    missing = f"{root}/annotations/instances_train2017.json"
    assert line.startswith(f"ohem train: error: COCO annotations {missing}: no such file")
    assert "set data.train_split to a split NAME" in line
    found = "holds instances_mytrain.json, instances_myval.json (e.g. data.train_split=mytrain)"
    assert f"{root}/annotations {found}" in line
    assert not (tmp_path / "run").exists()


def test_coco_missing_test_file_names_data_test_split_or_split(tmp_path):
    root = coco_folder(tmp_path, ["train.json"])  # no instances_*.json: every .json is listed
    cfg = DataConfig(dataset="coco", root=str(root), train_split="annotations/train.json", test_split="val")
    with pytest.raises(FileNotFoundError) as e:
        build_dataset(cfg, "test")
    assert "instances_val.json: no such file; set data.test_split" in str(e.value)
    assert "holds train.json (e.g. data.test_split=annotations/train.json)" in str(e.value)
    with pytest.raises(FileNotFoundError, match=r"annotations/other\.json: no such file; set --split"):
        build_dataset(cfg, "test", "annotations/other.json")  # eval --split / proposals --split
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'empty'} has no annotations/ folder"):
        build_dataset(DataConfig(dataset="coco", root=str(tmp_path / "empty")), "train")


def test_voc_object_of_an_unknown_class_names_data_classes(tmp_path):
    write_voc_tree(tmp_path, {"a": [("kitten", 1, 1, 10, 10, 0)]})
    with pytest.raises(ValueError) as e:
        VOCDetection(tmp_path, "trainval")
    assert "a.xml: object 1: class 'kitten' is not in the class list (the 20 VOC classes; for your own, " in str(
        e.value
    )
    assert "set data.classes, or --classes, to all of their names)" in str(e.value)
    with pytest.raises(ValueError) as e:
        VOCDetection(tmp_path, "trainval", classes=["puppy", "duckling"])
    assert "class 'kitten' is not in the class list data.classes [puppy, duckling]" in str(e.value)
    assert len(VOCDetection(tmp_path, "trainval", classes=["puppy", "kitten"])) == 1


def test_imagenet_weights_that_cannot_be_downloaded_are_one_line_naming_the_key(tmp_path, monkeypatch, capsys):
    def offline(self, *args, **kwargs):  # what urllib raises without a network; nothing is downloaded
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", offline)
    model = ["model.name=fasterrcnn_mobilenet_v3_large_fpn", "model.backbone_weights=imagenet"]
    argv = ["train", "--config", "demo", "--out", str(tmp_path / "run"), *sets(TINY + model)]
    assert main(argv) == 1
    line = error_line(capsys)
    assert line.startswith(
        "ohem train: error: model.backbone_weights: imagenet: torchvision could not download the ImageNet "
        "weights ([Errno -3] Temporary failure in name resolution); offline, put the file"
    )
    assert "set model.backbone_weights to a local state-dict file (tensors only), or to null" in line
    assert not (tmp_path / "run").exists()


def test_eval_reads_a_voc_tree_with_the_checkpoints_classes(tmp_path, capsys):
    run, tree = tmp_path / "run", tmp_path / "voc"
    one_step = ["solver.iterations=1", "solver.warmup_iterations=0", "solver.steps=[]", "train.vis_images=0"]
    assert main(["train", "--config", "demo", "--out", str(run), *sets(TINY + one_step)]) == 0
    assert main(["export", "--layout", "voc", "--split", "test", "--out", str(tree), "--set", "data.num_test=2"]) == 0
    # the checkpoint's classes are the synthetic ones, not the 20 VOC ones: no --classes needed
    evaluate = ["eval", "--checkpoint", str(run / "checkpoint_last.pt"), "--data", f"voc:{tree}", "--split", "test"]
    assert main([*evaluate, "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert list(metrics["AP"]) == ["circle", "square", "triangle", "plus", "ring"] and metrics["num_images"] == 2
    capsys.readouterr()
    wrong = [*evaluate, "--classes", "circle,square", "--out", str(tmp_path / "eval2")]
    assert main(wrong) == 1
    assert "is not in the class list data.classes [circle, square]" in error_line(capsys)
