"""hard-half: per image the hardest RoIs by read-only loss for a share of the batch, a random draw from the
others for the rest."""

import pytest
import torch

from ohem.config import ConfigError, load_config
from ohem.mining import SAMPLERS, enable_sampler
from tests.test_roi_heads import heads_inputs, small_model, train_forward
from tests.test_stratified import labelled, losses_of


def test_the_hard_share_is_the_top_by_loss_and_the_rest_a_draw_from_the_others():
    # Image 0: 10 RoIs, image 1: 3 RoIs (fewer than the batch: all of them). Batch 6, half hard: 3 + 3.
    rois = labelled([[0, 1, 0, 0, 2, 0, 0, 0, 1, 0], [0, 0, 1]])
    cls = [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.05, 0.4, 0.6, 0.0] + [0.5, 0.2, 0.9]
    box = [0.0] * 13
    box[9] = 5.0  # cls+box: row 9 is the hardest of image 0
    sampler = SAMPLERS["hard-half"](batch_size_per_image=6)
    for seed in range(5):
        torch.manual_seed(seed)
        rows = sampler.sample(rois, losses_of(cls, box), 0).rows.tolist()
        assert rows[:3] == [9, 1, 3]  # the hardest three of image 0, hardest first
        assert len(set(rows[3:6])) == 3 and set(rows[3:6]) <= {0, 2, 4, 5, 6, 7, 8}  # three of the others
        assert sorted(rows[6:]) == [10, 11, 12]  # image 1 has fewer RoIs than the batch: all of them
    by_cls = SAMPLERS["hard-half"](batch_size_per_image=6, mining_loss="cls").sample(rois, losses_of(cls, box), 0)
    assert by_cls.rows.tolist()[:3] == [1, 3, 5]


def test_hard_fraction_one_is_the_top_k_and_zero_a_random_sample():
    rois = labelled([[0, 1, 0, 0, 2, 0]])
    cls = [0.1, 0.9, 0.2, 0.8, 0.3, 0.7]
    assert SAMPLERS["hard-half"](batch_size_per_image=3, hard_fraction=1.0).sample(
        rois, losses_of(cls), 0
    ).rows.tolist() == [1, 3, 5]
    torch.manual_seed(0)
    first = SAMPLERS["hard-half"](batch_size_per_image=3, hard_fraction=0.0).sample(rois, losses_of(cls), 0).rows
    torch.manual_seed(0)
    again = SAMPLERS["hard-half"](batch_size_per_image=3, hard_fraction=0.0).sample(rois, losses_of(cls), 0).rows
    assert first.tolist() == again.tolist() and len(set(first.tolist())) == 3  # torch's generator: repeatable


def test_it_is_a_config_method_with_its_own_checked_key():
    cfg = load_config(None, ["sampler.method=hard-half", "sampler.hard_fraction=0.25"])
    assert cfg.sampler.hard_fraction == 0.25 and cfg.sampler.readonly is not None
    with pytest.raises(ConfigError, match=r"sampler\.hard_fraction must be a finite number in \[0, 1\], got 2$"):
        load_config(None, ["sampler.method=hard-half", "sampler.hard_fraction=2"])


def test_through_the_head_half_the_batch_is_harder_than_the_rest():
    heads = enable_sampler(
        small_model(), SAMPLERS["hard-half"](batch_size_per_image=12, readonly_dropout=False)
    ).roi_heads.train()
    _, record, _ = train_forward(heads, *heads_inputs())
    assert torch.bincount(record["image_ids"]).tolist() == [12, 12]
    stats = heads.last_statistics
    assert stats["ohem_mined_loss"] > stats["ohem_all_roi_loss"]  # the hard half lifts the mined loss
