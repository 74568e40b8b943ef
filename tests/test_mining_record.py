"""MiningRecorder: what mining.jsonl records, by hand; the steps are accumulated without host reads."""

import pytest
import torch

from ohem.mining.record import HARDEST_KEPT, MiningRecorder


def step(ids, losses, labels, iou, boxes, shapes):
    return {
        "image_ids": torch.tensor(ids),
        "losses": torch.tensor(losses),
        "labels": torch.tensor(labels),
        "iou": torch.tensor(iou),
        "boxes": torch.tensor(boxes, dtype=torch.float),
        "image_shapes": shapes,
    }


def test_two_steps_by_hand():
    rec = MiningRecorder(num_classes=3)
    first = step(
        [0, 0, 1],
        [0.5, 2.0, 1.25],
        [0, 2, 1],
        [0.05, 0.55, 1.0],
        [[0, 0, 10, 10], [10, 10, 20, 30], [5, 5, 15, 15]],
        [(100, 200), (50, 50)],
    )
    # original sizes (h, w): image 0 is 2x its resized frame both ways, image 1 2x in x only
    rec.add(10, first, [7, 3], [(200, 400), (50, 100)], torch.tensor(0.25))
    second = step([0, 1], [3.0, 0.25], [1, 0], [0.72, 0.0999], [[1, 2, 3, 4], [2, 2, 4, 4]], [(100, 100), (100, 100)])
    rec.add(11, second, [5, 9], [(100, 100), (200, 100)], torch.tensor(0.75))
    record = rec.flush(11)
    assert record == {
        "iteration": 11,
        "steps": 2,
        "num_mined": 5,
        "mined_fg_fraction": 3 / 5,
        "mined_loss_mean": (0.5 + 2.0 + 1.25 + 3.0 + 0.25) / 5,
        "all_roi_loss_mean": (0.25 + 0.75) / 2,
        "iou_hist": [2, 0, 0, 0, 0, 1, 0, 1, 0, 1],  # 0.05 and 0.0999 | 0.55 | 0.72 | 1.0 in the last bin
        "label_counts": [2, 2, 1, 0],
        "hardest": [
            {"iteration": 11, "image_index": 5, "box": [1.0, 2.0, 3.0, 4.0], "label": 1, "loss": 3.0, "iou": 0.72},
            {"iteration": 10, "image_index": 7, "box": [20.0, 20.0, 40.0, 60.0], "label": 2, "loss": 2.0, "iou": 0.55},
            {"iteration": 10, "image_index": 3, "box": [10.0, 5.0, 30.0, 15.0], "label": 1, "loss": 1.25, "iou": 1.0},
            {"iteration": 10, "image_index": 7, "box": [0.0, 0.0, 20.0, 20.0], "label": 0, "loss": 0.5, "iou": 0.05},
            {"iteration": 11, "image_index": 9, "box": [2.0, 4.0, 4.0, 8.0], "label": 0, "loss": 0.25, "iou": 0.0999},
        ],
    }
    # flush starts a new interval
    rec.add(12, second, [5, 9], [(100, 100), (200, 100)], 0.5)
    again = rec.flush(12)
    assert again["steps"] == 1 and again["num_mined"] == 2 and again["all_roi_loss_mean"] == 0.5
    assert again["label_counts"] == [1, 1, 0, 0] and [h["iteration"] for h in again["hardest"]] == [12, 12]


def test_hardest_keeps_the_highest_losses_over_steps_earlier_step_first_on_equal_rounded_loss():
    rec = MiningRecorder(num_classes=1)
    n = 6
    for it, base in enumerate([1.0, 3.0, 2.0]):
        losses = [base + 0.1 * i for i in range(n)]
        losses[0] = 9.000001 if it == 0 else 9.000002 if it == 2 else losses[0]  # equal at 5 decimals
        mined = step([0] * n, losses, [0] * n, [0.0] * n, [[0, 0, 1, 1]] * n, [(10, 10)])
        rec.add(it, mined, [it], [(10, 10)], 0.0)
    hardest = rec.flush(3)["hardest"]
    assert len(hardest) == HARDEST_KEPT
    assert [(h["iteration"], h["loss"]) for h in hardest] == [
        (0, 9.0),
        (2, 9.0),
        (1, 3.5),
        (1, 3.4),
        (1, 3.3),
        (1, 3.2),
        (1, 3.1),
        (1, 3.0),
    ]


def test_iou_histogram_equals_histc_at_the_bin_edges():
    edges = torch.linspace(0, 1, 11)
    iou = torch.cat([edges, edges + 1e-7, edges - 1e-7, torch.rand(500, generator=torch.Generator().manual_seed(0))])
    iou = iou.clamp(0, 1)
    rec = MiningRecorder(num_classes=1)
    n = iou.numel()
    rec.add(1, step([0] * n, [1.0] * n, [0] * n, iou.tolist(), [[0, 0, 1, 1]] * n, [(10, 10)]), [0], [(10, 10)], 0.0)
    assert rec.flush(1)["iou_hist"] == torch.histc(iou, bins=10, min=0, max=1).long().tolist()


def test_labels_above_num_classes_are_not_counted():
    rec = MiningRecorder(num_classes=2)
    mined = step([0, 0, 0], [1.0, 1.0, 1.0], [0, 2, 5], [0.1] * 3, [[0, 0, 1, 1]] * 3, [(10, 10)])
    rec.add(1, mined, [0], [(10, 10)], 0.0)
    assert rec.flush(1)["label_counts"] == [1, 0, 1]


def test_a_step_is_added_without_reading_a_value_on_the_host():
    # Meta tensors have no values: any .item(), .tolist() or copy to the CPU in add() would raise.
    rec = MiningRecorder(num_classes=3)
    mined = step([0, 1], [1.0, 2.0], [1, 0], [0.5, 0.1], [[0, 0, 1, 1], [0, 0, 2, 2]], [(10, 10), (10, 10)])
    meta = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in mined.items()}
    for it in range(3):
        rec.add(it, meta, [it, it + 1], [(20, 20), (20, 20)], torch.zeros((), device="meta"))
    assert rec.steps == 3 and rec.num_mined == 6
    with pytest.raises((RuntimeError, NotImplementedError)):
        rec.flush(3)
