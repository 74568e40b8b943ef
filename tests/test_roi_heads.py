"""SamplingRoIHeads with OHEM's and the heuristic's samplers: labelling, the read-only pass, what gets
gradients, drop-in use."""

import copy
import dataclasses

import pytest
import torch
from torchvision.models import detection
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import MultiScaleRoIAlign, box_iou

from ohem.data import SyntheticShapes
from ohem.events import EventStorage
from ohem.mining import (
    HeuristicSampler,
    OHEMSampler,
    PerRoILoss,
    SamplingRoIHeads,
    enable_heuristic_sampling,
    enable_ohem,
    label_rois,
    unreduced_loss_terms,
)
from ohem.mining.pooling import fixed_bincount, split_by_image
from ohem.mining.rois import match_rois
from ohem.models import SmallBackbone, small_faster_rcnn


def small_model(**kwargs):
    torch.manual_seed(0)
    model = small_faster_rcnn(
        5,
        min_size=128,
        max_size=128,
        rpn_post_nms_top_n_train=120,
        rpn_post_nms_top_n_test=60,
        box_score_thresh=0.0,
        **kwargs,
    )
    return model


def batch(n=2, size=128):
    ds = SyntheticShapes("train", n, image_size=size)
    images, targets = zip(*[ds[i] for i in range(n)])
    return list(images), list(targets)


def test_enable_ohem_keeps_modules_weights_and_settings():
    model = small_model()
    before = copy.deepcopy(model.state_dict())
    old = model.roi_heads
    assert enable_ohem(model, batch_size_per_image=32, nms_iou=0.5) is model
    heads = model.roi_heads
    assert isinstance(heads, SamplingRoIHeads) and isinstance(heads, RoIHeads)
    assert isinstance(heads.sampler, OHEMSampler)
    assert heads.box_head is old.box_head and heads.box_predictor is old.box_predictor
    assert heads.box_roi_pool is old.box_roi_pool
    assert heads.sampler.batch_size_per_image == 32 and heads.sampler.nms_iou == 0.5
    assert heads.score_thresh == old.score_thresh and heads.nms_thresh == old.nms_thresh
    assert heads.box_coder.weights == old.box_coder.weights
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_eval_outputs_identical_before_and_after_enable_ohem():
    model = small_model().eval()
    images, _ = batch(3)
    with torch.no_grad():
        want = model(images)
        enable_ohem(model)
        got = model(images)
    assert sum(len(w["boxes"]) for w in want) > 0
    for w, g in zip(want, got):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(w[key], g[key])


def test_enable_ohem_rejects_non_detectors():
    with pytest.raises(TypeError, match="RoIHeads"):
        enable_ohem(torch.nn.Linear(2, 2))


def make_heads(k=4, nms_iou=0.7, chunk=1024, mining_loss="cls+box", bg_iou_low=0.0):
    torch.manual_seed(0)
    model = small_model()
    enable_ohem(
        model,
        batch_size_per_image=k,
        nms_iou=nms_iou,
        max_rois_per_chunk=chunk,
        mining_loss=mining_loss,
        bg_iou_low=bg_iou_low,
    )
    return model.roi_heads.train()


def grid_proposals(size=128, step=16, box=20):
    starts = torch.arange(0, size - box + 1, step, dtype=torch.float)
    ys, xs = torch.meshgrid(starts, starts, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten(), xs.flatten() + box, ys.flatten() + box], 1)


def train_forward(heads, features, proposals, shapes, targets, iteration=0):
    """A training forward inside an EventStorage: (losses, the mined-RoI record, the storage)."""
    with EventStorage(iteration) as storage:
        _, losses = heads(features, proposals, shapes, targets)
    return losses, storage.latest("roi_mining"), storage


def with_readonly(heads, **changes):
    """The heads' OHEM sampler with its read-only pass's settings changed (``dropout``, ``precision``)."""
    heads.sampler = dataclasses.replace(heads.sampler, **{f"readonly_{k}": v for k, v in changes.items()})
    return heads


def heads_inputs(num_images=2):
    features = {"0": torch.randn(num_images, SmallBackbone.out_channels, 16, 16, requires_grad=True)}
    proposals = [grid_proposals() for _ in range(num_images)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 40.0, 44.0], [70.0, 60.0, 100.0, 90.0]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.tensor([[50.0, 50.0, 80.0, 76.0]]), "labels": torch.tensor([2])},
    ][:num_images]
    return features, proposals, [(128, 128)] * num_images, targets


def test_training_loss_is_the_mean_mined_loss_and_selection_is_top_loss():
    heads = make_heads(k=5)
    features, proposals, shapes, targets = heads_inputs()
    losses, mined, _ = train_forward(heads, features, proposals, shapes, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg"}  # losses only
    stats = heads.last_statistics
    assert set(stats) == {
        "ohem_score_spread",
        "ohem_all_roi_loss",
        "ohem_mined_loss",
        "ohem_mined_fg_fraction",
        "ohem_all_fg_fraction",
    }
    assert all(not v.requires_grad for v in stats.values())
    # The trainable pass optimises exactly the mean per-RoI loss of the mined RoIs.
    total = losses["loss_classifier"] + losses["loss_box_reg"]
    assert torch.allclose(total.detach(), stats["ohem_mined_loss"], rtol=1e-5)
    assert stats["ohem_mined_loss"] > stats["ohem_all_roi_loss"]
    assert torch.bincount(mined["image_ids"]).tolist() == [5, 5]
    for i in range(2):
        mine = mined["losses"][mined["image_ids"] == i]
        assert torch.equal(mine, mine.sort(descending=True).values)
    # With NMS, no two mined RoIs of an image overlap above 0.7.
    for i in range(2):
        boxes = mined["boxes"][mined["image_ids"] == i]
        iou = box_iou(boxes, boxes).fill_diagonal_(0)
        assert iou.max() <= 0.7


def test_gradient_reaches_only_the_selected_rois_and_readonly_pass_has_no_graph():
    heads = make_heads(k=3, nms_iou=None, chunk=50)
    features, proposals, shapes, targets = heads_inputs(num_images=1)
    pooled, head_inputs = [], []
    heads.box_roi_pool.register_forward_hook(lambda m, i, o: pooled.append(o))
    heads.box_head.register_forward_hook(lambda m, i, o: head_inputs.append(i[0]))
    losses, mined, _ = train_forward(heads, features, proposals, shapes, targets)
    num_rois = proposals[0].shape[0] + 2  # + gt boxes
    # Read-only pass: ceil(num_rois / 50) chunks, none with an autograd graph. On the CPU the trainable
    # pass reuses their pooling of the mined RoIs instead of calling the pooler again.
    assert len(pooled) == -(-num_rois // 50)
    assert sum(o.shape[0] for o in pooled) == num_rois
    assert all(o.grad_fn is None and not o.requires_grad for o in pooled)
    assert type(heads.box_roi_pool) is MultiScaleRoIAlign  # never swapped
    # Trainable pass: exactly the mined RoIs, pooled as the read-only pass pooled them.
    trained = head_inputs[-1]
    assert trained.requires_grad and trained.shape[0] == 3
    rois = torch.cat([proposals[0], targets[0]["boxes"]])  # every RoI, in the read-only pass's order
    rows = torch.stack([torch.nonzero((rois == box).all(1))[0, 0] for box in mined["boxes"]])
    assert torch.equal(trained.detach(), torch.cat(pooled)[rows])
    sum(losses.values()).backward()
    grad = features["0"].grad[0].abs().sum(0)  # (16, 16) at stride 8
    covered = torch.zeros_like(grad, dtype=torch.bool)
    for x1, y1, x2, y2 in mined["boxes"].tolist():
        # RoIAlign samples bilinearly inside the box: its gradient stays within one cell of it.
        covered[max(int(y1 // 8) - 1, 0) : int(y2 // 8) + 2, max(int(x1 // 8) - 1, 0) : int(x2 // 8) + 2] = True
    assert grad[covered].sum() > 0
    assert torch.all(grad[~covered] == 0)
    assert (~covered).sum() > 100  # most of the map belongs to unselected RoIs only


def test_readonly_pass_does_not_depend_on_chunk_size():
    features, proposals, shapes, targets = heads_inputs()
    results = []
    for chunk in (7, 100000):
        heads = make_heads(k=8, chunk=chunk)
        results.append(train_forward(heads, features, proposals, shapes, targets)[1])
    assert torch.equal(results[0]["boxes"], results[1]["boxes"])
    assert torch.allclose(results[0]["losses"], results[1]["losses"], atol=1e-6)


def test_per_roi_loss_cls_and_box_terms():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    regression = torch.zeros(2, 12)
    regression[1, 4:8] = torch.tensor([0.1, 0.0, 0.0, 0.0])
    labels = torch.tensor([0, 1])
    targets = torch.zeros(2, 4)
    terms = PerRoILoss(*unreduced_loss_terms(logits, regression, labels, targets, beta=1 / 9), torch.zeros(2), None)
    cls, both = terms.ranked_by("cls"), terms.ranked_by("cls+box")
    expected_cls = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert torch.allclose(cls, expected_cls)
    # smooth-L1, beta 1/9: |0.1| >= 1/9? no -> 0.5 * 0.1^2 / (1/9) = 0.045, only on the fg RoI.
    assert torch.allclose(both - cls, torch.tensor([0.0, 0.045]))


def test_bg_iou_low_and_label_assignment():
    heads = small_model().roi_heads
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    rois = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # IoU 1     -> class 4
            [0.0, 0.0, 10.0, 6.0],  # IoU 0.6   -> class 4
            [0.0, 0.0, 10.0, 3.0],  # IoU 0.3   -> bg
            [0.0, 0.0, 10.0, 0.5],  # IoU 0.05  -> ignored
            [50.0, 50.0, 60.0, 60.0],  # IoU 0    -> ignored
        ]
    )
    matched, labels = match_rois(heads, [rois], [gt], [torch.tensor([4])], bg_iou_low=0.1)
    assert labels[0].tolist() == [4, 4, 0, -1, -1]
    _, labels = match_rois(heads, [rois], [gt], [torch.tensor([4])], bg_iou_low=0.0)
    assert labels[0].tolist() == [4, 4, 0, 0, 0]
    _, labels = match_rois(heads, [rois], [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)], bg_iou_low=0.0)
    assert labels[0].tolist() == [0] * 5


def test_heuristic_sampler_takes_fg_fraction_and_bg_from_the_band():
    model = small_model()
    enable_heuristic_sampling(model, batch_size_per_image=16, fg_fraction=0.25, bg_iou_low=0.1)
    heads = model.roi_heads.train()
    assert isinstance(heads.sampler, HeuristicSampler) and heads.sampler.readonly is None  # no read-only pass
    features, proposals, shapes, targets = heads_inputs()
    rois = label_rois(heads, proposals, targets, heads.sampler.bg_iou_low)
    rows = heads.sampler.sample(rois, None, None).rows
    for image, t in enumerate(targets):
        mine = rows[rois.image_ids[rows] == image]
        r, lab = rois.boxes[mine], rois.labels[mine]
        assert 0 < len(lab) <= 16
        assert (lab > 0).sum() <= 4
        best = box_iou(r, t["boxes"]).max(dim=1).values
        assert torch.all(best[lab == 0] >= 0.1) and torch.all(best[lab == 0] < 0.5)
        assert torch.all(best[lab > 0] >= 0.5)


def test_ohem_ignores_rois_below_bg_iou_low():
    heads = make_heads(k=1000, nms_iou=None, bg_iou_low=0.1)
    _, mined, _ = train_forward(heads, *heads_inputs())
    assert torch.all(mined["iou"] >= 0.1)
    assert torch.all(mined["iou"][mined["labels"] == 0] < 0.5)


def test_mining_by_classification_loss_only_ranks_by_cross_entropy():
    from ohem.mining import readonly_pass

    heads = with_readonly(make_heads(k=6, nms_iou=None, mining_loss="cls"), dropout=False)
    features, proposals, shapes, targets = heads_inputs()
    rois = label_rois(heads, proposals, targets, 0.0)
    scores = readonly_pass(heads, features, rois, shapes, heads.sampler.readonly, heads.box_loss_beta)
    rows = heads.sampler.sample(rois, scores, 0).rows
    for image in range(2):
        mine = torch.nonzero(rois.image_ids == image).squeeze(1)
        want = mine[scores.cls[mine].sort(descending=True, stable=True).indices[:6]]
        assert torch.equal(rows[rois.image_ids[rows] == image], want)
    both = dataclasses.replace(heads.sampler, mining_loss="cls+box").sample(rois, scores, 0).rows
    assert not torch.equal(both, rows)  # the box term changes the ranking here


def test_ohem_on_mask_rcnn_trains_the_mask_branch_on_mined_positives():
    torch.manual_seed(0)
    backbone = SmallBackbone()
    model = detection.MaskRCNN(
        backbone,
        num_classes=6,
        min_size=128,
        max_size=128,
        rpn_post_nms_top_n_train=60,
        box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2),
        mask_roi_pool=MultiScaleRoIAlign(["0"], 14, 2),
        rpn_anchor_generator=detection.anchor_utils.AnchorGenerator(((16, 32, 64),), ((0.5, 1.0, 2.0),)),
    )
    enable_ohem(model, batch_size_per_image=16)
    images, targets = batch(2)
    for t in targets:
        masks = torch.zeros(len(t["boxes"]), 128, 128, dtype=torch.uint8)
        for m, (x1, y1, x2, y2) in zip(masks, t["boxes"].int().tolist()):
            m[y1:y2, x1:x2] = 1
        t["masks"] = masks
    model.train()
    losses = model(images, targets)
    assert {"loss_mask", "loss_classifier"} <= set(losses) and "ohem_mined_loss" in model.roi_heads.last_statistics
    assert torch.isfinite(losses["loss_mask"])
    sum(losses.values()).backward()
    assert model.roi_heads.mask_head[0][0].weight.grad.abs().sum() > 0


def test_all_roi_mean_loss_does_not_depend_on_the_sampler():
    from ohem.evaluation import all_roi_mean_loss

    ds = SyntheticShapes("train", 4, image_size=128)
    ohem_model = enable_ohem(small_model())
    heuristic_model = enable_heuristic_sampling(small_model())  # same seed: same weights
    values = [all_roi_mean_loss(m, ds, [0, 1, 2], torch.device("cpu")) for m in (ohem_model, heuristic_model)]
    assert values[0] == pytest.approx(values[1], rel=1e-6) and values[0] > 0
    assert ohem_model.training  # mode restored
    plain = all_roi_mean_loss(small_model(), ds, [0, 1, 2], torch.device("cpu"))  # torchvision's own RoIHeads
    assert plain == pytest.approx(values[0], rel=1e-6)
    with pytest.raises(TypeError, match="needs a torchvision RoIHeads"):
        all_roi_mean_loss(torch.nn.Module(), ds, [0], torch.device("cpu"))


def test_low_precision_readonly_pass_ranks_nearly_like_float32():
    features, proposals, shapes, targets = heads_inputs()
    mined = {}
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        heads = with_readonly(make_heads(k=16), precision=precision)
        seen = []
        handle = heads.box_head.register_forward_hook(lambda m, i, o, seen=seen: seen.append(o.dtype))
        losses, record, _ = train_forward(heads, features, proposals, shapes, targets)
        handle.remove()
        # The read-only pass runs in the asked precision; the trainable pass stays float32.
        assert seen[0] == dtype and seen[-1] == torch.float32
        assert losses["loss_classifier"].dtype == torch.float32
        mined[precision] = {tuple(b) for b in record["boxes"].tolist()}
    assert len(mined["fp32"] & mined["bf16"]) >= 0.75 * len(mined["fp32"])


def test_tf32_readonly_pass_is_float32_on_the_cpu():
    features, proposals, shapes, targets = heads_inputs()
    runs = []
    for precision in ("fp32", "tf32"):
        heads = with_readonly(make_heads(k=8), precision=precision)
        feats = {"0": features["0"].detach().clone().requires_grad_()}
        torch.manual_seed(1)  # the same dropout masks
        losses, record, _ = train_forward(heads, feats, proposals, shapes, targets)
        sum(losses.values()).backward()
        runs.append((record, losses, feats["0"].grad))
    (mined_a, losses_a, grad_a), (mined_b, losses_b, grad_b) = runs
    assert all(torch.equal(mined_a[k], mined_b[k]) for k in ("boxes", "labels", "losses", "iou", "all_roi_loss"))
    assert all(torch.equal(losses_a[k], losses_b[k]) for k in losses_a)
    assert torch.equal(grad_a, grad_b)


@pytest.mark.parametrize("enabled, inside", [(True, "tf32"), (False, "ieee")])
def test_cuda_tf32_switch_is_restored(enabled, inside):
    # Global flags only (no CUDA needed): TF32 on (tf32) or off (fp32) inside, the user's setting after.
    from ohem.mining.readonly import cuda_tf32

    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn
    before = (matmul.fp32_precision, conv.conv.fp32_precision) if hasattr(matmul, "fp32_precision") else None
    with cuda_tf32(enabled):
        if before is not None:
            assert matmul.fp32_precision == conv.conv.fp32_precision == inside
        else:
            assert matmul.allow_tf32 is enabled and conv.allow_tf32 is enabled
    if before is not None:
        assert (matmul.fp32_precision, conv.conv.fp32_precision) == before
        assert matmul.allow_tf32 in (True, False)  # the old API still reads: the two were not mixed


def test_readonly_precision_inside_an_enclosing_autocast_of_another_dtype():
    # A nested autocast of another dtype would poison the shared weight-cast cache of the outer one.
    features, proposals, shapes, targets = heads_inputs()
    heads = with_readonly(make_heads(k=8), precision="fp16")
    seen = []
    heads.box_head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses, mined, _ = train_forward(heads, features, proposals, shapes, targets)
    assert set(seen) == {torch.bfloat16}  # both passes stay under the enclosing autocast
    assert torch.isfinite(losses["loss_classifier"])
    assert torch.bincount(mined["image_ids"]).tolist() == [8, 8]


def test_mining_time_and_record_go_to_the_open_storage_only():
    heads = make_heads(k=4)
    inputs = heads_inputs()
    _, losses = heads(*inputs)  # a user's own loop: no storage, nothing reported, the losses as usual
    assert "ohem_mined_loss" in heads.last_statistics and "ohem_mined_loss" not in losses
    with EventStorage(0, sync_timing=True) as storage:  # on the CPU there is nothing to wait for
        heads(*inputs)
        heads(*inputs)  # two forward passes of one step (gradient accumulation)
    assert storage.scalars["time_mining"] > 0 and len(storage.records["roi_mining"]) == 2


@pytest.mark.parametrize("threads", [2, 3])
def test_readonly_pool_split_among_threads_gives_the_same_values_and_no_graph(threads):
    from ohem.mining.pooling import readonly_pool

    heads = make_heads()
    features, proposals, shapes, targets = heads_inputs()
    rois = label_rois(heads, proposals, targets, 0.0)
    args = (heads, features, rois.boxes, rois.image_ids, rois.num_images, shapes)
    calls = []
    heads.box_roi_pool.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    one, split = readonly_pool(*args, threads=1), readonly_pool(*args, threads=threads)
    assert sorted(calls[1:]) == sorted(len(p) for p in rois.boxes.tensor_split(threads))  # really split
    assert torch.equal(one, split) and not split.requires_grad and features["0"].requires_grad


@pytest.mark.parametrize("nms_iou, dropout", [(0.7, True), (None, False)])
def test_reused_pooling_gives_the_same_losses_and_gradients_as_pooling_again(monkeypatch, nms_iou, dropout):
    import ohem.mining.roi_heads as core

    features, proposals, shapes, targets = heads_inputs()
    runs = []
    for reuse in (False, True):
        monkeypatch.setattr(core, "can_reuse_pooling", lambda heads, feats, reuse=reuse: reuse)
        heads = with_readonly(make_heads(k=6, nms_iou=nms_iou), dropout=dropout)
        calls = []
        heads.box_roi_pool.register_forward_hook(lambda m, i, o, calls=calls: calls.append(o.requires_grad))
        feats = {"0": features["0"].detach().clone().requires_grad_()}
        torch.manual_seed(3)  # the same dropout masks
        losses, _, _ = train_forward(heads, feats, proposals, shapes, targets)
        sum(losses.values()).backward()
        grads = {n: p.grad for n, p in heads.named_parameters() if p.grad is not None}
        runs.append((calls, losses, grads, feats["0"].grad))
    (calls_a, losses_a, grads_a, feat_a), (calls_b, losses_b, grads_b, feat_b) = runs
    # the trainable pass pools the mined RoIs again / takes the read-only pass's pooling
    assert calls_a.count(True) == 1 and calls_b.count(True) == 0 and calls_a.count(False) == calls_b.count(False)
    assert all(torch.equal(losses_a[k], losses_b[k]) for k in losses_a)
    assert grads_a.keys() == grads_b.keys() and all(torch.equal(grads_a[k], grads_b[k]) for k in grads_a)
    assert torch.equal(feat_a, feat_b) and feat_a.abs().sum() > 0


def test_pooling_is_reused_only_for_one_level_roi_align_on_the_cpu_outside_autocast():
    from ohem.mining.pooling import can_reuse_pooling

    heads = make_heads()
    features = {"0": torch.zeros(1, 96, 4, 4)}
    assert can_reuse_pooling(heads, features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not can_reuse_pooling(heads, features)
    heads.box_roi_pool = MultiScaleRoIAlign(["0", "1"], 7, 2)
    assert not can_reuse_pooling(heads, {**features, "1": features["0"]})


def test_before_start_the_sample_is_random_with_the_foreground_share_capped():
    heads = make_heads(k=8)
    heads.sampler = dataclasses.replace(heads.sampler, start=5)
    features, proposals, shapes, targets = heads_inputs()
    torch.manual_seed(1)
    _, record, _ = train_forward(heads, features, proposals, shapes, targets, iteration=4)
    random_stats = heads.last_statistics
    counts = torch.bincount(record["image_ids"], minlength=2)
    assert counts.tolist() == [8, 8]  # the budget per image is kept
    for image in range(2):
        fg = int((record["labels"][record["image_ids"] == image] > 0).sum())
        assert 1 <= fg <= 2  # at most 25 % of 8 foreground; the gt box itself is always there
    assert random_stats["ohem_mined_fg_fraction"] <= 0.25
    # from iteration 5 on, mining picks by loss: the hardest 8 per image, a different set
    train_forward(heads, features, proposals, shapes, targets, iteration=5)
    assert heads.last_statistics["ohem_mined_loss"] > random_stats["ohem_mined_loss"]
    with pytest.raises(RuntimeError, match="sampler.start needs the iteration"):
        heads(features, proposals, shapes, targets)  # outside a trainer, the iteration is unknown


def test_split_by_image_gives_each_image_its_rows_empty_ones_included():
    rows, image_ids = torch.arange(10, 15), torch.tensor([0, 0, 2, 2, 2])
    parts = split_by_image(rows, image_ids, num_images=4)
    assert [p.tolist() for p in parts] == [[10, 11], [], [12, 13, 14], []]
    assert fixed_bincount(image_ids, 4).tolist() == [2, 0, 3, 0]
    assert fixed_bincount(torch.zeros(0, dtype=torch.long), 3).tolist() == [0, 0, 0]
