"""Libra R-CNN's IoU-balanced sampler: a hand-computed draw, the floor, and its properties on random RoIs."""

import pytest
import torch

from ohem.events import EventStorage
from ohem.mining import SAMPLERS, LabelledRoIs, LibraSampler, enable_sampler
from ohem.mining.rois import elementwise_iou
from ohem.mining.samplers.libra import even_shares
from tests.test_roi_heads import heads_inputs, small_model


def rois_at(images: list[list[tuple[int, float]]]) -> LabelledRoIs:
    """One RoI per ``(gt, iou)``: gt box ``g`` is the 100 x 100 square at x = 200 g; the RoI is its top
    ``iou`` x 100 rows (so its IoU with it is ``iou``), or a box far from every gt when ``iou`` is 0.
    Foreground (class 1) at IoU >= 0.5, as the head labels."""
    boxes, gts, image_ids, matched = [], [], [], []
    for image, rois in enumerate(images):
        for gt, iou in rois:
            x = 200.0 * gt
            gts.append([x, 0.0, x + 100, 100.0])
            boxes.append([x, 0.0, x + 100, 100 * iou] if iou > 0 else [x, 500.0, x + 10, 510.0])
            image_ids.append(image)
            matched.append(gt)
    boxes, gts = torch.tensor(boxes), torch.tensor(gts)
    labels = (elementwise_iou(boxes, gts) >= 0.5).long()
    ids = torch.tensor(image_ids)
    return LabelledRoIs(boxes, ids, torch.tensor(matched), labels, torch.zeros(len(boxes), 4), gts, len(images))


def libra(**changes) -> LibraSampler:
    settings = dict(batch_size_per_image=16, fg_fraction=0.25, bins=3, floor_thr=None, floor_fraction=0.0)
    return LibraSampler(**{**settings, **changes})


def test_even_shares_split_equally_and_give_a_short_groups_rest_to_the_others():
    assert even_shares([10, 10, 10], 7) == [3, 2, 2]  # the odd one to the first group
    assert even_shares([1, 10, 10], 7) == [1, 3, 3]
    assert even_shares([2, 3, 20], 12) == [2, 3, 7]
    assert even_shares([0, 5], 3) == [0, 3]
    assert even_shares([2, 2], 9) == [2, 2]  # fewer than asked: all


def test_a_hand_computed_draw():
    # Foreground (quota 16 x 0.25 = 4): gt 0 has 5 RoIs, gt 1 one; shares 2 + 2 -> gt 1 gives its one and gt 0
    # takes the rest: 3 + 1. Background (16 - 4 = 12) in bins of 1/6 over [0, 0.5): [0.4, 0.45] in the top bin,
    # [0.2, 0.25, 0.3] in the middle, 20 at IoU <= 0.1 in the bottom; shares 4 each -> 2 + 3 + 7.
    fg0 = [(0, iou) for iou in (0.6, 0.7, 0.8, 0.9, 1.0)]
    top, middle = [(0, 0.4), (0, 0.45)], [(0, 0.2), (0, 0.25), (0, 0.3)]
    bottom = [(0, 0.0)] * 10 + [(0, 0.05)] * 5 + [(0, 0.1)] * 5
    rois = rois_at([fg0 + [(1, 0.9)] + top + middle + bottom])
    rows_of = {"fg0": range(0, 5), "fg1": [5], "top": [6, 7], "middle": [8, 9, 10], "bottom": range(11, 31)}
    draws = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        rows = libra().sample(rois, None, None).rows.tolist()
        counts = {name: sum(r in rows for r in group) for name, group in rows_of.items()}
        assert counts == {"fg0": 3, "fg1": 1, "top": 2, "middle": 3, "bottom": 7}
        assert len(set(rows)) == len(rows) == 16 and rows == sorted(rows)
        draws.append(rows)
    assert draws[0] != draws[1]  # which 3 of gt 0's and 7 of the bottom bin's is random


def test_the_floor_share_is_drawn_from_below_floor_thr_and_each_side_fills_the_other():
    # floor_thr 0.1: bins of 0.4 / 3 over [0.1, 0.5) with 3 RoIs each (rows 1-3, 4-6, 7-9), 20 RoIs below (rows
    # 10-29). 13 RoIs, foreground quota 3 but 1 there: 12 background, int(12 x 0.5) = 6 binned (2 a bin), 6 floor.
    binned = [(0, iou) for iou in (0.15, 0.16, 0.17, 0.3, 0.31, 0.32, 0.4, 0.41, 0.42)]
    rois = rois_at([[(0, 1.0)] + binned + [(0, 0.0)] * 20])
    torch.manual_seed(0)
    rows = libra(batch_size_per_image=13, floor_thr=0.1, floor_fraction=0.5).sample(rois, None, None).rows.tolist()
    assert [sum(r in rows for r in range(1 + 3 * b, 4 + 3 * b)) for b in range(3)] == [2, 2, 2]
    assert 0 in rows and sum(r >= 10 for r in rows) == 6 and len(rows) == 13
    # Only 2 below the floor: 8 background, 4 binned (2 to the top bin), the floor's 2, and 2 more from the bins.
    rois = rois_at([[(0, 1.0)] + binned + [(0, 0.0)] * 2])
    rows = libra(batch_size_per_image=9, floor_thr=0.1, floor_fraction=0.5).sample(rois, None, None).rows.tolist()
    assert {10, 11} <= set(rows) and len(rows) == 9 and {7, 8, 9} & set(rows)
    # floor_thr 0 is IoU exactly 0 (mmdetection's meaning): with floor_fraction 0 it is only drawn to fill.
    rois = rois_at([[(0, 1.0)] + binned + [(0, 0.0)] * 20])
    rows = libra(batch_size_per_image=13, floor_thr=0.0).sample(rois, None, None).rows.tolist()
    assert set(range(10)) <= set(rows) and sum(r >= 10 for r in rows) == 3


def random_rois(seed: int, num_images: int = 2) -> LabelledRoIs:
    """Per image up to 3 gt boxes with 0-30 foreground RoIs each, and 0-300 background RoIs of skewed IoU
    (most near 0, as proposals are)."""
    g = torch.Generator().manual_seed(seed)
    images = []
    for _ in range(num_images):
        fg = [
            (gt, 0.5 + 0.5 * float(torch.rand(1, generator=g)))
            for gt in range(3)
            for _ in range(int(torch.randint(0, 30, (1,), generator=g)))
        ]
        bg = [
            (int(torch.randint(0, 3, (1,), generator=g)), 0.49 * float(torch.rand(1, generator=g)) ** 3)
            for _ in range(int(torch.randint(0, 300, (1,), generator=g)))
        ]
        images.append(fg + bg)
    return rois_at(images)


def balanced(drawn: torch.Tensor, available: torch.Tensor) -> bool:
    """Counts per group drawn vs available: groups that gave less than all they have differ by 1 at most,
    and a group that gave all it has gave no more than any of those."""
    full = drawn == available
    rest = drawn[~full]
    return rest.numel() == 0 or (
        rest.max() - rest.min() <= 1 and (drawn[full].numel() == 0 or drawn[full].max() <= rest.min())
    )


def test_properties_on_random_rois():
    balanced_draws = {"instances": 0, "bins": 0}  # draws where balance had something to decide
    for seed in range(8):
        rois = random_rois(seed)
        torch.manual_seed(seed)
        rows = libra(batch_size_per_image=64).sample(rois, None, None).rows
        assert rows.unique().numel() == rows.numel()
        bin_of = (elementwise_iou(rois.boxes, rois.matched_gt) / (0.5 / 3)).floor().long().clamp(0, 2)
        for image in range(2):
            mine = torch.nonzero(rois.image_ids == image).squeeze(1)
            drawn = rows[rois.image_ids[rows] == image]
            fg, drawn_fg = mine[rois.labels[mine] > 0], drawn[rois.labels[drawn] > 0]
            bg, drawn_bg = mine[rois.labels[mine] == 0], drawn[rois.labels[drawn] == 0]
            assert drawn_fg.numel() == min(fg.numel(), 16)  # the foreground cap
            assert drawn.numel() == min(drawn_fg.numel() + bg.numel(), 64)  # background fills the rest
            gt_counts = [torch.bincount(rois.matched_idxs[r], minlength=3) for r in (drawn_fg, fg)]
            assert balanced(*gt_counts)
            assert balanced(*[torch.bincount(bin_of[r], minlength=3) for r in (drawn_bg, bg)])
            balanced_draws["instances"] += drawn_fg.numel() < fg.numel()
            balanced_draws["bins"] += drawn_bg.numel() < bg.numel()
    assert min(balanced_draws.values()) >= 4


def test_it_plugs_into_the_head_without_a_readonly_pass():
    heads = enable_sampler(small_model(), SAMPLERS["libra"](batch_size_per_image=16)).roi_heads.train()
    assert isinstance(heads.sampler, LibraSampler) and heads.sampler.readonly is None
    calls = []
    heads.box_head.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with EventStorage(0) as storage:
        _, losses = heads(*heads_inputs())
    assert calls == [32] and torch.isfinite(losses["loss_classifier"])  # the trainable pass alone, 16 per image
    assert "roi_mining" not in storage.records and heads.last_statistics == {} and storage.statistics == []


def test_settings_are_the_samplers_fields_and_a_floor_at_the_ceiling_is_a_one_line_error():
    sampler = SAMPLERS["libra"](bins=4, floor_thr=0.05, floor_fraction=0.2)
    assert (sampler.bins, sampler.floor_thr, sampler.floor_fraction, sampler.bg_iou_low) == (4, 0.05, 0.2, 0.0)
    with pytest.raises(ValueError, match=r"sampler.floor_thr must be below 0.5 .*, got 0.5"):
        SAMPLERS["libra"](floor_thr=0.5)
