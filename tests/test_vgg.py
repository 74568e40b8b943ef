"""VGG16 / VGG_CNN_M_1024 detectors and Fast R-CNN on external proposals (small images, no downloads)."""

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.roi_heads import RoIHeads

from ohem.events import EventStorage
from ohem.mining import OHEMSampler, enable_ohem
from ohem.models import vgg
from ohem.models.fast_rcnn import FastRCNN
from ohem.models.vgg import (
    RoIPoolLevel,
    VGGBoxHead,
    fast_rcnn_vgg16,
    fast_rcnn_vgg_cnn_m_1024,
    faster_rcnn_vgg_cnn_m_1024,
    vgg16_backbone_and_head,
    vgg_cnn_m_1024_backbone_and_head,
)

SMALL = dict(min_size=64, max_size=96)


def tiny_fast_rcnn(num_classes: int = 3, **kwargs) -> FastRCNN:
    """A stride-16 FastRCNN small enough to test the detector logic quickly."""
    backbone = nn.Sequential(nn.Conv2d(3, 16, 4, stride=4), nn.ReLU(), nn.Conv2d(16, 32, 4, stride=4), nn.ReLU())
    backbone.out_channels = 32
    head = VGGBoxHead(32 * 7 * 7, 64, 64)
    return FastRCNN(backbone, RoIPoolLevel(7), head, num_classes=num_classes + 1, **kwargs)


def sample(h: int = 64, w: int = 96, with_proposals: bool = True):
    image = torch.rand(3, h, w)
    target = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1])}
    if with_proposals:
        target["proposals"] = torch.tensor([[6.0, 6.0, 42.0, 38.0], [30.0, 10.0, 90.0, 60.0], [0.0, 0.0, 20.0, 20.0]])
    return image, target


def finite_losses(losses: dict) -> torch.Tensor:
    total = losses["loss_classifier"] + losses["loss_box_reg"]
    assert torch.isfinite(total)
    return total


@pytest.fixture(scope="module")
def vgg16_model():
    torch.manual_seed(0)
    return fast_rcnn_vgg16(num_classes=3, **SMALL)


def test_vgg16_backbone_stride_channels_and_frozen_layers(vgg16_model):
    backbone = vgg16_model.backbone
    assert backbone.out_channels == 512 and len(backbone) == 30  # pool5 dropped
    with torch.no_grad():
        assert backbone(torch.rand(1, 3, 64, 96)).shape == (1, 512, 4, 6)
    convs = [m for m in backbone if isinstance(m, nn.Conv2d)]
    assert [c.weight.requires_grad for c in convs] == [False] * 4 + [True] * 9  # conv1_x, conv2_x frozen
    head, predictor = vgg16_model.roi_heads.box_head, vgg16_model.roi_heads.box_predictor
    assert head.fc6.in_features == 512 * 7 * 7 and head.fc7.out_features == 4096
    assert predictor.cls_score.out_features == 4 and predictor.bbox_pred.out_features == 16
    assert predictor.bbox_pred.weight.std() < 0.002 < predictor.cls_score.weight.std() < 0.02
    assert not predictor.cls_score.bias.any() and not predictor.bbox_pred.bias.any()
    heads = vgg16_model.roi_heads
    assert heads.nms_thresh == 0.3 and heads.fg_bg_sampler.batch_size_per_image == 64


def test_vgg16_fast_rcnn_training_step(vgg16_model):
    vgg16_model.train()
    image, target = sample(64, 64)
    finite_losses(vgg16_model([image], [target])).backward()
    backbone = vgg16_model.backbone
    assert backbone[0].weight.grad is None and backbone[7].weight.grad is None  # conv1_1, conv2_2
    assert torch.isfinite(backbone[28].weight.grad).all() and backbone[28].weight.grad.abs().sum() > 0
    assert vgg16_model.roi_heads.box_head.fc6.weight.grad.abs().sum() > 0
    vgg16_model.zero_grad(set_to_none=True)


def test_vgg16_weights_from_a_local_state_dict(tmp_path):
    torch.manual_seed(1)
    source = torchvision.models.vgg16(weights=None).state_dict()
    path = tmp_path / "vgg16.pth"
    torch.save(source, path)
    del source
    torch.manual_seed(2)
    model = fast_rcnn_vgg16(num_classes=2, weights=str(path), **SMALL)
    saved = torch.load(path, weights_only=True)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, saved[f"features.{key}"]), key
    head = model.roi_heads.box_head
    for fc, index in ((head.fc6, 0), (head.fc7, 3)):
        assert torch.equal(fc.weight, saved[f"classifier.{index}.weight"])
        assert torch.equal(fc.bias, saved[f"classifier.{index}.bias"])


def test_imagenet_weights_use_torchvisions_api(monkeypatch):
    calls = []
    real = torchvision.models.vgg16

    def fake_vgg16(weights=None):
        calls.append(weights)
        return real(weights=None)

    monkeypatch.setattr(vgg.tv_models, "vgg16", fake_vgg16)
    vgg16_backbone_and_head("imagenet")
    assert calls == [torchvision.models.VGG16_Weights.IMAGENET1K_V1]
    with pytest.raises(ValueError, match="VGG_CNN_M_1024 has no ImageNet weights"):
        vgg_cnn_m_1024_backbone_and_head("imagenet")


class Payload:
    def __reduce__(self):
        return (print, ("this should never run",))


def test_pickled_and_bad_weight_files_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": Payload()}, path)
    for build in (vgg16_backbone_and_head, vgg_cnn_m_1024_backbone_and_head):
        with pytest.raises(ValueError, match="evil.pth: cannot be loaded safely") as err:
            build(str(path))
        assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="missing.pth: no such file"):
        vgg16_backbone_and_head(str(tmp_path / "missing.pth"))
    torch.save({"conv1.weight": torch.zeros(96, 3, 7, 7)}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="missing key 'conv1.bias'"):
        vgg_cnn_m_1024_backbone_and_head(str(tmp_path / "partial.pth"))
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "partial16.pth")
    with pytest.raises(ValueError, match="missing key 'features.0.bias'"):
        vgg16_backbone_and_head(str(tmp_path / "partial16.pth"))


def test_vgg_cnn_m_1024_architecture_and_local_weights(tmp_path):
    torch.manual_seed(0)
    backbone, head = vgg_cnn_m_1024_backbone_and_head()
    assert backbone.out_channels == 512 and head.fc6.in_features == 512 * 6 * 6 and head.fc7.out_features == 1024
    with torch.no_grad():
        widths = [backbone(torch.rand(1, 3, 64, w)).shape[-1] for w in (64, 80, 96, 112)]
    assert widths == [3, 4, 5, 6]  # one more cell per 16 px: stride 16
    assert not backbone.conv1.weight.requires_grad and backbone.conv2.weight.requires_grad
    state = {**backbone.state_dict(), **head.state_dict(), "fc8.weight": torch.zeros(1000, 1024)}
    torch.save(state, tmp_path / "cnn_m.pth")
    torch.manual_seed(1)
    loaded, loaded_head = vgg_cnn_m_1024_backbone_and_head(str(tmp_path / "cnn_m.pth"))
    assert torch.equal(loaded.conv5.weight, backbone.conv5.weight)
    assert torch.equal(loaded_head.fc6.weight, head.fc6.weight) and torch.equal(loaded_head.fc7.bias, head.fc7.bias)


def test_fast_rcnn_vgg_cnn_m_1024_trains_with_ohem():
    torch.manual_seed(0)
    model = enable_ohem(fast_rcnn_vgg_cnn_m_1024(num_classes=2, **SMALL), batch_size_per_image=8, nms_iou=None)
    model.train()
    assert isinstance(model.roi_heads.sampler, OHEMSampler) and model.roi_heads.box_roi_pool.pool.output_size == (6, 6)
    images, targets = zip(*[sample(), sample()])
    with EventStorage() as storage:
        losses = model(list(images), list(targets))
    finite_losses(losses).backward()
    assert {"ohem_all_roi_loss", "ohem_mined_loss", "ohem_mined_fg_fraction"} <= set(model.roi_heads.last_statistics)
    assert torch.bincount(storage.latest("roi_mining")["image_ids"]).tolist() == [4, 4]  # 3 proposals + 1 gt each
    assert model.backbone.conv2.weight.grad.abs().sum() > 0 and model.backbone.conv1.weight.grad is None


def test_faster_rcnn_vgg_cnn_m_1024_training_step():
    torch.manual_seed(0)
    model = faster_rcnn_vgg_cnn_m_1024(num_classes=2, min_size=96, max_size=96).train()
    assert isinstance(model, FasterRCNN) and isinstance(model.roi_heads, RoIHeads)
    assert model.rpn.anchor_generator.sizes == ((128, 256, 512),)
    image, target = sample(96, 96, with_proposals=False)
    losses = model([image], [target])
    total = finite_losses(losses) + losses["loss_objectness"] + losses["loss_rpn_box_reg"]
    assert torch.isfinite(total)
    total.backward()
    assert model.rpn.head.conv[0][0].weight.grad.abs().sum() > 0


def test_proposals_are_resized_with_the_image():
    torch.manual_seed(0)
    model = tiny_fast_rcnn(min_size=64, max_size=1000).eval()
    seen = []
    pool = model.roi_heads.box_roi_pool
    original_forward = pool.forward

    def spy(features, proposals, image_shapes):
        seen.append(([p.clone() for p in proposals], list(image_shapes)))
        return original_forward(features, proposals, image_shapes)

    pool.forward = spy
    image = torch.rand(3, 33, 70)  # 64/33 in y; x rounds down to 135 px, a slightly different ratio
    proposals = torch.tensor([[1.0, 2.0, 30.0, 20.0], [10.0, 5.0, 69.0, 32.0]])
    model([image], proposals=[proposals])
    (resized,), ((h, w),) = seen[0]
    assert (h, w) == (64, 135)
    ratio = torch.tensor([w / 70, h / 33, w / 70, h / 33])
    torch.testing.assert_close(resized, proposals * ratio)


def test_eval_returns_boxes_in_original_pixels_and_handles_no_proposals():
    torch.manual_seed(0)
    model = tiny_fast_rcnn(min_size=128, max_size=1000, box_score_thresh=0.0, box_nms_thresh=1.0).eval()
    # Zero regression: every detection is one of the proposals, back in the original frame.
    nn.init.zeros_(model.roi_heads.box_predictor.bbox_pred.weight)
    nn.init.zeros_(model.roi_heads.box_predictor.bbox_pred.bias)
    image, target = sample()
    with torch.no_grad():
        out, empty = model([image, image], proposals=[target["proposals"], torch.zeros(0, 4)])
        (none,) = model([image], proposals=[torch.zeros(0, 4)])
    assert out["boxes"].shape == (9, 4)  # 3 proposals x 3 classes
    assert torch.cdist(out["boxes"], target["proposals"]).min(dim=1).values.max() < 1e-3
    assert set(out["labels"].tolist()) == {1, 2, 3}
    assert empty["boxes"].shape == (0, 4) and none["boxes"].shape == (0, 4) and none["scores"].shape == (0,)


def test_training_from_target_proposals_or_none():
    torch.manual_seed(0)
    model = tiny_fast_rcnn(**SMALL).train()
    image, target = sample()
    bare = dict(target, proposals=torch.zeros(0, 4))  # gt boxes are still RoIs
    losses = model([image, image], [target, bare])
    finite_losses(losses).backward()
    with pytest.raises(ValueError, match="FastRCNN needs proposals"):
        model([image], [sample(with_proposals=False)[1]])
    with pytest.raises(ValueError, match="2 proposal sets for 1 images"):
        model([image], [target], proposals=[target["proposals"]] * 2)
