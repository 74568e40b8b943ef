"""Model builders: the small model, torchvision's family, backbone weights from a file or the API."""

import typing

import pytest
import torch
from torchvision.models import detection

from ohem.config import ConfigError, ModelConfig, ModelName, load_config
from ohem.data import SyntheticShapes
from ohem.events import EventStorage
from ohem.mining import SAMPLERS, HeuristicSampler, OHEMSampler, SamplingRoIHeads, build_detector
from ohem.models import BUILDERS, build_model


def small_cfg(**kwargs):
    return ModelConfig(min_size=128, max_size=128, rpn_post_nms_top_n_train=60, rpn_post_nms_top_n_test=30, **kwargs)


def test_sampler_choice_sets_roi_heads():
    ohem = build_detector(small_cfg(), SAMPLERS["ohem"](batch_size_per_image=32), 5)
    assert type(ohem.roi_heads) is SamplingRoIHeads and type(ohem.roi_heads.sampler) is OHEMSampler
    assert ohem.roi_heads.sampler.bg_iou_low == 0.0 and ohem.roi_heads.sampler.batch_size_per_image == 32
    heuristic = build_detector(small_cfg(), SAMPLERS["heuristic"](), 5)
    assert type(heuristic.roi_heads.sampler) is HeuristicSampler and heuristic.roi_heads.sampler.bg_iou_low == 0.1
    assert heuristic.roi_heads.sampler.fg_fraction == 0.25
    tv_default = build_detector(small_cfg(), SAMPLERS["heuristic"](batch_size_per_image=512, bg_iou_low=0.0), 5)
    assert tv_default.roi_heads.sampler.bg_iou_low == 0.0 and tv_default.roi_heads.sampler.batch_size_per_image == 512
    with pytest.raises(TypeError, match="^enable_sampler: expected an ohem.SamplerBase, got str$"):
        build_detector(small_cfg(), "random", 5)  # type: ignore[arg-type]


def test_torchvision_model_trains_with_ohem():
    cfg = small_cfg(name="fasterrcnn_mobilenet_v3_large_fpn")
    model = build_detector(cfg, SAMPLERS["ohem"](batch_size_per_image=16), 5).train()
    assert model.roi_heads.box_predictor.cls_score.out_features == 6  # 5 classes + background
    ds = SyntheticShapes("train", 2, image_size=128)
    images, targets = zip(*[ds[i] for i in range(2)])
    with EventStorage() as storage:
        losses = model(list(images), list(targets))
    assert torch.isfinite(sum(losses.values()))
    assert torch.bincount(storage.latest("roi_mining")["image_ids"]).tolist() == [16, 16]


def test_backbone_weights_from_a_local_file(tmp_path):
    torch.manual_seed(1)
    source = build_model(small_cfg(name="fasterrcnn_mobilenet_v3_large_fpn"), 5)
    path = tmp_path / "backbone.pth"
    torch.save(source.backbone.body.state_dict(), path)
    torch.manual_seed(2)
    loaded = build_model(small_cfg(name="fasterrcnn_mobilenet_v3_large_fpn", backbone_weights=str(path)), 5)
    for key, value in source.backbone.body.state_dict().items():
        assert torch.equal(value, loaded.backbone.body.state_dict()[key]), key
    small = build_model(small_cfg(), 5)
    torch.save({"state_dict": small.backbone.state_dict()}, tmp_path / "small.pth")
    again = build_model(small_cfg(backbone_weights=str(tmp_path / "small.pth")), 5)
    assert torch.equal(again.backbone.stem[0].weight, small.backbone.stem[0].weight)


def test_backbone_weights_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth: no such file"):
        build_model(small_cfg(backbone_weights=str(tmp_path / "missing.pth")), 5)
    torch.save({"unrelated.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="other.pth: no key matches"):
        build_model(small_cfg(backbone_weights=str(tmp_path / "other.pth")), 5)

    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"x": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="evil.pth: cannot be loaded safely"):
        build_model(small_cfg(backbone_weights=str(tmp_path / "evil.pth")), 5)
    with pytest.raises(ValueError, match="no ImageNet weights"):
        build_model(small_cfg(backbone_weights="imagenet"), 5)
    with pytest.raises(ValueError, match=r"Input should be 'small', .*'fast_rcnn_small_wide'"):
        small_cfg(name="yolo")  # a model name is checked where the config is made


def test_model_names_of_the_config_are_the_builders():
    # config.py cannot import the models (a cycle), so it lists their names; this keeps the two equal.
    assert sorted(typing.get_args(ModelName)) == sorted(BUILDERS)


def test_unknown_model_name_is_a_one_line_error_when_the_config_is_loaded():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["model.name=yolo"])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("override 'model.name=yolo': model.name must be one of small, ") and "'yolo'" in message


def test_imagenet_backbone_goes_through_torchvision_weights_api(monkeypatch):
    # The real call downloads; here we only check that torchvision is asked for its default weights.
    seen = {}

    def fake_builder(**kwargs):
        seen.update(kwargs)
        return "model"

    monkeypatch.setattr(detection, "fasterrcnn_resnet50_fpn", fake_builder)
    assert build_model(small_cfg(name="fasterrcnn_resnet50_fpn", backbone_weights="imagenet"), 20) == "model"
    assert seen["weights_backbone"] == "DEFAULT" and seen["weights"] is None and seen["num_classes"] == 21


def test_wide_head_is_vgg16_shaped_and_mines():
    cfg = ModelConfig(name="fast_rcnn_small_wide", min_size=128, max_size=128)
    model = build_detector(cfg, SAMPLERS["ohem"](batch_size_per_image=16), 5).train()
    assert model.roi_heads.box_roi_pool.output_size == (7, 7)
    assert model.roi_heads.box_head.fc6.in_features == 96 * 7 * 7 and model.roi_heads.box_head.fc7.out_features == 4096
    assert model.roi_heads.box_predictor.cls_score.in_features == 4096
    ds = SyntheticShapes("train", 2, image_size=128)
    images, targets = zip(*[ds[i] for i in range(2)])
    torch.manual_seed(0)
    corners = torch.rand(40, 2) * 60
    random_boxes = torch.cat([corners, corners + 8 + torch.rand(40, 2) * 50], dim=1)
    proposals = [torch.cat([t["boxes"], random_boxes]) for t in targets]
    with EventStorage() as storage:
        losses = model(list(images), list(targets), proposals)
    assert torch.isfinite(losses["loss_classifier"]) and torch.isfinite(losses["loss_box_reg"])
    assert torch.bincount(storage.latest("roi_mining")["image_ids"]).tolist() == [16, 16]
