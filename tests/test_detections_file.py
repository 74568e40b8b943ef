"""Detections files (COCO results JSON): round trip, and one-line errors naming file and entry."""

import json
import os
import re

import pytest
import torch

from ohem.evaluation import detections_file, read_detections, write_detections
from ohem.structures import ImageDetections

VOC_IDS = ["000001", "000002", "000004"]
VOC_CATS = list(range(1, 21))
COCO_IDS = [139, 285, 632]
COCO_CATS = [1, 2, 3, 5, 90]  # not contiguous, as in COCO


def random_detections(num_images, num_labels, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(num_images):
        n = 0 if i == 1 else int(torch.randint(1, 30, (1,), generator=g))  # one image without detections
        xy = torch.rand(n, 2, generator=g) * 400
        boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 100], 1)
        out.append(
            ImageDetections(boxes, torch.rand(n, generator=g), torch.randint(1, num_labels + 1, (n,), generator=g))
        )
    return out


@pytest.mark.parametrize("ids, cats", [(VOC_IDS, VOC_CATS), (COCO_IDS, COCO_CATS)])
def test_round_trip(tmp_path, ids, cats):
    dets = random_detections(len(ids), len(cats))
    path = tmp_path / "results.json"
    write_detections(path, dets, ids, cats)
    back = read_detections(path, ids, cats)
    assert len(back) == len(dets)
    for d, b in zip(dets, back):
        assert b.boxes.dtype == torch.float32 and b.labels.dtype == torch.int64
        assert torch.equal(b.labels, d.labels)
        # x, y, w, h each rounded to 0.01, so x2 = x + w is within 0.01 (plus float32 error).
        torch.testing.assert_close(b.boxes, d.boxes, atol=0.0101, rtol=0)
        torch.testing.assert_close(b.scores, d.scores, atol=0, rtol=1e-4)
    entries = json.loads(path.read_text())
    assert {type(e["image_id"]) for e in entries} == {type(ids[0])}
    assert {e["category_id"] for e in entries} <= set(cats)
    assert [f for f in os.listdir(tmp_path) if f != "results.json"] == []  # no temp file left behind


def test_written_entries_are_coco_results(tmp_path):
    det = ImageDetections(torch.tensor([[10.0, 20.0, 40.5, 60.25]]), torch.tensor([0.123456789]), torch.tensor([3]))
    path = tmp_path / "r.json"
    write_detections(path, [det], [632], COCO_CATS)
    assert json.loads(path.read_text()) == [
        {"image_id": 632, "category_id": 3, "bbox": [10.0, 20.0, 30.5, 40.25], "score": 0.12346}
    ]
    write_detections(
        path, [ImageDetections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))], [1], [1]
    )
    assert json.loads(path.read_text()) == []
    assert read_detections(path, [1], [1])[0].boxes.shape == (0, 4)


def test_entries_keep_file_order_and_go_to_their_image(tmp_path):
    path = tmp_path / "r.json"
    entries = [
        {"image_id": "000004", "category_id": 2, "bbox": [0, 0, 1, 1], "score": 0.1},
        {"image_id": "000001", "category_id": 20, "bbox": [1, 2, 3, 4], "score": 1},
        {"image_id": "000004", "category_id": 1, "bbox": [5, 5, 0, 0], "score": 0.9},
    ]
    path.write_text(json.dumps(entries))
    d1, d2, d4 = read_detections(path, VOC_IDS, VOC_CATS)
    assert d1.boxes.tolist() == [[1.0, 2.0, 4.0, 6.0]] and d1.labels.tolist() == [20]
    assert d2.boxes.shape == (0, 4)
    assert d4.labels.tolist() == [2, 1] and d4.scores.tolist() == pytest.approx([0.1, 0.9])


def write_raw(tmp_path, text, name="results.json"):
    path = tmp_path / name
    path.write_text(text)
    return path


def entry(**overrides):
    e = {"image_id": "000002", "category_id": 7, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.5}
    e.update(overrides)
    return {k: v for k, v in e.items() if v is not DROP}


DROP = object()

BAD_ENTRIES = [
    ({"image_id": DROP}, r"entry 1: missing 'image_id'"),
    ({"score": DROP, "bbox": DROP}, r"entry 1: missing 'bbox', 'score'"),
    (
        {"image_id": 2},
        r"entry 1: image_id 2 is not in the dataset split; this dataset's image ids are strings like '000001'",
    ),
    ({"image_id": "000123"}, r"entry 1: image_id '000123' is not in the dataset split \(3 images, e\.g\. '000001'\)"),
    ({"image_id": 1.5}, r"entry 1: image_id must be a string or an integer, got 1\.5"),
    ({"image_id": None}, r"entry 1: image_id must be a string or an integer, got null"),
    ({"category_id": 21}, r"entry 1: category_id 21 is not one of the dataset's categories \(1\.\.20\)"),
    ({"category_id": "7"}, r'entry 1: category_id must be an integer, got "7"'),
    ({"category_id": 7.0}, r"entry 1: category_id must be an integer, got 7\.0"),
    ({"category_id": True}, r"entry 1: category_id must be an integer, got true"),
    ({"bbox": [1, 2, 3]}, r"entry 1: bbox must be a list of 4 numbers \[x, y, w, h\], got \[1, 2, 3\]"),
    ({"bbox": [1, 2, 3, "4"]}, r"entry 1: bbox must be a list of 4 numbers"),
    ({"bbox": {"x": 1}}, r"entry 1: bbox must be a list of 4 numbers"),
    ({"bbox": [1, 2, -3, 4]}, r"entry 1: bbox \[1, 2, -3, 4\] has a negative width or height"),
    ({"bbox": [1, 2, float("inf"), 4]}, r"entry 1: bbox \[1, 2, inf, 4\] is not finite"),
    ({"bbox": [float("nan"), 2, 3, 4]}, r"entry 1: bbox \[nan, 2, 3, 4\] is not finite"),
    ({"score": float("nan")}, r"entry 1: score must be a finite number, got nan"),
    ({"score": "0.5"}, r'entry 1: score must be a finite number, got "0.5"'),
]


@pytest.mark.parametrize("overrides, message", BAD_ENTRIES)
def test_bad_entry_raises_one_line_naming_file_and_entry(tmp_path, overrides, message):
    # json.dumps writes NaN / Infinity, which Python's json (and so a careless writer) produces.
    path = write_raw(tmp_path, json.dumps([entry(), entry(**overrides)]))
    with pytest.raises(ValueError, match=r"^detections .*results\.json: " + message) as info:
        read_detections(path, VOC_IDS, VOC_CATS)
    assert "\n" not in str(info.value)


def test_bad_file_raises_one_line(tmp_path):
    cases = [
        ('[{"image_id": "000001",\n  "score": 0.5,,}]', r"not valid JSON \(.* at line 2 column 16\)"),
        ("", r"not valid JSON \(Expecting value at line 1 column 1\)"),
        ('{"annotations": []}', r"expected a JSON list of COCO results entries .*got a JSON object"),
        ("[[1, 2, 3]]", r"entry 0: expected an object with image_id, category_id, bbox, score, got a JSON list"),
    ]
    for text, message in cases:
        path = write_raw(tmp_path, text, "bad file.json")
        with pytest.raises(ValueError, match=r"^detections .*bad file\.json: " + message) as info:
            read_detections(path, VOC_IDS, VOC_CATS)
        assert "\n" not in str(info.value)
    path = tmp_path / "latin1.json"
    path.write_bytes(b'[{"image_id": "\xe9"}]')
    with pytest.raises(ValueError, match=r"latin1\.json: not UTF-8 text"):
        read_detections(path, VOC_IDS, VOC_CATS)


def test_integer_ids_with_string_given_get_a_hint(tmp_path):
    path = write_raw(tmp_path, json.dumps([entry(image_id="285", category_id=90)]))
    with pytest.raises(ValueError, match=r"entry 0: image_id '285' is not in the dataset split; .* integers like 139"):
        read_detections(path, COCO_IDS, COCO_CATS)
    path = write_raw(tmp_path, json.dumps([entry(image_id=285, category_id=4)]))
    with pytest.raises(
        ValueError, match=re.escape("category_id 4 is not one of the dataset's categories (5 ids from 1 to 90)")
    ):
        read_detections(path, COCO_IDS, COCO_CATS)


def test_write_rejects_what_it_could_not_read_back(tmp_path):
    path = tmp_path / "out.json"
    good = ImageDetections(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([0.5]), torch.tensor([1]))
    with pytest.raises(ValueError, match="2 detection lists for 1 image ids"):
        write_detections(path, [good, good], ["a"], [1])
    with pytest.raises(ValueError, match="label 2, not in 1..1"):
        write_detections(path, [ImageDetections(good.boxes, good.scores, torch.tensor([2]))], ["a"], [1])
    with pytest.raises(ValueError, match="x2 < x1"):
        write_detections(path, [ImageDetections(torch.tensor([[5.0, 0, 1, 1]]), good.scores, good.labels)], ["a"], [1])
    with pytest.raises(ValueError, match="non-finite score"):
        write_detections(path, [ImageDetections(good.boxes, torch.tensor([float("nan")]), good.labels)], ["a"], [1])
    with pytest.raises(ValueError, match="image_ids: 'a' appears twice"):
        write_detections(path, [good, good], ["a", "a"], [1])
    assert not path.exists() and os.listdir(tmp_path) == []


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "out.json"
    good = ImageDetections(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([0.5]), torch.tensor([1]))
    write_detections(path, [good], ["a"], [1])
    before = path.read_text()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(detections_file.os, "fsync", disk_full)
    with pytest.raises(OSError, match="(?i)no space left"):
        write_detections(path, [good, good], ["a", "b"], [1])
    assert path.read_text() == before and os.listdir(tmp_path) == ["out.json"]
