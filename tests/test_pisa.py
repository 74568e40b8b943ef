"""The ``pisa`` sampler: IoU-HLR and score-HLR ranks on hand-made cases, ISR weights and their
normalisation, CARL's gradient, and the head's loss with it."""

import pytest
import torch
from pydantic import ValidationError

from ohem.events import EventStorage
from ohem.mining import SAMPLERS, PISASampler, enable_sampler, label_rois
from ohem.mining.samplers.pisa import carl_loss, hierarchical_rank, negative_weights, normalised, positive_weights
from tests.test_roi_heads import heads_inputs, small_model


def test_iou_hlr_ranks_and_weights_by_hand():
    # Class 1: gt A (image 0, gt 0) with positives at IoU 0.9, 0.85, 0.6; gt B (image 0, gt 1) with one at
    # 0.7. Class 2: gt C (image 1, gt 0) with one at 0.65. Rows shuffled.
    iou = torch.tensor([0.6, 0.7, 0.85, 0.65, 0.9])
    gts = torch.tensor([[0, 0], [0, 1], [0, 0], [1, 0], [0, 0]])
    labels = torch.tensor([1, 1, 1, 2, 1])
    # IoU local ranks: A 0.9 -> 0, 0.85 -> 1, 0.6 -> 2; B 0.7 -> 0; C 0.65 -> 0. Class 1 in HLR order:
    # the local firsts by IoU (0.9, 0.7), then the seconds (0.85), the thirds (0.6): B's 0.7 comes
    # before A's 0.85, unlike a plain IoU sort. Class 2: 0.65 first.
    ranks = hierarchical_rank(iou, torch.unique(gts, dim=0, return_inverse=True)[1], labels)
    assert ranks.tolist() == [3, 1, 2, 0, 0]
    # n_max = 4 (class 1's count); u = (4 - r) / 4 = 0.25, 0.75, 0.5, 1, 1; k = 2, bias 0: u ** 2
    weights = positive_weights(iou, gts, labels, 2.0, 0.0)
    assert torch.allclose(weights, torch.tensor([0.0625, 0.5625, 0.25, 1.0, 1.0]))
    # bias 0.5, k 1: (u + 1) / 2
    assert torch.allclose(positive_weights(iou, gts, labels, 1.0, 0.5), torch.tensor([0.625, 0.875, 0.75, 1, 1]))


def test_score_hlr_groups_negatives_by_nms_and_ranks_hierarchically():
    # Image 0: three boxes on one spot (scores 0.9, 0.5, 0.3) and two apart (0.6, 0.2); image 1: one box.
    spot, apart1, apart2 = [0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0], [100.0, 0.0, 110.0, 10.0]
    near = [0.0, 0.0, 10.0, 9.5]  # IoU 0.95 with spot
    boxes = torch.tensor([near, apart1, spot, apart2, near, spot])
    scores = torch.tensor([0.5, 0.6, 0.9, 0.2, 0.3, 0.4])
    image_ids = torch.tensor([0, 0, 0, 0, 0, 1])
    # Image 0's groups: {0.9, 0.5, 0.3}, {0.6}, {0.2}; HLR: 0.9, 0.6, 0.2 (the groups' firsts), 0.5, 0.3.
    weights = negative_weights(scores, boxes, image_ids, 0.5, 1.0, 0.0)
    # n = 5 in image 0: u = (5 - r) / 5; image 1 alone: u = 1
    assert torch.allclose(weights, torch.tensor([0.4, 0.8, 1.0, 0.6, 0.2, 1.0]))
    assert torch.allclose(negative_weights(scores, boxes, image_ids, 0.5, 0.5, 0.0), weights.sqrt())


def test_normalisation_keeps_the_count_or_the_loss_of_each_part():
    weights = torch.tensor([1.0, 0.25, 0.5, 1.0, 0.2, 0.6])
    cls_loss = torch.tensor([0.1, 2.0, 0.3, 1.0, 3.0, 0.5])
    pos = torch.tensor([True, True, True, False, False, False])
    by_count = normalised(weights, cls_loss, [pos, ~pos], "count")
    assert torch.allclose(by_count[pos].sum(), torch.tensor(3.0)) and torch.allclose(
        by_count[~pos].sum(), torch.tensor(3.0)
    )
    assert torch.allclose(by_count.sum(), torch.tensor(6.0))  # the sum of weights is the count
    assert torch.allclose(by_count[pos] / weights[pos], by_count[0] / weights[0])  # one factor per part
    by_loss = normalised(weights, cls_loss, [pos, ~pos], "loss")
    for part in (pos, ~pos):  # each part's weighted loss is its unweighted loss (the paper)
        assert torch.allclose((by_loss[part] * cls_loss[part]).sum(), cls_loss[part].sum())


def test_carl_gradient_reaches_the_classification_logits_of_positives_only():
    torch.manual_seed(0)
    logits = torch.randn(6, 4, requires_grad=True)
    labels = torch.tensor([1, 0, 2, 0, 3, 1])
    box_terms = torch.tensor([0.5, 0.0, 2.0, 0.0, 0.1, 1.0], requires_grad=True)
    loss = carl_loss(logits, box_terms, labels, 1.0, 0.2)
    # by hand: c = 0.2 + 0.8 s, normalised to mean 1 over the 4 positives
    pos = labels > 0
    s = logits.detach().softmax(1)[pos, labels[pos]]
    c = (0.2 + 0.8 * s) * 4 / (0.2 + 0.8 * s).sum()
    assert torch.allclose(loss, (c * box_terms.detach()[pos]).sum())
    loss.backward()
    assert (logits.grad[pos].abs().sum(1) > 0).all()
    assert (logits.grad[~pos] == 0).all()
    assert torch.allclose(box_terms.grad[pos], c) and (box_terms.grad[~pos] == 0).all()
    # no positives: 0, with a graph
    none = carl_loss(logits, box_terms, torch.zeros(6, dtype=torch.long), 1.0, 0.2)
    assert none.item() == 0 and none.requires_grad


def pisa_forward(**settings):
    model = small_model()
    cfg = SAMPLERS["pisa"](batch_size_per_image=32, **settings)
    heads = enable_sampler(model, cfg).roi_heads.train()
    features, proposals, shapes, targets = heads_inputs()
    with EventStorage(0):
        _, losses = heads(features, proposals, shapes, targets)
    return heads, losses, (features, proposals, shapes, targets)


def test_pisa_in_the_head_keeps_the_classification_loss_and_adds_carl():
    heads, losses, _ = pisa_forward()
    assert isinstance(heads.sampler, PISASampler) and heads.sampler.readonly is None  # no read-only pass
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_carl"}
    carl_only = torch.autograd.grad(losses["loss_carl"], heads.box_predictor.cls_score.weight, allow_unused=True)[0]
    assert carl_only is not None and carl_only.abs().sum() > 0  # CARL trains the classifier too
    # isr_normalise=loss: the weighted classification loss equals the unweighted one on the same rows
    # (small_model seeds torch, so both forwards draw the same features and the same random sample)
    _, plain, _ = pisa_forward(carl=False, isr_p_k=0.0, isr_n_k=0.0)  # k 0: every weight 1
    assert "loss_carl" not in plain
    assert torch.allclose(losses["loss_classifier"], plain["loss_classifier"], rtol=1e-5)
    assert torch.equal(losses["loss_box_reg"], plain["loss_box_reg"])


def test_pisa_weights_in_the_head_differ_from_one_and_sum_to_the_count(monkeypatch):
    seen, original = [], PISASampler.importance_weights

    def recording(self, trained, cls_loss):
        seen.append(original(self, trained, cls_loss))
        return seen[-1]

    monkeypatch.setattr(PISASampler, "importance_weights", recording)
    heads, _, (features, proposals, shapes, targets) = pisa_forward(isr_normalise="count")
    (weights,) = seen
    assert len(label_rois(heads, proposals, targets, 0.0).labels) > 64  # a sample of 2 x 32, not every RoI
    assert weights.numel() == 64 and torch.allclose(weights.sum(), torch.tensor(64.0))
    assert weights.std() > 0.1  # not all 1


def test_pisa_settings_are_checked_and_read():
    sampler = SAMPLERS["pisa"](carl=False, isr_p_k=1.5, isr_n_bias=0.1)
    assert not sampler.carl and (sampler.isr_p_k, sampler.isr_p_bias, sampler.isr_n_k, sampler.isr_n_bias) == (
        1.5,
        0.0,
        0.5,
        0.1,
    )
    assert sampler.bg_iou_low == 0.0 and sampler.readonly is None
    with pytest.raises(ValidationError, match="isr_normalise"):
        SAMPLERS["pisa"](isr_normalise="mean")
    with pytest.raises(ValidationError, match="carl_bias"):
        SAMPLERS["pisa"](carl_bias=1.5)
