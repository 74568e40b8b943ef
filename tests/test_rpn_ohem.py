"""OHEMRegionProposalNetwork: anchor labels, selection, loss, where gradients go, drop-in use."""

import copy
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers
from torchvision.ops import batched_nms, box_iou

from ohem.data.synthetic import SyntheticShapes
from ohem.events import EventStorage
from ohem.mining import OHEMRegionProposalNetwork, enable_ohem, enable_rpn_ohem, per_anchor_loss
from ohem.models import small_faster_rcnn


def small_model():
    torch.manual_seed(0)
    return small_faster_rcnn(
        num_classes=5,
        min_size=128,
        max_size=128,
        rpn_pre_nms_top_n_train=300,
        rpn_post_nms_top_n_train=100,
        rpn_pre_nms_top_n_test=200,
        rpn_post_nms_top_n_test=50,
    )


def batch(n=2):
    ds = SyntheticShapes("train", num_images=n, image_size=128)
    images, targets = zip(*[ds[i] for i in range(n)])
    return list(images), list(targets)


def rpn_inputs(model, n=2):
    """What the detector hands its RPN: the transformed images, backbone features, targets."""
    images, targets = batch(n)
    with torch.no_grad():
        image_list, targets = model.transform(images, targets)
        features = OrderedDict([("0", model.backbone(image_list.tensors))])
    return image_list, features, targets


class RandomHead(nn.Module):
    """Random head outputs (distinct losses, no ties) as leaves, so their gradients can be read."""

    def __init__(self, head):
        super().__init__()
        self.head = head
        self.outputs = None

    def forward(self, x):
        logits, deltas = self.head(x)
        logits = [torch.randn_like(t).requires_grad_() for t in logits]
        deltas = [torch.randn_like(t).mul_(0.5).requires_grad_() for t in deltas]
        self.outputs = (logits, deltas)
        return logits, deltas


def reference_labels(anchors, gt_boxes, fg=0.7, bg=0.3):
    """Matcher semantics by hand: fg >= 0.7, bg < 0.3, in between ignored, plus each gt's best anchors."""
    iou = box_iou(gt_boxes, anchors)
    best, matched = iou.max(dim=0)
    labels = torch.full((anchors.shape[0],), -1.0)
    labels[best >= fg] = 1.0
    labels[best < bg] = 0.0
    low_quality = (iou == iou.max(dim=1, keepdim=True).values).any(dim=0)
    labels[low_quality] = 1.0
    return labels, matched


def reference_selection(objectness, deltas, labels, targets, anchors, k, nms_iou):
    """Per-anchor loss with torch.nn.functional, batched_nms among non-ignored anchors, top k per image."""
    cls = F.binary_cross_entropy_with_logits(objectness, labels.clamp(min=0), reduction="none")
    box = F.smooth_l1_loss(deltas, targets, beta=1 / 9, reduction="none").sum(dim=1)
    loss = cls + box * (labels > 0)
    image_ids = torch.cat([torch.full((a.shape[0],), i) for i, a in enumerate(anchors)])
    valid = torch.nonzero(labels >= 0).squeeze(1)
    boxes = torch.cat(anchors)
    if nms_iou is None:
        kept = valid[torch.sort(loss[valid], descending=True, stable=True).indices]
    else:
        kept = valid[batched_nms(boxes[valid], loss[valid], image_ids[valid], nms_iou)]  # descending loss
    return torch.cat([kept[image_ids[kept] == i][:k] for i in range(len(anchors))])


def mine(rpn, *inputs):
    """A training forward inside an EventStorage: (boxes, losses, the ``rpn_mining`` record)."""
    with EventStorage() as storage:
        boxes, losses = rpn(*inputs)
    return boxes, losses, storage.latest("rpn_mining")


def ohem_rpn(model, **kwargs):
    enable_rpn_ohem(model, **kwargs)
    model.rpn.head = RandomHead(model.rpn.head)
    return model.rpn.train()


def labels_and_targets(rpn, image_list, features, targets):
    anchors = rpn.anchor_generator(image_list, list(features.values()))
    labels, matched_gt = rpn.assign_targets_to_anchors(anchors, targets)
    return anchors, torch.cat(labels), torch.cat(rpn.box_coder.encode(matched_gt, anchors))


def flat_head_outputs(outputs):
    objectness, deltas = concat_box_prediction_layers(*outputs)
    return objectness.flatten(), deltas


def test_labels_follow_matcher_semantics():
    model = small_model()
    image_list, features, targets = rpn_inputs(model)
    rpn = ohem_rpn(model)
    _, _, mined = mine(rpn, image_list, features, targets)
    anchors = rpn.anchor_generator(image_list, list(features.values()))
    want = torch.cat([reference_labels(a, t["boxes"])[0] for a, t in zip(anchors, targets)])
    got = mined["labels"]
    assert torch.equal(got, want)
    assert (got == 1).any() and (got == 0).any() and (got == -1).any()


def test_selection_equals_reference_on_random_inputs():
    model = small_model()
    image_list, features, targets = rpn_inputs(model)
    for k, nms_iou in [(256, 0.7), (32, 0.5), (40, None)]:
        rpn = ohem_rpn(small_model(), batch_size_per_image=k, nms_iou=nms_iou)
        _, _, mined = mine(rpn, image_list, features, targets)
        anchors, labels, reg_targets = labels_and_targets(rpn, image_list, features, targets)
        objectness, deltas = flat_head_outputs(rpn.head.outputs)
        want = reference_selection(objectness.detach(), deltas.detach(), labels, reg_targets, anchors, k, nms_iou)
        got = mined["selected"]
        assert torch.equal(got, want), (k, nms_iou)
        assert got.numel() == k * len(anchors)  # thousands of anchors: every image fills its quota
        # The public pieces agree with the forward too.
        losses = per_anchor_loss(objectness, deltas, labels, reg_targets)
        candidates = torch.nonzero(labels >= 0).squeeze(1)  # the non-ignored anchors
        assert torch.equal(rpn.select_anchors(losses, candidates, anchors), want)


def test_loss_is_torchvision_formula_on_selected_anchors():
    model = small_model()
    image_list, features, targets = rpn_inputs(model)
    rpn = ohem_rpn(model, batch_size_per_image=64)
    _, losses, mined = mine(rpn, image_list, features, targets)
    _, labels, reg_targets = labels_and_targets(rpn, image_list, features, targets)
    objectness, deltas = flat_head_outputs(rpn.head.outputs)
    sel = mined["selected"]
    x, y = objectness.detach()[sel], labels[sel]
    bce = -(y * torch.log(torch.sigmoid(x)) + (1 - y) * torch.log(1 - torch.sigmoid(x)))
    pos = sel[labels[sel] > 0]
    d = (deltas.detach()[pos] - reg_targets[pos]).abs()
    beta = 1 / 9
    smooth_l1 = torch.where(d < beta, 0.5 * d**2 / beta, d - 0.5 * beta)
    assert pos.numel() > 0
    torch.testing.assert_close(losses["loss_objectness"], bce.mean())
    torch.testing.assert_close(losses["loss_rpn_box_reg"], smooth_l1.sum() / sel.numel())
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg"}  # losses only
    stats = rpn.last_statistics
    assert set(stats) == {"rpn_ohem_fg_fraction", "rpn_ohem_all_loss"}
    torch.testing.assert_close(stats["rpn_ohem_fg_fraction"], (labels[sel] > 0).float().mean())
    valid = labels >= 0
    all_bce = F.binary_cross_entropy_with_logits(objectness.detach(), labels.clamp(min=0), reduction="none")
    all_box = F.smooth_l1_loss(deltas.detach(), reg_targets, beta=beta, reduction="none").sum(1) * (labels > 0)
    torch.testing.assert_close(stats["rpn_ohem_all_loss"], (all_bce + all_box)[valid].mean())
    # The ranking loss of the selected anchors averages to the trained loss.
    torch.testing.assert_close(mined["losses"][sel].mean(), losses["loss_objectness"] + losses["loss_rpn_box_reg"])


def test_gradients_reach_only_selected_anchors():
    model = small_model()
    image_list, features, targets = rpn_inputs(model)
    rpn = ohem_rpn(model, batch_size_per_image=48)
    _, losses, mined = mine(rpn, image_list, features, targets)
    (losses["loss_objectness"] + losses["loss_rpn_box_reg"]).backward()
    logits, deltas = rpn.head.outputs
    obj_grad, box_grad = flat_head_outputs(([t.grad for t in logits], [t.grad for t in deltas]))
    sel = mined["selected"]
    pos = sel[mined["labels"][sel] > 0]
    assert 0 < pos.numel() < sel.numel()
    assert torch.equal(torch.nonzero(obj_grad).squeeze(1), sel.sort().values)
    assert torch.equal(torch.nonzero(box_grad.abs().sum(1)).squeeze(1), pos.sort().values)


def test_ranking_pass_builds_no_graph(monkeypatch):
    model = small_model()
    image_list, features, targets = rpn_inputs(model)
    rpn = ohem_rpn(model, batch_size_per_image=32)
    calls = []
    for name in ("binary_cross_entropy_with_logits", "smooth_l1_loss"):
        original = getattr(F, name)

        def recording(*args, _original=original, _name=name, **kwargs):
            out = _original(*args, **kwargs)
            calls.append((_name, args[0].shape[0], out.requires_grad))
            return out

        monkeypatch.setattr(F, name, recording)
    _, losses, mined = mine(rpn, image_list, features, targets)
    assert all(v.requires_grad for k, v in losses.items() if k.startswith("loss_"))
    assert not any(v.requires_grad for k, v in losses.items() if k.startswith("rpn_ohem_"))
    mined_losses = mined["losses"]
    assert not mined_losses.requires_grad and mined_losses.grad_fn is None
    num_anchors = mined_losses.numel()
    sel = mined["selected"]
    num_pos = int((mined["labels"][sel] > 0).sum())
    # Over all anchors: no graph. With a graph: exactly the selected (positives for the box term).
    assert sorted(c for c in calls if c[1] == num_anchors) == [
        ("binary_cross_entropy_with_logits", num_anchors, False),
        ("smooth_l1_loss", num_anchors, False),
    ]
    assert sorted(c for c in calls if c[2]) == [
        ("binary_cross_entropy_with_logits", sel.numel(), True),
        ("smooth_l1_loss", num_pos, True),
    ]


def test_enable_keeps_weights_and_settings_and_eval_outputs():
    model = small_model().eval()
    image_list, features, targets = rpn_inputs(model)
    old = model.rpn
    reference = copy.deepcopy(model)
    before = copy.deepcopy(model.state_dict())
    assert enable_rpn_ohem(model, batch_size_per_image=128, nms_iou=0.6) is model
    rpn = model.rpn
    assert isinstance(rpn, OHEMRegionProposalNetwork) and isinstance(rpn, RegionProposalNetwork)
    assert rpn.head is old.head and rpn.anchor_generator is old.anchor_generator
    assert rpn.proposal_matcher is old.proposal_matcher and rpn.box_coder is old.box_coder
    assert rpn._pre_nms_top_n == old._pre_nms_top_n and rpn._post_nms_top_n == old._post_nms_top_n
    assert (rpn.nms_thresh, rpn.score_thresh, rpn.min_size) == (old.nms_thresh, old.score_thresh, old.min_size)
    assert rpn.num_per_image == 128 and rpn.nms_iou == 0.6 and not rpn.training
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert OHEMRegionProposalNetwork.from_rpn(old, nms_iou=0.7).num_per_image == old.fg_bg_sampler.batch_size_per_image

    with torch.no_grad():
        want_boxes, want_losses = reference.rpn(image_list, features)
        got_boxes, got_losses = rpn(image_list, features)
        assert want_losses == got_losses == {}
        assert all(torch.equal(w, g) for w, g in zip(want_boxes, got_boxes))
        images, _ = batch(2)
        want, got = reference(images), model(images)
    assert all(torch.equal(w[k], g[k]) for w, g in zip(want, got) for k in w)
    # Training-time proposals (what the RoI heads get) are unchanged too.
    reference.train(), model.train()
    with torch.no_grad():
        want_boxes, _ = reference.rpn(image_list, features, targets)
        got_boxes, _ = model.rpn(image_list, features, targets)
    assert all(torch.equal(w, g) for w, g in zip(want_boxes, got_boxes))


def test_trains_with_roi_ohem_too():
    model = enable_ohem(enable_rpn_ohem(small_model()), batch_size_per_image=16).train()
    images, targets = batch(2)
    head_before = model.rpn.head.cls_logits.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(2):
        losses = model(images, targets)
        assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
        assert set(model.rpn.last_statistics) == {"rpn_ohem_fg_fraction", "rpn_ohem_all_loss"}
        assert "ohem_all_roi_loss" in model.roi_heads.last_statistics
        assert all(torch.isfinite(v).all() for v in losses.values())
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not torch.equal(head_before, model.rpn.head.cls_logits.weight)
    assert 0 < model.rpn.last_statistics["rpn_ohem_fg_fraction"] < 1


def test_quota_above_candidates_uses_all_non_ignored():
    model = small_model()
    image_list, features, targets = rpn_inputs(model)
    rpn = ohem_rpn(model, batch_size_per_image=10**6, nms_iou=None)
    _, losses, mined = mine(rpn, image_list, features, targets)
    labels = mined["labels"]
    sel = mined["selected"]
    assert torch.equal(sel.sort().values, torch.nonzero(labels >= 0).squeeze(1))
    objectness, _ = flat_head_outputs(rpn.head.outputs)
    valid = labels >= 0
    want = F.binary_cross_entropy_with_logits(objectness.detach()[valid], labels[valid])
    torch.testing.assert_close(losses["loss_objectness"], want)
    # With NMS: every survivor of NMS over the non-ignored anchors, nothing more.
    rpn.nms_iou = 0.7
    _, _, mined = mine(rpn, image_list, features, targets)
    anchors, labels, reg_targets = labels_and_targets(rpn, image_list, features, targets)
    objectness, deltas = flat_head_outputs(rpn.head.outputs)
    want = reference_selection(objectness.detach(), deltas.detach(), labels, reg_targets, anchors, 10**6, 0.7)
    assert torch.equal(mined["selected"], want)
    assert want.numel() < int(valid.sum())


def test_zero_quota_gives_zero_loss():
    model = small_model()
    image_list, features, targets = rpn_inputs(model)
    rpn = ohem_rpn(model, batch_size_per_image=0)
    _, losses, mined = mine(rpn, image_list, features, targets)
    assert losses["loss_objectness"] == 0 and losses["loss_rpn_box_reg"] == 0
    (losses["loss_objectness"] + losses["loss_rpn_box_reg"]).backward()


def test_mining_time_is_measured_and_the_all_anchor_loss_is_the_mean_over_non_ignored():
    model = small_model()
    image_list, features, targets = rpn_inputs(model)
    rpn = ohem_rpn(model)
    with EventStorage(sync_timing=True) as storage:  # on the CPU there is nothing to wait for
        _, losses = rpn(image_list, features, targets)
    assert storage.scalars["time_mining"] > 0
    mined = storage.latest("rpn_mining")
    assert storage.statistics == [rpn.last_statistics]
    assert torch.equal(rpn.last_statistics["rpn_ohem_all_loss"], mined["losses"][mined["labels"] >= 0].mean())
