"""The ``ohem-prior`` sampler: OHEM whose classifier starts at P(background) = ``background_prior``."""

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from ohem.config import ModelConfig
from ohem.mining import SAMPLERS, OHEMPriorSampler, OHEMSampler, enable_sampler
from ohem.mining.samplers.ohem_prior import set_background_prior
from ohem.models import build_model


def detector(method: str, **settings) -> nn.Module:
    torch.manual_seed(0)
    return enable_sampler(build_model(ModelConfig(), 5), SAMPLERS[method](**settings))


def test_the_box_predictor_starts_at_the_background_prior():
    model = detector("ohem-prior")
    predictor = model.roi_heads.box_predictor
    assert isinstance(model.roi_heads.sampler, OHEMPriorSampler)
    with torch.no_grad():
        at_zero = predictor(torch.zeros(1, predictor.cls_score.in_features))[0].softmax(1)
        torch.manual_seed(1)
        at_random = predictor(torch.randn(4000, predictor.cls_score.in_features))[0].softmax(1)
    assert at_zero[0, 0].item() == pytest.approx(0.99, abs=1e-6)
    assert torch.allclose(at_zero[0, 1:], torch.full((5,), 0.002))  # the rest shared by the 5 classes
    assert at_random[:, 0].mean().item() == pytest.approx(0.99, abs=0.01)  # the weights' spread costs a little
    # only the classifier's bias changed: every other weight is the plain OHEM detector's
    plain = detector("ohem").state_dict()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, plain[k])]
    assert changed == ["roi_heads.box_predictor.cls_score.bias"]


def test_ohem_and_other_priors_are_unaffected():
    ohem = detector("ohem")
    assert type(ohem.roi_heads.sampler) is OHEMSampler
    torch.manual_seed(0)
    built = build_model(ModelConfig(), 5)
    assert torch.equal(ohem.roi_heads.box_predictor.cls_score.bias, built.roi_heads.box_predictor.cls_score.bias)
    half = detector("ohem-prior", background_prior=0.5).roi_heads.box_predictor
    with torch.no_grad():
        assert half(torch.zeros(1, 256))[0].softmax(1)[0, 0].item() == pytest.approx(0.5, abs=1e-6)


def test_ohem_prior_mines_as_ohem_does():
    prior = SAMPLERS["ohem-prior"](batch_size_per_image=32, nms_iou=0.5, start=7)
    ohem = SAMPLERS["ohem"](batch_size_per_image=32, nms_iou=0.5, start=7)
    assert isinstance(prior, OHEMSampler) and prior.background_prior == 0.99
    assert {k: v for k, v in vars(prior).items() if k != "background_prior"} == vars(ohem)


def test_background_prior_is_a_probability_strictly_between_0_and_1():
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValidationError, match="background_prior"):
            SAMPLERS["ohem-prior"](background_prior=bad)
    with pytest.raises(TypeError, match="^ohem-prior: the box predictor needs a cls_score Linear"):
        set_background_prior(nn.Linear(4, 4), 0.99)
