"""+M at test time: Fast R-CNN's image pyramid, each RoI pooled at the scale nearest 224 px square."""

import torch

from ohem.config import load_config
from ohem.mining import build_detector
from ohem.models.box_voting import iterative_box_regression_detect
from ohem.models.multiscale import ImagePyramid, pyramid_detect


def _model(size=128):
    torch.manual_seed(0)
    cfg = load_config(None, ["model.name=fast_rcnn_small", f"model.min_size={size}", "model.max_size=1000"])
    return build_detector(cfg.model, cfg.sampler, 5).eval()


def _boxes(n, low, high, image=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    wh = low + torch.rand(n, 2, generator=g) * (high - low)
    xy = torch.rand(n, 2, generator=g) * (image - wh)
    return torch.cat([xy, xy + wh], 1)


def _assert_same(a, b):
    for x, y in zip(a, b):
        assert torch.equal(x["labels"], y["labels"])
        torch.testing.assert_close(x["scores"], y["scores"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(x["boxes"], y["boxes"], rtol=1e-4, atol=1e-3)


def test_each_box_goes_to_the_scale_nearest_224_px_square():
    model = _model()
    pyramid = ImagePyramid(model, [torch.rand(3, 400, 400)], [400, 800])  # areas x1 and x4
    boxes = torch.tensor([[0.0, 0, 224, 224], [0, 0, 112, 112], [0, 0, 150, 150], [0, 0, 140, 140]])
    # 150^2 = 22500: |22500 - 50176| < |90000 - 50176|; 140^2 = 19600: |19600 - 50176| > |78400 - 50176|
    assert pyramid.scale_of([boxes])[0].tolist() == [0, 1, 0, 1]


def test_one_scale_equals_the_models_own_detections():
    model = _model()
    images = [torch.rand(3, 128, 128), torch.rand(3, 128, 128)]
    proposals = [_boxes(50, 10, 60, image=128, seed=1), _boxes(30, 10, 60, image=128, seed=2)]
    with torch.no_grad():
        own = model(images, proposals=proposals)
    _assert_same(pyramid_detect(model, images, proposals, [128]), own)


def test_rois_are_routed_to_their_scale():
    model = _model()
    images = [torch.rand(3, 400, 400)]
    large, small = [_boxes(40, 150, 300, seed=3)], [_boxes(40, 20, 70, seed=4)]
    # large boxes are nearest 224^2 at the 400 px scale, small ones at 800 px: the pyramid of both
    # scales gives each set the detections of its own scale alone
    _assert_same(pyramid_detect(model, images, large, [400, 800]), pyramid_detect(model, images, large, [400]))
    _assert_same(pyramid_detect(model, images, small, [400, 800]), pyramid_detect(model, images, small, [800]))
    mixed = pyramid_detect(model, images, [torch.cat([large[0], small[0]])], [400, 800])[0]
    assert (mixed["boxes"][:, 2:] <= 400).all() and (mixed["boxes"] >= 0).all()
    assert 0 < len(mixed["labels"]) <= model.roi_heads.detections_per_img and mixed["labels"].min() >= 1


def test_multi_scale_box_voting_with_one_scale_equals_single_scale_box_voting():
    model = _model()
    model.roi_heads.score_thresh = 0.17  # random init: probabilities near 1/6, a few candidates above
    images = [torch.rand(3, 128, 128)]
    proposals = [_boxes(60, 10, 60, image=128, seed=5)]
    single = iterative_box_regression_detect(model, images, proposals)
    pyramid = iterative_box_regression_detect(model, images, proposals, scales=[128])
    assert len(single[0]["boxes"]) > 0
    _assert_same(pyramid, single)
    two = iterative_box_regression_detect(model, images, proposals, scales=[96, 128])[0]
    assert (two["boxes"] >= 0).all() and (two["boxes"] <= 128).all()
