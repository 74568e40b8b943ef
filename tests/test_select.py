"""select_hard_examples equals batched_nms followed by a per-image top-k (ties: lower index first)."""

import pytest
import torch
from torchvision.ops import batched_nms

from ohem.mining import select_hard_examples
from ohem.mining.select import select_by_batched_nms


def reference(losses, boxes, image_ids, k, nms_iou, labels=None):
    """batched_nms over (image, label) groups, then per image the k highest losses, ties by index."""
    if nms_iou is None:
        survivors = torch.arange(losses.numel())
    else:
        groups = image_ids * 1000 + (labels if labels is not None else 0)
        survivors = batched_nms(boxes, losses, groups, nms_iou)
    out = []
    for image in torch.unique(image_ids):
        mine = survivors[image_ids[survivors] == image].tolist()
        mine.sort(key=lambda i: (-losses[i].item(), i))
        out.extend(mine[:k])
    return torch.tensor(out, dtype=torch.long)


def random_rois(generator, num, num_images, tie_levels=None, num_labels=3):
    xy = torch.rand(num, 2, generator=generator) * 100
    wh = torch.rand(num, 2, generator=generator) * 40 + 1
    boxes = torch.cat([xy, xy + wh], dim=1)
    # Cluster boxes around a few centres so that NMS has real overlaps to resolve.
    jitter = boxes[torch.randint(0, max(num // 8, 1), (num,), generator=generator)]
    boxes = torch.where(
        torch.rand(num, 1, generator=generator) < 0.6, jitter + torch.rand(num, 4, generator=generator) * 3, boxes
    )
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 0.5)
    if tie_levels:
        losses = torch.randint(0, tie_levels, (num,), generator=generator).float()
    else:
        losses = torch.rand(num, generator=generator)
    image_ids = torch.randint(0, num_images, (num,), generator=generator)
    labels = torch.randint(0, num_labels, (num,), generator=generator)
    return losses, boxes, image_ids, labels


@pytest.mark.parametrize("seed", range(40))
def test_matches_batched_nms_topk(seed):
    g = torch.Generator().manual_seed(seed)
    num = int(torch.randint(1, 1500, (1,), generator=g))
    losses, boxes, image_ids, labels = random_rois(g, num, num_images=1 + seed % 4, tie_levels=[None, 3, 20][seed % 3])
    k = [1, 7, 64, 300][seed % 4]
    nms_iou = [0.7, 0.3, 0.5, None][(seed // 4) % 4]
    use_labels = labels if seed % 2 else None
    got = select_hard_examples(losses, boxes, image_ids, k, nms_iou=nms_iou, labels=use_labels)
    want = reference(losses, boxes, image_ids, k, nms_iou, use_labels)
    assert torch.equal(got, want)
    # the device path (what CUDA runs) selects the same RoIs in the same order
    assert torch.equal(select_by_batched_nms(losses, boxes, image_ids, k, nms_iou, use_labels), want)
    counts = torch.bincount(image_ids[got], minlength=4)
    assert counts.max() <= k


def test_ties_broken_by_lower_index_and_order_is_descending_loss():
    boxes = torch.tensor([[0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 10.5], [80, 80, 90, 90]], dtype=torch.float)
    losses = torch.tensor([1.0, 2.0, 2.0, 1.0])
    image_ids = torch.zeros(4, dtype=torch.long)
    # Box 2 (loss 2, lower index than none of equal loss after 1) is kept, and it suppresses box 0.
    assert select_hard_examples(losses, boxes, image_ids, 3, nms_iou=0.7).tolist() == [1, 2, 3]
    # Without NMS the tie between 0 and 3 goes to the lower index.
    assert select_hard_examples(losses, boxes, image_ids, 3, nms_iou=None).tolist() == [1, 2, 0]


def test_labels_restrict_nms_to_same_label():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], dtype=torch.float)
    losses = torch.tensor([3.0, 2.0, 1.0])
    image_ids = torch.zeros(3, dtype=torch.long)
    assert select_hard_examples(losses, boxes, image_ids, 3, nms_iou=0.7).tolist() == [0]
    labels = torch.tensor([0, 1, 0])
    assert select_hard_examples(losses, boxes, image_ids, 3, nms_iou=0.7, labels=labels).tolist() == [0, 1]


def test_threshold_is_strictly_above():
    # IoU of these two boxes is exactly 0.5: kept at nms_iou=0.5, suppressed below it.
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 5]], dtype=torch.float)
    losses = torch.tensor([2.0, 1.0])
    image_ids = torch.zeros(2, dtype=torch.long)
    assert select_hard_examples(losses, boxes, image_ids, 2, nms_iou=0.5).tolist() == [0, 1]
    assert select_hard_examples(losses, boxes, image_ids, 2, nms_iou=0.49).tolist() == [0]


def test_images_in_ascending_id_order_and_empty_input():
    boxes = torch.tensor([[0, 0, 1, 1], [5, 5, 6, 6], [9, 9, 10, 10]], dtype=torch.float)
    got = select_hard_examples(torch.tensor([1.0, 5.0, 3.0]), boxes, torch.tensor([7, 2, 7]), 1, nms_iou=0.7)
    assert got.tolist() == [1, 2]
    empty = select_hard_examples(torch.zeros(0), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 5, nms_iou=0.7)
    assert empty.dtype == torch.long and empty.numel() == 0


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="boxes"):
        select_hard_examples(torch.zeros(3), torch.zeros(3, 5), torch.zeros(3, dtype=torch.long), 1, nms_iou=0.7)


def test_device_path_on_empty_input_and_zero_k():
    empty = select_by_batched_nms(torch.zeros(0), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 5, 0.7)
    assert empty.dtype == torch.long and empty.numel() == 0
    boxes = torch.tensor([[0, 0, 1, 1], [5, 5, 6, 6]], dtype=torch.float)
    assert select_by_batched_nms(torch.tensor([1.0, 2.0]), boxes, torch.tensor([0, 0]), 0, 0.7).numel() == 0


@pytest.mark.parametrize("use_labels", [False, True])
def test_device_path_grows_its_prefix_when_the_hardest_rois_overlap(use_labels):
    # The 1500 highest-loss RoIs of image 0 are near-copies of one box: the first prefixes keep one or
    # a few of them, so the device path must grow its prefix to reach the walk's selection.
    g = torch.Generator().manual_seed(0)
    losses, boxes, image_ids, labels = random_rois(g, 3000, num_images=2, tie_levels=None, num_labels=2)
    image_ids[:2000] = 0
    image_ids[2000:] = 1
    boxes[:1500] = torch.tensor([10.0, 10.0, 50.0, 50.0]) + torch.rand(1500, 4, generator=g) * 0.5
    losses[:1500] += 10
    use = labels if use_labels else None
    want = reference(losses, boxes, image_ids, 64, 0.7, use)
    assert torch.equal(select_hard_examples(losses, boxes, image_ids, 64, nms_iou=0.7, labels=use), want)
    assert torch.equal(select_by_batched_nms(losses, boxes, image_ids, 64, 0.7, use), want)
    assert torch.bincount(image_ids[want]).tolist() == [64, 64]


def test_device_path_with_ties_across_the_prefix_boundary_and_per_label_nms():
    # 600 RoIs of one loss: the tie straddles the first prefix (4 x 100); lower index goes first either way.
    g = torch.Generator().manual_seed(1)
    losses, boxes, image_ids, labels = random_rois(g, 600, num_images=1, tie_levels=1, num_labels=3)
    for use in (None, labels):
        want = reference(losses, boxes, image_ids, 100, 0.5, use)
        assert torch.equal(select_hard_examples(losses, boxes, image_ids, 100, nms_iou=0.5, labels=use), want)
        assert torch.equal(select_by_batched_nms(losses, boxes, image_ids, 100, 0.5, use), want)
