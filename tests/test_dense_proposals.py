"""Dense benchmark proposals: counts, where the boxes lie, determinism, the CLI."""

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from ohem.cli import main
from ohem.data import ProposalFile, SyntheticShapes
from ohem.data.dense_proposals import dense_boxes, dense_proposals

GT = np.array([[10, 20, 50, 80], [60, 60, 100, 90]], dtype=np.float32)


def test_copies_sit_on_their_objects_and_the_rest_are_random_boxes_inside_the_image():
    boxes = dense_boxes(GT, 120, 160, num_boxes=500, copies=20, jitter=0.0, rng=np.random.default_rng(0))
    assert boxes.shape == (500, 4) and boxes.dtype == np.float32
    iou = box_iou(torch.from_numpy(boxes), torch.from_numpy(GT))
    assert int((iou > 0.999).sum()) == 40  # jitter 0: each copy is its gt box exactly
    random = boxes[(iou < 0.999).all(dim=1).numpy()]
    assert len(random) == 460
    assert (random[:, 0] >= 0).all() and (random[:, 2] <= 160 + 1e-3).all() and (random[:, 3] <= 120 + 1e-3).all()
    sides = np.stack([random[:, 2] - random[:, 0], random[:, 3] - random[:, 1]], 1)
    assert (sides.prod(1) >= 64 - 1e-3).all() and (sides.max(1) / sides.min(1) <= 3 + 1e-3).all()
    # shuffled: the near-object boxes are spread over the file's order, not at its head
    first = (iou[:250] > 0.999).sum()
    assert 5 < int(first) < 35


def test_jitter_spreads_the_copies_over_the_label_boundary():
    boxes = dense_boxes(GT, 120, 160, num_boxes=2000, copies=400, jitter=0.15, rng=np.random.default_rng(1))
    best = box_iou(torch.from_numpy(boxes), torch.from_numpy(GT)).max(dim=1).values
    near = best[best > 0.1]
    assert 0.2 < float((near >= 0.5).float().mean()) < 0.9  # both sides of IoU 0.5 are populated
    assert float((near > 0.9).float().mean()) < 0.2


def test_a_budget_below_the_copies_cuts_near_boxes_and_same_seed_same_boxes():
    boxes = dense_boxes(GT, 120, 160, num_boxes=10, copies=20, jitter=0.1, rng=np.random.default_rng(2))
    assert boxes.shape == (10, 4)
    again = dense_boxes(GT, 120, 160, num_boxes=10, copies=20, jitter=0.1, rng=np.random.default_rng(2))
    assert np.array_equal(boxes, again)


def test_the_file_holds_every_image_and_the_cli_writes_it(tmp_path, capsys):
    data = SyntheticShapes("train", num_images=3, image_size=128)
    path = dense_proposals(data, tmp_path / "p.npz", num_boxes=300, copies=5, jitter=0.1, seed=3)
    file = ProposalFile(str(path))
    for i in range(3):
        got = file.proposals_for(data.image_name(i), 128, 128)
        want = dense_boxes(data.annotations(i)["boxes"].numpy(), 128, 128, 300, 5, 0.1, np.random.default_rng([3, i]))
        assert torch.equal(got, torch.from_numpy(want))
    out = tmp_path / "cli.npz"
    args = [
        "proposals",
        "--data",
        "synthetic",
        "--split",
        "test",
        "--method",
        "dense",
        "--max-boxes",
        "50",
        "--copies",
        "3",
        "--out",
        str(out),
        "--set",
        "data.num_test=2",
    ]
    assert main([*args, "--jitter", "0"]) == 0  # the copies are the objects' own boxes: all found, exactly
    objects = sum(len(SyntheticShapes("test", num_images=2, image_size=160).annotations(i)["boxes"]) for i in range(2))
    printed = capsys.readouterr().out
    assert "2 images, 50 boxes each" in printed
    recall = f"recall of the {objects} objects: 100.0% at IoU 0.5, 100.0% at 0.7"
    assert f"50 boxes per image (min 50, max 50); {recall}" in printed
    test = SyntheticShapes("test", num_images=2, image_size=160)
    assert ProposalFile(str(out)).proposals_for(test.image_name(1), 160, 160).shape == (50, 4)


def test_bad_settings_are_one_line_errors(tmp_path):
    data = SyntheticShapes("train", num_images=1, image_size=128)
    with pytest.raises(ValueError, match="^dense proposals: need num_boxes >= 1.*got 0, 20, 0.15$"):
        dense_proposals(data, tmp_path / "p.npz", num_boxes=0)
    assert not (tmp_path / "p.npz").exists()
