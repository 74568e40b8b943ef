"""Every ablation knob of the paper is a config key that reaches the module it changes, and the
ones with behaviour of their own (read-only dropout, rpn_ohem, test-time sizes) do what they say."""

import pytest
import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

from ohem.config import ConfigError, load_config
from ohem.inference import TestTime
from ohem.mining import (
    HeuristicSampler,
    LabelledRoIs,
    OHEMSampler,
    SamplingRoIHeads,
    build_detector,
    enable_ohem,
    readonly_pass,
)
from ohem.mining.rpn import OHEMRegionProposalNetwork
from ohem.models import SmallBackbone
from ohem.models.fast_rcnn import FastRCNN
from ohem.models.vgg import VGGBoxHead

SMALL = ["model.min_size=128", "model.max_size=128"]


def _build(*overrides):
    cfg = load_config(None, [*SMALL, *overrides])
    return build_detector(cfg.model, cfg.sampler, 5)


@pytest.mark.parametrize(
    "overrides, attribute, expected",
    [
        (["sampler.batch_size_per_image=32"], "batch_size_per_image", 32),  # B / N
        (["sampler.bg_iou_low=0.1"], "bg_iou_low", 0.1),
        ([], "bg_iou_low", 0.0),  # the paper's OHEM default
        (["sampler.start=7"], "start", 7),
        (["sampler.nms_iou=null"], "nms_iou", None),  # NMS off
        (["sampler.nms_iou=0.5"], "nms_iou", 0.5),
        (["sampler.mining_loss=cls"], "mining_loss", "cls"),
        (["sampler.readonly_dropout=false"], "readonly.dropout", False),
        (["sampler.max_rois_per_chunk=99"], "readonly.max_rois_per_chunk", 99),
        (["sampler.nms_per_label=true"], "nms_per_label", True),
        (["sampler.readonly_precision=bf16"], "readonly.precision", "bf16"),
        ([], "readonly.precision", "tf32"),
    ],
)
def test_ohem_knob_reaches_the_roi_heads(overrides, attribute, expected):
    heads = _build("sampler.method=ohem", *overrides).roi_heads
    value = heads.sampler
    for part in attribute.split("."):
        value = getattr(value, part)
    assert type(heads) is SamplingRoIHeads and type(heads.sampler) is OHEMSampler and value == expected


def test_heuristic_knobs_reach_torchvision_sampler():
    sampler = _build("sampler.method=heuristic", "sampler.fg_fraction=0.5").roi_heads.sampler
    assert type(sampler) is HeuristicSampler and sampler.bg_iou_low == 0.1  # Fast R-CNN's bg_lo
    assert sampler.fg_fraction == 0.5 and sampler.batch_size_per_image == 64
    all_rois = _build("sampler.method=heuristic", "sampler.batch_size_per_image=2048", "sampler.bg_iou_low=0").roi_heads
    assert all_rois.sampler.batch_size_per_image == 2048 and all_rois.sampler.bg_iou_low == 0.0


def test_a_retired_or_unknown_sampler_key_is_a_one_line_error():
    with pytest.raises(ConfigError, match="unknown key 'sampler.implementation'"):
        _build("sampler.implementation=loss-zeroing")


def test_rpn_ohem_key():
    model = _build("model.rpn_ohem=true", "model.rpn_nms_iou=0.5", "model.rpn_batch_size_per_image=128")
    assert isinstance(model.rpn, OHEMRegionProposalNetwork)
    assert model.rpn.nms_iou == 0.5 and model.rpn.num_per_image == 128
    assert type(_build().rpn).__name__ == "RegionProposalNetwork"
    with pytest.raises(ValueError, match="fast_rcnn_small has no RPN"):
        _build("model.name=fast_rcnn_small", "model.rpn_ohem=true")


def test_test_time_keys():
    def test_time(*overrides):
        return TestTime.from_config(load_config(None, [*SMALL, *overrides]).model)

    assert test_time("model.test_min_size=[96, 128]", "model.box_voting=true") == TestTime((96, 128), True)
    assert test_time("model.test_min_size=96") == TestTime((96,), False)
    assert test_time() == TestTime(None, False)
    assert _build("model.box_nms_thresh=0.3").roi_heads.nms_thresh == 0.3
    with pytest.raises(ValueError, match="VGG_CNN_M_1024's ImageNet weights"):
        _build("model.name=fast_rcnn_vgg_cnn_m_1024", "model.backbone_weights=imagenet")


def test_multi_scale_training_draws_the_shorter_side_per_image():
    model = _build("model.min_size=[64, 96, 128]", "model.max_size=256").train()
    sizes = set()
    for _ in range(30):
        images, _ = model.transform([torch.rand(3, 100, 100)])
        sizes.add(images.tensors.shape[-1])
    assert sizes == {64, 96, 128}
    model.eval()
    assert model.transform([torch.rand(3, 100, 100)])[0].tensors.shape[-1] == 128  # test: the last size


def _dropout_model(readonly_dropout: bool) -> FastRCNN:
    torch.manual_seed(0)
    backbone = SmallBackbone()
    head = VGGBoxHead(backbone.out_channels * 6 * 6, fc6_dim=64, fc7_dim=64, dropout=0.5)  # fc6/fc7 with dropout
    model = FastRCNN(
        backbone,
        MultiScaleRoIAlign(["0"], 6, 2),
        head,
        FastRCNNPredictor(64, 6),
        min_size=128,
        max_size=128,
        image_mean=[0.5] * 3,
        image_std=[0.25] * 3,
    )
    return enable_ohem(model, batch_size_per_image=8, readonly_dropout=readonly_dropout)


@pytest.mark.parametrize("readonly_dropout", [True, False])
def test_readonly_dropout_on_or_off(readonly_dropout):
    model = _dropout_model(readonly_dropout).train()
    heads: SamplingRoIHeads = model.roi_heads
    features = {"0": torch.rand(1, 96, 16, 16)}
    boxes = torch.tensor([[0.0, 0.0, 60.0, 60.0], [20.0, 30.0, 90.0, 100.0], [5.0, 5.0, 40.0, 70.0]])
    zeros = torch.zeros(3, dtype=torch.long)
    rois = LabelledRoIs(boxes, zeros, zeros, torch.tensor([1, 0, 2]), torch.zeros(3, 4), torch.zeros(3, 4), 1)

    def losses():
        scores = readonly_pass(heads, features, rois, [(128, 128)], heads.sampler.readonly, heads.box_loss_beta)
        return scores.cls + scores.box

    first, second = losses(), losses()
    head = heads.box_head
    assert head.training and all(m.training for m in head.modules() if isinstance(m, nn.Dropout))  # restored
    if readonly_dropout:  # dropout on: two passes rank with different masks, as the authors' Caffe net did
        assert not torch.equal(first, second)
    else:  # dropout off: deterministic, equal to the eval-mode head
        assert torch.equal(first, second)
        heads.eval()
        torch.testing.assert_close(first, losses())


def test_bias_lr_factor_and_weight_decay_groups():
    from ohem.engine.trainer import param_groups

    cfg = load_config(None, [*SMALL, "solver.lr=0.01", "solver.bias_lr_factor=2", "solver.bias_weight_decay=0"])
    model = build_detector(cfg.model, cfg.sampler, 5)
    weights, biases = param_groups(model, cfg)
    assert (weights["lr"], weights["weight_decay"]) == (0.01, 5e-4)
    assert (biases["lr"], biases["weight_decay"]) == (0.02, 0)
    named = {id(p): n for n, p in model.named_parameters()}
    assert biases["params"] and all(named[id(p)].endswith(".bias") for p in biases["params"])
    assert len(weights["params"]) + len(biases["params"]) == sum(p.requires_grad for p in model.parameters())
    default = param_groups(model, load_config(None, SMALL))
    assert default[1]["lr"] == default[0]["lr"] and default[1]["weight_decay"] == default[0]["weight_decay"]
