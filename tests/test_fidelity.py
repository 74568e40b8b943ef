"""Settings that make a recipe the authors' setup: smooth-L1 beta in both passes, empirical box-target
normalisation, Caffe input normalisation, bias decay per layer, Caffe's step schedule."""

import json
import math

import pytest
import torch
from torch.nn import functional as F

from ohem.checkpoint import load_checkpoint
from ohem.config import load_config
from ohem.data import build_dataset
from ohem.engine.trainer import lr_factor, param_groups, train
from ohem.events import EventStorage
from ohem.inference import model_from_checkpoint, predict
from ohem.mining import build_detector, enable_heuristic_sampling, enable_ohem, unreduced_loss_terms
from ohem.models.box_targets import BoxTargetNorm
from ohem.util import strict_json
from tests.test_roi_heads import heads_inputs, small_model


def test_per_roi_box_term_by_hand_for_both_betas():
    logits = torch.zeros(2, 3)
    deltas = torch.zeros(2, 12)
    deltas[1, 4:8] = torch.tensor([0.05, -0.5, 2.0, 0.0])  # class 1's deltas of the fg RoI
    labels, targets = torch.tensor([0, 1]), torch.zeros(2, 4)
    _, box_ninth = unreduced_loss_terms(logits, deltas, labels, targets, beta=1 / 9)
    _, box_one = unreduced_loss_terms(logits, deltas, labels, targets, beta=1.0)
    # smooth-L1: 0.5 x^2 / beta below beta, |x| - beta / 2 above; summed over the 4 coordinates
    ninth = 0.5 * 0.05**2 * 9 + (0.5 - 1 / 18) + (2.0 - 1 / 18)
    one = 0.5 * 0.05**2 + 0.5 * 0.5**2 + (2.0 - 0.5)
    torch.testing.assert_close(box_ninth, torch.tensor([0.0, ninth]))
    torch.testing.assert_close(box_one, torch.tensor([0.0, one]))


def test_background_box_term_is_zero_without_gradient_even_for_infinite_targets():
    # A gt-less image's background RoIs have infinite box targets (encoded against a zero-size box).
    deltas = torch.randn(3, 12, requires_grad=True)
    labels = torch.tensor([0, 2, 0])
    targets = torch.tensor([[float("-inf")] * 4, [0.1, 0.2, 0.0, -0.1], [float("inf")] * 4])
    cls_loss, box_loss = unreduced_loss_terms(torch.zeros(3, 3), deltas, labels, targets, beta=1 / 9)
    assert box_loss[0] == 0 and box_loss[2] == 0 and box_loss[1] > 0
    box_loss.sum().backward()
    grad = deltas.grad.reshape(3, 3, 4)
    assert torch.isfinite(grad).all()
    assert grad[0].abs().sum() == 0 and grad[2].abs().sum() == 0  # background rows: no gradient
    assert grad[1, 2].abs().sum() > 0 and grad[1, :2].abs().sum() == 0  # only the fg RoI's own class
    torch.testing.assert_close(cls_loss, torch.full((3,), math.log(3)))


@pytest.mark.parametrize("enable", [enable_ohem, enable_heuristic_sampling])
@pytest.mark.parametrize("beta", [1 / 9, 1.0])
def test_beta_reaches_the_trainable_pass(enable, beta):
    features, proposals, shapes, targets = heads_inputs()
    heads = enable(small_model(), batch_size_per_image=8, box_loss_beta=beta).roi_heads.train()
    outputs, sampled = [], []
    heads.box_predictor.register_forward_hook(lambda m, i, o: outputs.append(o))
    inner = heads.sampler

    class Recording(type(inner)):  # the sampler's own choice, recorded
        def sample(self, rois, per_roi, iteration):
            sample = super().sample(rois, per_roi, iteration)
            sampled.append((rois, sample.rows))
            return sample

    heads.sampler = Recording(**{k: v for k, v in inner.to_dict().items() if k != "method"})
    _, losses = heads(features, proposals, shapes, targets)
    # torchvision's formula by hand, on what the trainable pass saw: smooth-L1 (beta) over fg / all sampled
    _, deltas = outputs[-1]
    rois, rows = sampled[-1]
    labels, box_targets = rois.labels[rows], rois.box_targets[rows]
    fg = labels > 0
    assert fg.any() and (~fg).any()
    picked = deltas.reshape(len(labels), -1, 4)[fg, labels[fg]]
    want = F.smooth_l1_loss(picked, box_targets[fg], beta=beta, reduction="sum") / len(labels)
    torch.testing.assert_close(losses["loss_box_reg"], want)


def test_beta_reaches_the_readonly_pass():
    features, proposals, shapes, targets = heads_inputs()
    per_roi = {}
    for beta in (1 / 9, 1.0):
        heads = enable_ohem(small_model(), batch_size_per_image=1000, nms_iou=None, box_loss_beta=beta).roi_heads
        with EventStorage() as storage:
            heads.train()(features, proposals, shapes, targets)
        m = storage.latest("roi_mining")  # every RoI (k >= R), with its read-only loss
        keys = zip(m["image_ids"].tolist(), map(tuple, m["boxes"].tolist()), m["labels"].tolist())
        per_roi[beta] = dict(zip(keys, m["losses"].tolist()))
    assert per_roi[1 / 9].keys() == per_roi[1.0].keys()
    bg = [k for k in per_roi[1.0] if k[2] == 0]
    fg = [k for k in per_roi[1.0] if k[2] > 0]
    # background has no box term; a larger beta gives a smaller smooth-L1 for every non-zero residual
    assert all(per_roi[1.0][k] == pytest.approx(per_roi[1 / 9][k], abs=1e-6) for k in bg)
    assert all(per_roi[1.0][k] <= per_roi[1 / 9][k] + 1e-6 for k in fg)
    assert sum(per_roi[1.0][k] < per_roi[1 / 9][k] - 1e-4 for k in fg) > len(fg) // 2


def test_box_target_norm_round_trip():
    norm = BoxTargetNorm(3)
    norm.mean.copy_(torch.tensor([[0.0] * 4, [0.1, -0.2, 0.3, 0.0], [0.0, 0.0, -0.1, 0.2]]))
    norm.std.copy_(torch.tensor([[1.0] * 4, [0.1, 0.1, 0.2, 0.2], [0.5, 0.5, 0.5, 0.5]]))
    raw = torch.randn(5, 4)
    labels = torch.tensor([1, 2, 1, 2, 2])
    normalised = norm.normalise(raw, labels)
    prediction = torch.zeros(5, 12)  # a predictor that outputs the normalised target in its class's columns
    for i, label in enumerate(labels.tolist()):
        prediction[i, 4 * label : 4 * label + 4] = normalised[i]
    back = norm.unnormalise(prediction).reshape(5, 3, 4)[torch.arange(5), labels]
    torch.testing.assert_close(back, raw)


def _fast_rcnn_cfg(tmp_path, *extra):
    from tests.test_recipes import _proposals_for

    base = ["data.dataset=synthetic", "data.num_train=6", "data.num_test=2", "data.image_size=128"]
    for role in ("train", "test"):
        path = tmp_path / f"{role}.npz"
        _proposals_for(build_dataset(load_config(None, base).data, role), path)
        base.append(f"data.{'proposals' if role == 'train' else 'test_proposals'}={path}")
    return load_config(
        None,
        [
            *base,
            "model.name=fast_rcnn_small",
            "model.min_size=128",
            "model.max_size=128",
            "solver.iterations=2",
            "solver.warmup_iterations=0",
            "train.eval_every=0",
            "train.checkpoint_every=0",
            "train.device=cpu",
            "train.vis_images=1",
            "sampler.batch_size_per_image=16",
            *extra,
        ],
    )


def test_empirical_box_targets_are_measured_saved_and_used_at_test_time(tmp_path):
    cfg = _fast_rcnn_cfg(tmp_path, "model.box_target_norm=empirical", "model.box_loss_beta=1.0")
    metrics = train(cfg, tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")["model"]
    # the statistics of the training set, as BoxTargetNorm.fit measures them, are in the checkpoint
    expected = BoxTargetNorm(6)
    expected.fit(build_dataset(cfg.data, "train"), 0.5, hflip=False)
    torch.testing.assert_close(state["roi_heads.box_target_norm.mean"], expected.mean)
    torch.testing.assert_close(state["roi_heads.box_target_norm.std"], expected.std)
    assert (expected.std[1:] != 1).any() and (expected.mean[1:] != 0).any()  # measured, not the identity
    assert state["roi_heads.box_target_norm.mean"][0].eq(0).all()  # background: never measured
    # a checkpoint reloads with them and detects as the trained model did
    model, _, _ = model_from_checkpoint(tmp_path / "run" / "checkpoint_last.pt", torch.device("cpu"))
    assert tuple(model.roi_heads.box_coder.weights) == (1.0, 1.0, 1.0, 1.0)
    test_set = build_dataset(cfg.data, "test")
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    saved.pop("best", None)  # the best evaluation, beside the final one train returns
    assert saved == json.loads(strict_json(metrics))  # metrics.json: strict JSON, NaN as null
    again = predict(model, test_set, torch.device("cpu"))
    unnormalised = model.roi_heads.box_target_norm
    unnormalised.mean.zero_()
    unnormalised.std.fill_(1.0)
    plain = predict(model, test_set, torch.device("cpu"))
    assert any(not torch.equal(a.boxes, b.boxes) for a, b in zip(again, plain) if len(a.boxes) and len(b.boxes))


def test_empirical_box_targets_need_proposal_files():
    cfg = load_config(None, ["model.box_target_norm=empirical"])
    with pytest.raises(ValueError, match="box_target_norm: empirical is measured on proposal files"):
        build_detector(cfg.model, cfg.sampler, 5)


def test_caffe_input_normalisation():
    cfg = load_config(
        None,
        [
            "model.image_mean=[102.9801, 115.9465, 122.7717]",
            "model.image_std=[1, 1, 1]",
            "model.pixel_scale=255",
            "model.channel_order=BGR",
        ],
    )
    model = build_detector(cfg.model, cfg.sampler, 5)
    image = torch.rand(3, 8, 8)
    got = model.transform.normalize(image)
    bgr = image.flip(0) * 255
    want = (bgr - torch.tensor([102.9801, 115.9465, 122.7717])[:, None, None]) / 1.0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    default = build_detector(load_config(None).model, cfg.sampler, 5)
    torch.testing.assert_close(default.transform.normalize(image), (image - 0.5) / 0.25)


def test_bias_decay_only_on_the_roi_heads_as_the_ohem_prototxts():
    cfg = _fast_rcnn_cfg_free(["solver.bias_weight_decay=0", "solver.bias_weight_decay_on=roi_heads"])
    model = build_detector(cfg.model, cfg.sampler, 5)
    weights, head_biases, other_biases = param_groups(model, cfg)
    named = {id(p): n for n, p in model.named_parameters()}
    assert {named[id(p)].split(".")[0] for p in head_biases["params"]} == {"roi_heads"}
    assert all(named[id(p)].endswith(".bias") for p in head_biases["params"] + other_biases["params"])
    assert (head_biases["weight_decay"], other_biases["weight_decay"], weights["weight_decay"]) == (0, 5e-4, 5e-4)
    assert head_biases["lr"] == other_biases["lr"] == cfg.solver.lr * cfg.solver.bias_lr_factor
    assert not any(named[id(p)].startswith("roi_heads") for p in other_biases["params"])
    assert len(param_groups(model, _fast_rcnn_cfg_free([]))) == 2  # all biases alike: two groups, as before


def _fast_rcnn_cfg_free(extra):
    return load_config(None, ["model.min_size=128", "model.max_size=128", "solver.bias_lr_factor=2", *extra])


def test_caffe_step_schedule_of_the_07_12_recipes():
    cfg = load_config("voc0712_vgg16_ohem")
    factors = [lr_factor(it, cfg) for it in (0, 29999, 30000, 59999, 60000, 79999)]
    assert factors == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
