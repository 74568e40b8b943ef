"""mmdetection's OHEM (ohem-stratified): the hardest by classification loss within a foreground quota, no NMS."""

import pytest
import torch

from ohem.mining import SAMPLERS, LabelledRoIs, PerRoILoss, StratifiedOHEMSampler, enable_sampler
from tests.test_roi_heads import heads_inputs, small_model, train_forward


def labelled(labels_per_image: list[list[int]]) -> LabelledRoIs:
    """RoIs with these labels, image after image; every RoI the same box (no NMS could tell them apart)."""
    labels = torch.tensor([label for image in labels_per_image for label in image])
    ids = torch.tensor([i for i, image in enumerate(labels_per_image) for _ in image])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(len(labels), 1)
    zeros = torch.zeros(len(labels), dtype=torch.long)
    return LabelledRoIs(boxes, ids, zeros, labels, torch.zeros(len(labels), 4), boxes.clone(), len(labels_per_image))


def losses_of(cls: list[float], box: list[float] | None = None) -> PerRoILoss:
    cls_t = torch.tensor(cls)
    box_t = torch.zeros_like(cls_t) if box is None else torch.tensor(box)
    return PerRoILoss(cls_t, box_t, torch.zeros_like(cls_t), None)


def test_the_hardest_by_classification_loss_within_each_quota():
    # 8 RoIs, quota int(8 x 0.25) = 2 foreground. Image 0: 4 fg (rows 0-3), 8 bg (rows 4-11).
    # Image 1: 1 fg (row 12), 9 bg (rows 13-21): background fills the foreground's shortfall (7 bg).
    # Image 2: 5 fg (rows 22-26), 3 bg (rows 27-29): background short, not filled with foreground (5 RoIs).
    rois = labelled([[1, 2, 1, 3] + [0] * 8, [2] + [0] * 9, [1] * 5 + [0] * 3])
    cls = [0.1, 0.9, 0.5, 0.7] + [0.3, 0.8, 0.2, 0.6, 0.6, 0.1, 0.05, 0.4]
    cls += [0.01] + [0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4, 0.5]
    cls += [0.2, 0.4, 0.6, 0.8, 0.1] + [0.3, 0.2, 0.1]
    box = [5.0] + [0.0] * 29  # a large box loss on row 0: ranking is by classification loss alone
    sampler = StratifiedOHEMSampler(batch_size_per_image=8, fg_fraction=0.25)
    rows = sampler.sample(rois, losses_of(cls, box), 0).rows.tolist()
    image0 = [1, 3] + [5, 7, 8, 11, 4, 6]  # fg by loss; bg by loss, the tie (0.6, rows 7 and 8) to the lower row
    image1 = [12] + [13, 15, 17, 19, 21, 20, 18]
    image2 = [25, 24] + [27, 28, 29]
    assert rows == image0 + image1 + image2


def test_it_needs_the_readonly_pass_and_has_its_settings():
    sampler = SAMPLERS["ohem-stratified"](batch_size_per_image=512, max_rois_per_chunk=99)
    assert isinstance(sampler, StratifiedOHEMSampler) and sampler.readonly.max_rois_per_chunk == 99
    assert (sampler.batch_size_per_image, sampler.fg_fraction, sampler.bg_iou_low) == (512, 0.25, 0.0)
    with pytest.raises(ValueError, match="needs the read-only pass's losses"):
        sampler.sample(labelled([[0, 1]]), None, 0)


def test_through_the_head_the_sample_keeps_the_quota_and_ranks_by_the_readonly_cls_loss():
    heads = enable_sampler(
        small_model(), SAMPLERS["ohem-stratified"](batch_size_per_image=12, readonly_dropout=False)
    ).roi_heads.train()
    losses, record, _ = train_forward(heads, *heads_inputs())
    assert torch.bincount(record["image_ids"]).tolist() == [12, 12]
    for image in range(2):
        labels = record["labels"][record["image_ids"] == image]
        assert 1 <= int((labels > 0).sum()) <= 3  # the gt box is always a foreground RoI; quota int(12 x 0.25)
    stats = heads.last_statistics
    assert stats["ohem_mined_fg_fraction"] <= 0.25 and stats["ohem_mined_loss"] > stats["ohem_all_roi_loss"]
