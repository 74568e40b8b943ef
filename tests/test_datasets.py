"""VOC and COCO loaders on small trees the tests write, their bad-input errors, augmentation and batching."""

import json
import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ohem.config import load_config
from ohem.data import (
    VOC_CLASSES,
    COCODetection,
    SyntheticShapes,
    VOCDetection,
    WithProposals,
    aspect_groups,
    build_dataset,
    grouped_batch_indices,
    hflip,
)
from ohem.data.export import export_synthetic
from ohem.data.proposals import write_proposals


def write_voc_tree(tree, images, split="trainval", size=(40, 30)):
    """``images``: {name: [(class, xmin, ymin, xmax, ymax, difficult), ...]} in devkit coordinates."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (tree / sub).mkdir(parents=True, exist_ok=True)
    w, h = size
    for name, objects in images.items():
        Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(tree / "JPEGImages" / f"{name}.jpg")
        xml = f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
        for cls, x1, y1, x2, y2, difficult in objects:
            xml += (
                f"<object><name>{cls}</name><difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin>"
                f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
            )
        (tree / "Annotations" / f"{name}.xml").write_text(xml + "</annotation>")
    (tree / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{n}\n" for n in images))


def test_voc_devkit_years_concatenation_coordinates_and_difficult(tmp_path):
    devkit = tmp_path / "VOCdevkit"
    write_voc_tree(devkit / "VOC2007", {"000001": [("dog", 1, 1, 10, 20, 0), ("cat", 5, 5, 30, 25, 1)]})
    write_voc_tree(devkit / "VOC2012", {"2008_000002": [("person", 11, 2, 40, 30, 0)]})
    train = VOCDetection(devkit, "2007:trainval+2012:trainval")
    assert len(train) == 2 and train.image_ids == ["000001", "2008_000002"]
    image, target = train[0]
    assert image.shape == (3, 30, 40) and train.image_size(0) == (30, 40)
    # devkit 1-based pixel indices -> continuous edges; the difficult cat is not trained on
    assert target["boxes"].tolist() == [[0, 0, 10, 20]]
    assert target["labels"].tolist() == [VOC_CLASSES.index("dog") + 1]
    test = VOCDetection(devkit, "trainval", keep_difficult=True)  # no year: default 2007
    assert test.image_ids == ["000001"]
    target = test.annotations(0)
    assert target["difficult"].tolist() == [False, True]
    assert target["labels"].tolist() == [VOC_CLASSES.index("dog") + 1, VOC_CLASSES.index("cat") + 1]


def test_build_dataset_roles(tmp_path):
    write_voc_tree(tmp_path / "VOC2007", {"a": [("dog", 1, 1, 10, 10, 1)], "b": [("dog", 1, 1, 10, 10, 0)]})
    cfg = load_config(None, ["data.dataset=voc", f"data.root={tmp_path}", "data.train_split=trainval"])
    with pytest.warns(UserWarning, match="1 images without objects skipped"):
        train = build_dataset(cfg.data, "train")  # image "a" has only a difficult object
    assert train.image_ids == ["b"]
    test = build_dataset(cfg.data, "test", "2007:trainval")  # evaluation keeps every image
    assert test.image_ids == ["a", "b"] and test.annotations(0)["difficult"].tolist() == [True]
    cfg = load_config(None, ["data.dataset=voc"])
    with pytest.raises(ValueError, match="data.root"):
        build_dataset(cfg.data, "train")


def test_build_dataset_attaches_proposals_clipped_and_cut(tmp_path):
    names = ["synthetic-train-000000", "synthetic-train-000001"]
    stored = np.array([[-5, -5, 10, 10], [3, 3, 3, 9], [20, 20, 30, 30], [40, 40, 50, 50]], np.float32)
    path = write_proposals(tmp_path / "p.npz", {n: stored for n in names})
    options = ["data.num_train=2", "data.image_size=128", f"data.proposals={path}", "data.max_proposals=2"]
    train = build_dataset(load_config(None, options).data, "train")
    assert isinstance(train, WithProposals) and len(train) == 2
    image, target = train[1]
    plain_image, plain = SyntheticShapes("train", num_images=2, image_size=128)[1]
    assert torch.equal(image, plain_image) and torch.equal(target["boxes"], plain["boxes"])
    # clipped to the image, the zero-width box dropped, then the first max_proposals kept
    assert target["proposals"].tolist() == [[0, 0, 10, 10], [20, 20, 30, 30]]
    assert train.classes == SyntheticShapes.classes and train.image_name(1) == names[1]  # the dataset's own
    assert torch.equal(pickle.loads(pickle.dumps(train))[1][1]["proposals"], target["proposals"])


def test_build_dataset_checks_the_proposal_file(tmp_path):
    ok = np.array([[0, 0, 10, 10]], np.float32)
    names = ["synthetic-test-000000", "synthetic-test-000001"]
    only_degenerate = write_proposals(tmp_path / "d.npz", {names[0]: ok, names[1]: np.zeros((1, 4), np.float32)})
    options = ["data.num_test=2", "data.train_split=test", f"data.proposals={only_degenerate}"]
    cfg = load_config(None, [*options, f"data.test_proposals={only_degenerate}"])
    with pytest.raises(ValueError, match=f"1 images have no valid boxes, e.g. image '{names[1]}'"):
        build_dataset(cfg.data, "train")  # training refuses an image without proposals ...
    assert build_dataset(cfg.data, "test")[1][1]["proposals"].shape == (0, 4)  # ... evaluation keeps it, with none
    partial = write_proposals(tmp_path / "p.npz", {names[0]: ok})
    cfg = load_config(None, ["data.num_test=2", f"data.test_proposals={partial}"])
    with pytest.raises(ValueError, match=f"lacks 1 of the dataset's 2 images, e.g. '{names[1]}'"):
        build_dataset(cfg.data, "test")


def test_aspect_groups_from_annotated_sizes(tmp_path):
    write_voc_tree(tmp_path / "VOC2007", {"wide": [("dog", 1, 1, 5, 5, 0)]}, size=(40, 30))
    write_voc_tree(tmp_path / "VOC2012", {"tall": [("dog", 1, 1, 5, 5, 0)]}, size=(30, 40))
    write_voc_tree(tmp_path / "VOC2008", {"square": [("dog", 1, 1, 5, 5, 0)]}, size=(30, 30))
    voc = VOCDetection(tmp_path, "2007:trainval+2012:trainval+2008:trainval")
    assert aspect_groups(voc) == [0, 1, 0]  # tall is 1; square counts as wide


def test_synthetic_export_round_trips_through_both_loaders(tmp_path):
    synthetic = SyntheticShapes("train", num_images=3, image_size=128)
    export_synthetic(synthetic, tmp_path / "voc", "voc")
    export_synthetic(synthetic, tmp_path / "coco", "coco")
    voc = VOCDetection(tmp_path / "voc", "train", classes=synthetic.classes)
    coco = COCODetection(tmp_path / "coco", "train")
    assert coco.classes == synthetic.classes and coco.category_ids == [1, 2, 3, 4, 5]
    assert voc.image_ids == synthetic.image_ids and coco.image_ids == [1, 2, 3]
    for i in range(3):
        image, target = synthetic[i]
        for loaded in (voc, coco):
            got_image, got = loaded[i]
            assert torch.equal(got_image, image)  # PNG: exact pixels
            assert torch.equal(got["boxes"], target["boxes"]) and torch.equal(got["labels"], target["labels"])


def test_coco_categories_crowd_and_empty_images(tmp_path):
    (tmp_path / "images").mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "images" / name)
    gt = {
        "images": [
            {"id": 7, "file_name": "a.png", "width": 30, "height": 20},
            {"id": 9, "file_name": "b.png", "width": 30, "height": 20},
            {"id": 11, "file_name": "c.png", "width": 30, "height": 20},
        ],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 90, "bbox": [1, 2, 10, 5], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [0, 0, 30, 20], "iscrowd": 1},
            {"id": 3, "image_id": 9, "category_id": 3, "bbox": [0, 0, 30, 20], "iscrowd": 1},
            {"id": 4, "image_id": 11, "category_id": 3, "bbox": [25, 15, 10, 10], "iscrowd": 0},
        ],
        "categories": [{"id": 90, "name": "toothbrush"}, {"id": 3, "name": "car"}],
    }
    (tmp_path / "train.json").write_text(json.dumps(gt))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = COCODetection(tmp_path, "train.json", image_dir=tmp_path / "images")
    messages = " | ".join(str(w.message) for w in caught)
    assert "1 images without objects skipped" in messages  # image 9 holds only a crowd region
    assert "1 clipped to the image" in messages and "annotation 3 (id 4)" in messages
    assert ds.classes == ("car", "toothbrush") and ds.category_ids == [3, 90]  # ascending ids -> 1..C
    assert ds.image_ids == [7, 11]
    target = ds.annotations(0)
    assert target["boxes"].tolist() == [[1, 2, 11, 7]] and target["labels"].tolist() == [2]  # crowd left out
    assert ds.annotations(1)["boxes"].tolist() == [[25, 15, 30, 20]]
    with pytest.warns(UserWarning, match="1 clipped"):
        keep = COCODetection(tmp_path, "train.json", image_dir=tmp_path / "images", empty_images="keep")
    assert keep.image_ids == [7, 9, 11] and keep.annotations(1)["boxes"].shape == (0, 4)
    assert {img["id"] for img in ds.coco_ground_truth()["images"]} == {7, 11}


def test_hflip_mirrors_boxes_and_proposals():
    image = torch.arange(3 * 3 * 4, dtype=torch.float32).reshape(3, 3, 4)
    target = {
        "boxes": torch.tensor([[0.0, 1.0, 1.0, 2.0]]),
        "proposals": torch.tensor([[1.0, 0.0, 4.0, 3.0]]),
        "labels": torch.tensor([1]),
    }
    flipped_image, flipped = hflip(image, target)
    assert torch.equal(flipped_image[:, :, 0], image[:, :, 3])
    assert flipped["boxes"].tolist() == [[3.0, 1.0, 4.0, 2.0]] and flipped["proposals"].tolist() == [[0, 0, 3, 3]]
    assert flipped["labels"] is target["labels"] and target["boxes"].tolist() == [[0.0, 1.0, 1.0, 2.0]]
    _, twice = hflip(*hflip(image, target))
    assert torch.equal(twice["boxes"], target["boxes"])


def test_grouped_batches_share_an_orientation_and_are_reproducible():
    groups = tuple([0] * 7 + [1] * 5)
    batches = [grouped_batch_indices(it, groups, 2, seed=3) for it in range(10)]
    assert all(len({groups[i] for i in b}) == 1 and len(b) == 2 for b in batches)
    epoch = batches[:5]  # 3 wide + 2 tall batches per epoch
    assert len({i for b in epoch for i in b}) == 10
    assert batches == [grouped_batch_indices(it, groups, 2, seed=3) for it in range(10)]
    assert epoch != batches[5:10]  # a new permutation each epoch
    with pytest.raises(ValueError, match="no orientation group"):
        grouped_batch_indices(0, (0, 1), 2, seed=0)


# --- bad input: one line naming the file and the item -------------------------------------------


def _one_line(excinfo):
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_voc_missing_split_file_and_missing_year(tmp_path):
    write_voc_tree(tmp_path / "VOC2007", {"a": [("dog", 1, 1, 10, 10, 0)]})
    with pytest.raises(FileNotFoundError) as e:
        VOCDetection(tmp_path, "2007:test")
    assert "ImageSets/Main/test.txt" in _one_line(e) and "trainval" in str(e.value)
    with pytest.raises(FileNotFoundError, match="no VOC2012 folder"):
        VOCDetection(tmp_path, "2012:trainval")


@pytest.mark.parametrize(
    "xml, match",
    [
        ("<annotation><size><width>40", "000001.xml: XML does not parse"),
        ("<annotation><object><name>dog</name></object></annotation>", "000001.xml: size lacks <size/width>"),
        (
            "<annotation><size><width>40</width><height>30</height></size><object><name>dog</name>"
            "<bndbox><xmin>1</xmin><ymin>1</ymin><ymax>5</ymax></bndbox></object></annotation>",
            "000001.xml: object 1 lacks <bndbox/xmax>",
        ),
        (
            "<annotation><size><width>40</width><height>30</height></size><object><name>dgo</name>"
            "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>",
            "000001.xml: object 1: class 'dgo' is not in the class list",
        ),
        (
            "<annotation><size><width>40</width><height>30</height></size><object><name>dog</name>"
            "<bndbox><xmin>1</xmin><ymin>a</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>",
            "000001.xml: object 1 <bndbox/ymin> is 'a', not a number",
        ),
    ],
)
def test_voc_bad_xml(tmp_path, xml, match):
    write_voc_tree(tmp_path, {"000001": []})
    (tmp_path / "Annotations" / "000001.xml").write_text(xml)
    with pytest.raises(ValueError) as e:
        VOCDetection(tmp_path, "trainval")
    assert match in _one_line(e)


def test_voc_bad_boxes_fixed_and_counted_or_refused(tmp_path):
    objects = [("dog", 5, 5, 3, 10, 0), ("cat", -4, 1, 10, 10, 0), ("cow", 1, 1, 50, 10, 0), ("bus", 2, 2, 8, 8, 0)]
    write_voc_tree(tmp_path, {"000001": objects})
    with pytest.warns(UserWarning) as caught:
        ds = VOCDetection(tmp_path, "trainval")
    message = str(caught[0].message)
    assert "1 empty, dropped" in message and "2 clipped to the image" in message and "000001.xml: object 1" in message
    assert ds.annotations(0)["boxes"].tolist() == [[0, 0, 10, 10], [0, 0, 40, 10], [1, 1, 8, 8]]
    with pytest.raises(ValueError) as e:
        VOCDetection(tmp_path, "trainval", invalid_boxes="error")
    assert "000001.xml: object 1 (dog): box [4, 4, 3, 10] is empty" in _one_line(e)


def test_voc_image_without_objects_policy(tmp_path):
    write_voc_tree(tmp_path, {"000001": [], "000002": [("dog", 1, 1, 5, 5, 0)]})
    with pytest.raises(ValueError) as e:
        VOCDetection(tmp_path, "trainval", empty_images="error")
    assert "000001.xml: no objects" in _one_line(e)
    keep = VOCDetection(tmp_path, "trainval", empty_images="keep")
    assert keep.image_ids == ["000001", "000002"] and keep.annotations(0)["boxes"].shape == (0, 4)
    with pytest.warns(UserWarning, match=r"trainval: 1 images without objects skipped \(data.empty_images\)"):
        skip = VOCDetection(tmp_path, "trainval")
    assert skip.image_ids == ["000002"]


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda root: VOCDetection(root, "trainval", empty_images="drop"),
            "data.empty_images: expected one of skip, keep, error, got 'drop'",
        ),
        (
            lambda root: VOCDetection(root, "trainval", invalid_boxes="clip"),
            "data.invalid_boxes: expected one of fix, error, got 'clip'",
        ),
        (
            lambda root: COCODetection(root, "x", empty_images="drop"),
            "data.empty_images: expected one of skip, keep, error, got 'drop'",
        ),
        (
            lambda root: COCODetection(root, "x", invalid_boxes="clip"),
            "data.invalid_boxes: expected one of fix, error, got 'clip'",
        ),
    ],
)
def test_unknown_choices_are_refused(tmp_path, make, message):
    write_voc_tree(tmp_path, {"000001": [("dog", 1, 1, 5, 5, 0)]})
    _coco_file(tmp_path, json.dumps({**ONE_IMAGE, "annotations": []}))
    with pytest.raises(ValueError) as e:
        make(tmp_path)
    assert _one_line(e) == message


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_voc_corrupt_or_truncated_image(tmp_path, damage):
    write_voc_tree(tmp_path, {"000001": [("dog", 1, 1, 5, 5, 0)]}, size=(64, 48))
    path = tmp_path / "JPEGImages" / "000001.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(b"not an image at all" if damage == "garbage" else data[: len(data) // 2])
    ds = VOCDetection(tmp_path, "trainval")
    with pytest.raises(ValueError) as e:
        ds[0]
    assert "JPEGImages/000001.jpg: cannot be read as an image" in _one_line(e)


def test_voc_missing_image_file(tmp_path):
    write_voc_tree(tmp_path, {"000001": [("dog", 1, 1, 5, 5, 0)]})
    (tmp_path / "JPEGImages" / "000001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="000001.jpg: no such file"):
        VOCDetection(tmp_path, "trainval")


ONE_IMAGE = {
    "images": [{"id": 1, "file_name": "a.png", "width": 9, "height": 9}],
    "categories": [{"id": 1, "name": "a"}],
}


def _coco_file(tmp_path, text):
    (tmp_path / "annotations").mkdir(exist_ok=True)
    path = tmp_path / "annotations" / "instances_x.json"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "gt, match",
    [
        ('{"images": [', "instances_x.json: not valid JSON (Expecting value at line 1 column 13)"),
        ('{"images": []}', "instances_x.json: lacks the list 'categories'"),
        (
            '{"images": [], "annotations": [], "categories": [7]}',
            "instances_x.json: categories[0]: expected an object with id, name, got a JSON number",
        ),
        (
            {
                "images": [{"id": 1, "file_name": "a.png", "width": 9}],
                "annotations": [],
                "categories": [{"id": 1, "name": "a"}],
            },
            "instances_x.json: images[0]: missing 'height'",
        ),
        (
            '{"images": [], "annotations": [], "categories": []}',
            "instances_x.json: 'categories' is empty: no class to train on or evaluate",
        ),
        (
            {**ONE_IMAGE, "annotations": [{"id": 5, "image_id": 1, "category_id": 2, "bbox": [0, 0, 1, 1]}]},
            "annotation 0 (id 5): category_id 2 is not in 'categories'",
        ),
        (
            {**ONE_IMAGE, "annotations": [{"id": 5, "image_id": 3, "category_id": 1, "bbox": [0, 0, 1, 1]}]},
            "annotation 0 (id 5): image_id 3 is not in 'images'",
        ),
        (
            {**ONE_IMAGE, "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [0, 0, "1", 1]}]},
            "annotation 0 (id 5): bbox [0, 0, '1', 1] is not 4 numbers",
        ),
    ],
)
def test_coco_bad_json(tmp_path, gt, match):
    _coco_file(tmp_path, gt if isinstance(gt, str) else json.dumps(gt))
    with pytest.raises(ValueError) as e:
        COCODetection(tmp_path, "x")
    assert match in _one_line(e)


def test_coco_image_without_objects_refused(tmp_path):
    _coco_file(tmp_path, json.dumps({**ONE_IMAGE, "annotations": []}))
    with pytest.raises(ValueError) as e:
        COCODetection(tmp_path, "x", empty_images="error")
    assert "instances_x.json: image 1 (a.png): no objects to train on" in _one_line(e)
    assert COCODetection(tmp_path, "x", empty_images="keep").image_ids == [1]


def test_coco_missing_file_and_wrong_image_size(tmp_path):
    with pytest.raises(FileNotFoundError, match="instances_val2017.json: no such file"):
        COCODetection(tmp_path, "val2017")
    gt = {
        "images": [{"id": 1, "file_name": "a.png", "width": 9, "height": 9}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4]}],
    }
    _coco_file(tmp_path, json.dumps(gt))
    (tmp_path / "x").mkdir()
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "x" / "a.png")
    with pytest.raises(ValueError) as e:
        COCODetection(tmp_path, "x")[0]
    assert "x/a.png: is 12x10 but" in _one_line(e) and "says 9x9 (image id 1)" in str(e.value)
