"""ohem-presample and the sampler protocol's optional ``presample`` step: the read-only pass sees the
presample only, OHEM's selection runs among it, and samplers without the step run as before it existed."""

import dataclasses

import pytest
import torch
from torchvision.ops import batched_nms

import ohem.mining.roi_heads as core
from ohem.events import EventStorage
from ohem.mining import SAMPLERS, PresampledOHEMSampler, enable_sampler, label_rois, readonly_pass
from ohem.mining.rois import weighted_roi_loss
from tests.test_roi_heads import heads_inputs, small_model


def presample_heads(k=4, factor=4, **settings):
    cfg = SAMPLERS["ohem-presample"](batch_size_per_image=k, factor=factor, **settings)
    return enable_sampler(small_model(), cfg).roi_heads.train()


def uneven_inputs():
    """heads_inputs with image 1 cut to 10 proposals (11 RoIs with its gt box); image 0 keeps 49 (+ 2 gt)."""
    features, proposals, shapes, targets = heads_inputs()
    return features, [proposals[0], proposals[1][:10]], shapes, targets


def spy_on_the_readonly_pass(monkeypatch):
    """The ``LabelledRoIs`` and losses of each read-only pass the head runs."""
    seen = []

    def spy(heads, features, rois, *args, **kwargs):
        seen.append((rois, readonly_pass(heads, features, rois, *args, **kwargs)))
        return seen[-1][1]

    monkeypatch.setattr(core, "readonly_pass", spy)
    return seen


def test_the_readonly_pass_sees_factor_x_batch_rows_per_image_or_all(monkeypatch):
    seen = spy_on_the_readonly_pass(monkeypatch)
    heads = presample_heads(k=4, factor=4)
    features, proposals, shapes, targets = uneven_inputs()
    everything = label_rois(heads, proposals, targets, 0.0)
    assert torch.bincount(everything.image_ids).tolist() == [51, 11]
    torch.manual_seed(0)
    with EventStorage(0) as storage:
        heads(features, proposals, shapes, targets)
    (rois, _), record = seen[0], storage.latest("roi_mining")
    assert len(seen) == 1 and torch.bincount(rois.image_ids).tolist() == [16, 11]
    # the presample is rows of all the RoIs: image 1's all of them, image 0's 16 distinct ones
    drawn, all_boxes = ({tuple(b) for b in r.boxes[r.image_ids == 0].tolist()} for r in (rois, everything))
    assert drawn <= all_boxes and len(drawn) == 16
    assert torch.equal(rois.boxes[rois.image_ids == 1], everything.boxes[everything.image_ids == 1])
    assert torch.bincount(record["image_ids"]).tolist() == [4, 4]
    # when no image has more than factor x batch RoIs the step is skipped (every RoI)
    assert presample_heads(k=4, factor=100).sampler.presample(everything) is None


def test_the_kept_rows_are_the_top_by_loss_among_the_presample_after_nms(monkeypatch):
    seen = spy_on_the_readonly_pass(monkeypatch)
    heads = presample_heads(k=5, factor=3, nms_iou=0.3)
    draws = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        with EventStorage(0) as storage:
            heads(*uneven_inputs())
        rois, losses = seen[-1]
        ranked = losses.cls + losses.box
        survivors = batched_nms(rois.boxes, ranked, rois.image_ids, 0.3)  # descending loss
        want = torch.cat([survivors[rois.image_ids[survivors] == i][:5] for i in range(2)])
        record = storage.latest("roi_mining")
        assert torch.equal(record["boxes"], rois.boxes[want]) and torch.equal(record["losses"], ranked[want])
        draws.append({tuple(b) for b in rois.boxes.tolist()})
    assert draws[0] != draws[1]  # a new presample each step


@pytest.mark.parametrize("method", ["heuristic", "ohem"])
def test_samplers_without_the_step_train_bit_for_bit_as_before_it(method):
    """The head against the step as it was written before ``presample`` existed (label, read-only pass,
    sample, pool again, loss): the same losses and gradients, bit for bit."""
    cfg = SAMPLERS[method](batch_size_per_image=16, bg_iou_low=0.1 if method == "heuristic" else 0.0)
    heads = enable_sampler(small_model(), cfg).roi_heads.train()
    features, proposals, shapes, targets = heads_inputs()
    runs = []
    for step in (head_step, step_before_presample):
        feats = {"0": features["0"].detach().clone().requires_grad_()}
        torch.manual_seed(5)  # the same dropout masks and random draws
        loss_cls, loss_box = step(heads, feats, proposals, shapes, targets)
        (loss_cls + loss_box).backward()
        runs.append((loss_cls, loss_box, feats["0"].grad))
        heads.zero_grad()
    assert all(torch.equal(a, b) for a, b in zip(*runs)) and runs[0][2].abs().sum() > 0


def head_step(heads, features, proposals, shapes, targets):
    with EventStorage(3):
        _, losses = heads(features, proposals, shapes, targets)
    return losses["loss_classifier"], losses["loss_box_reg"]


def step_before_presample(heads, features, proposals, shapes, targets):
    sampler = heads.sampler
    rois = label_rois(heads, proposals, targets, sampler.bg_iou_low)
    scores = None
    if sampler.readonly is not None:
        scores = readonly_pass(heads, features, rois, shapes, sampler.readonly, heads.box_loss_beta)
    rows = sampler.sample(rois, scores, 3).rows
    boxes, _, labels, box_targets = rois.per_image(rows)
    logits, deltas = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, boxes, shapes)))
    return weighted_roi_loss(logits, deltas, torch.cat(labels), torch.cat(box_targets), heads.box_loss_beta, None)


@pytest.mark.parametrize("dropout", [False, True])
def test_cpu_pooling_reuse_gives_the_same_step_on_the_presample(monkeypatch, dropout):
    features, proposals, shapes, targets = uneven_inputs()
    runs = []
    for reuse in (False, True):
        monkeypatch.setattr(core, "can_reuse_pooling", lambda heads, feats, reuse=reuse: reuse)
        heads = presample_heads(k=4, factor=2)
        heads.sampler = dataclasses.replace(heads.sampler, readonly_dropout=dropout)
        pooled_with_grad = []
        heads.box_roi_pool.register_forward_hook(lambda m, i, o, seen=pooled_with_grad: seen.append(o.requires_grad))
        feats = {"0": features["0"].detach().clone().requires_grad_()}
        torch.manual_seed(3)  # the same presample and dropout masks
        with EventStorage(0):
            _, losses = heads(feats, proposals, shapes, targets)
        (losses["loss_classifier"] + losses["loss_box_reg"]).backward()
        runs.append((losses, feats["0"].grad, pooled_with_grad.count(True)))
    (losses_a, grad_a, pooled_a), (losses_b, grad_b, pooled_b) = runs
    assert (pooled_a, pooled_b) == (1, 0)  # pooled again / the read-only pass's pooling of the presample reused
    assert all(torch.equal(losses_a[k], losses_b[k]) for k in losses_a) and torch.equal(grad_a, grad_b)


def test_settings_are_the_samplers_fields():
    sampler = SAMPLERS["ohem-presample"](factor=6, nms_iou=0.5, start=7)
    assert isinstance(sampler, PresampledOHEMSampler) and sampler.readonly is not None
    assert (sampler.factor, sampler.nms_iou, sampler.start, sampler.bg_iou_low) == (6, 0.5, 7, 0.0)
