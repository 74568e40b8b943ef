import numpy as np
import pytest
import torch

from ohem.data import SyntheticShapes, batch_indices


def test_deterministic_by_seed_and_split():
    a, b = SyntheticShapes("train", 5, seed=3), SyntheticShapes("train", 5, seed=3)
    for i in range(5):
        assert torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1]["boxes"], b[i][1]["boxes"])
    other_seed, test_split = SyntheticShapes("train", 5, seed=4), SyntheticShapes("test", 5, seed=3)
    assert not torch.equal(a[0][0], other_seed[0][0])
    assert not torch.equal(a[0][0], test_split[0][0])


def test_targets_are_valid_and_varied():
    ds = SyntheticShapes("train", 60, image_size=160)
    sizes, aspects, labels, counts = [], [], [], []
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (3, 160, 160) and image.dtype == torch.float32
        assert 0 <= image.min() and image.max() <= 1
        boxes = target["boxes"]
        assert boxes.dtype == torch.float32 and target["labels"].dtype == torch.int64
        assert torch.all(boxes[:, 2:] > boxes[:, :2]) and boxes.min() >= 0 and boxes.max() <= 160
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        sizes += torch.maximum(w, h).tolist()
        aspects += (w / h).tolist()
        labels += target["labels"].tolist()
        counts.append(len(boxes))
    assert 1 <= min(counts) and max(counts) <= 4
    assert set(labels) == {1, 2, 3, 4, 5}
    assert min(sizes) < 16 and max(sizes) > 50  # small and large objects
    assert min(aspects) < 0.8 and max(aspects) > 1.25


def test_objects_cover_a_small_part_of_the_image():
    # Easy background must dominate: labelled boxes cover well under half of the pixels on average.
    ds = SyntheticShapes("test", 40)
    covered = []
    for i in range(len(ds)):
        mask = np.zeros((160, 160), bool)
        for x1, y1, x2, y2 in ds[i][1]["boxes"].int().tolist():
            mask[y1:y2, x1:x2] = True
        covered.append(mask.mean())
    assert np.mean(covered) < 0.25


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"synthetic split must be one of \['test', 'train'\], got 'val'"):
        SyntheticShapes("val")
    with pytest.raises(ValueError, match="synthetic image_size must be >= 128, got 100"):
        SyntheticShapes("train", image_size=100)
    with pytest.raises(IndexError, match=r"synthetic train index 3 out of range 0\.\.2"):
        SyntheticShapes("train", 3)[3]


def test_batch_indices_cover_each_epoch_once_and_are_pure():
    seen = [i for it in range(5) for i in batch_indices(it, 10, 2, seed=1)]
    assert sorted(seen) == list(range(10))
    assert batch_indices(7, 10, 2, seed=1) == batch_indices(7, 10, 2, seed=1)
    assert batch_indices(5, 10, 2, seed=1) + batch_indices(6, 10, 2, seed=1) != seen[:4]
    with pytest.raises(ValueError, match="smaller than one batch"):
        batch_indices(0, 1, 2, seed=0)


def test_distractor_boxes_are_reported_but_not_labelled():
    ds = SyntheticShapes("train", 30)
    counts = []
    for i in range(len(ds)):
        target = ds[i][1]
        d = target["distractor_boxes"]
        assert d.dtype == torch.float32 and d.shape[1] == 4
        assert torch.all(d[:, 2:] > d[:, :2])
        counts.append(len(d))
        # A distractor is never one of the labelled boxes.
        if len(d) and len(target["boxes"]):
            same = (d[:, None, :] == target["boxes"][None, :, :]).all(-1)
            assert not same.any()
    assert 1 <= np.mean(counts) <= 3 and max(counts) <= 3
