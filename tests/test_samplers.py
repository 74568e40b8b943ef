"""The sampler plug-in contract: the table, a sampler written outside the package, weights."""

import dataclasses
import typing

import pytest
import torch

from ohem.config import SamplerConfig
from ohem.events import EventStorage
from ohem.mining import SAMPLERS, LabelledRoIs, Sample, SamplingRoIHeads, TrainedRows, build_sampler, enable_sampler
from ohem.mining.rois import unreduced_loss_terms, weighted_roi_loss
from tests.test_roi_heads import heads_inputs, small_model


def test_the_table_names_every_method_the_config_accepts():
    choices = typing.get_args(typing.get_type_hints(SamplerConfig)["method"])
    assert set(SAMPLERS) == set(choices)
    for name in SAMPLERS:
        sampler = build_sampler(SamplerConfig(method=name))
        assert hasattr(sampler, "sample") and hasattr(sampler, "bg_iou_low") and hasattr(sampler, "readonly")
    # which ones pay for a read-only pass
    needs_losses = {name for name in SAMPLERS if build_sampler(SamplerConfig(method=name)).readonly is not None}
    assert needs_losses == {"ohem", "ohem-presample", "ohem-stratified", "is-mix", "ohem-prior"}


class FirstRowsWeighted:
    """A sampler from outside the package: the first 3 rows of each image, weights 1, 2, 3."""

    bg_iou_low = 0.0
    readonly = None

    def __init__(self):
        self.seen = []

    def sample(self, rois: LabelledRoIs, losses, iteration) -> Sample:
        self.seen.append((losses, iteration))
        rows = torch.cat([torch.nonzero(rois.image_ids == i).squeeze(1)[:3] for i in range(rois.num_images)])
        return Sample(rows, torch.tensor([1.0, 2.0, 3.0]).repeat(rois.num_images))


def test_a_sampler_object_plugs_in_and_its_weights_weight_the_loss():
    model = small_model()
    sampler = FirstRowsWeighted()
    heads = enable_sampler(model, sampler).roi_heads.train()
    assert isinstance(heads, SamplingRoIHeads) and heads.sampler is sampler
    features, proposals, shapes, targets = heads_inputs()
    inputs = []
    heads.box_head.register_forward_hook(lambda m, i, o: inputs.append(i[0]))
    with EventStorage(7) as storage:
        _, losses = heads(features, proposals, shapes, targets)
    assert sampler.seen == [(None, 7)]  # no read-only pass was asked for, so none ran; the step's iteration
    assert len(inputs) == 1 and inputs[0].shape[0] == 6  # the trainable pass alone, on the 6 rows
    assert "ohem_mined_loss" not in losses and "roi_mining" not in storage.records
    # the same rows by hand: weighted sum of the per-RoI terms over the number of rows
    boxes = [torch.cat([p, t["boxes"]])[:3] for p, t in zip(proposals, targets)]
    with torch.no_grad():
        logits, deltas = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, boxes, shapes)))
    from ohem.mining import label_rois

    rois = label_rois(heads, proposals, targets, 0.0)
    rows = sampler.sample(rois, None, 0).rows
    cls, box = unreduced_loss_terms(logits, deltas, rois.labels[rows], rois.box_targets[rows], heads.box_loss_beta)
    weights = torch.tensor([1.0, 2.0, 3.0, 1.0, 2.0, 3.0])
    assert torch.allclose(losses["loss_classifier"], (cls * weights).sum() / 6, rtol=1e-5)
    assert torch.allclose(losses["loss_box_reg"], (box * weights).sum() / 6, rtol=1e-5, atol=1e-8)


def test_unweighted_loss_is_torchvisions_and_weights_of_one_agree_with_it():
    from torchvision.models.detection.roi_heads import fastrcnn_loss

    torch.manual_seed(0)
    logits, deltas = torch.randn(50, 6), torch.randn(50, 24)
    labels, targets = torch.randint(0, 6, (50,)), torch.randn(50, 4)
    cls, box = weighted_roi_loss(logits, deltas, labels, targets, 1 / 9, None)
    want_cls, want_box = fastrcnn_loss(logits, deltas, [labels], [targets])
    assert torch.equal(cls, want_cls) and torch.equal(box, want_box)  # bit for bit
    cls_1, box_1 = weighted_roi_loss(logits, deltas, labels, targets, 1 / 9, torch.ones(50))
    assert torch.allclose(cls_1, cls, rtol=1e-6) and torch.allclose(box_1, box, rtol=1e-6)
    cls_2, box_2 = weighted_roi_loss(logits, deltas, labels, targets, 1 / 9, torch.full((50,), 2.0))
    assert torch.allclose(cls_2, 2 * cls, rtol=1e-6) and torch.allclose(box_2, 2 * box, rtol=1e-6)


def test_an_unknown_method_is_a_one_line_error():
    cfg = SamplerConfig()
    object.__setattr__(cfg, "method", "random")  # past the config's own check, as a hand-made object could be
    with pytest.raises(
        ValueError,
        match=r"^sampler.method: unknown sampler 'random'; choose one of "
        r"heuristic, ohem, libra, ohem-presample, ohem-stratified, pisa, is-mix, ohem-prior$",
    ):
        build_sampler(cfg)


def test_rows_out_of_image_order_are_refused_rather_than_split_wrongly():
    class Shuffled(FirstRowsWeighted):
        def sample(self, rois, losses, iteration):
            sample = super().sample(rois, losses, iteration)
            return Sample(sample.rows.flip(0), None)

    heads = enable_sampler(small_model(), Shuffled()).roi_heads.train()
    with pytest.raises(ValueError, match="^sampler Shuffled: the sample's rows must be grouped image by image"):
        heads(*heads_inputs())


class Recording:
    """Another sampler, with each ``Sample`` it returned kept."""

    def __init__(self, inner):
        self.inner, self.bg_iou_low, self.readonly, self.samples = inner, inner.bg_iou_low, inner.readonly, []

    def sample(self, rois, losses, iteration) -> Sample:
        self.samples.append(self.inner.sample(rois, losses, iteration))
        return self.samples[-1]


STATS = ("score_spread", "all_roi_loss", "mined_loss", "mined_fg_fraction", "all_fg_fraction")  # ohem_*


@pytest.mark.parametrize("method", ["heuristic", "ohem"])
def test_default_samplers_train_on_torchvisions_loss_of_their_rows_bit_for_bit(method):
    """The loss path with the optional ``roi_loss`` hook, for a sampler without one, against a direct
    computation: torchvision's ``fastrcnn_loss`` over a second pooling of the sampled rows. (Also checked
    once against the code before the hook existed, commit d48a590: the same bits, gradients included.)"""
    from torchvision.models.detection.roi_heads import fastrcnn_loss

    from ohem.mining import label_rois

    model = small_model()
    sampler = Recording(build_sampler(SamplerConfig(method=method, batch_size_per_image=16, bg_iou_low=0.0)))
    heads = enable_sampler(model, sampler).roi_heads.train()
    features, proposals, shapes, targets = heads_inputs()
    with EventStorage(0):
        _, losses = heads(features, proposals, shapes, targets)
    rows = sampler.samples[0].rows
    assert sampler.samples[0].weights is None and rows.numel() == 32
    boxes, _, labels, box_targets = label_rois(heads, proposals, targets, 0.0).per_image(rows)
    logits, deltas = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, boxes, shapes)))
    want_cls, want_box = fastrcnn_loss(logits, deltas, labels, box_targets)
    assert torch.equal(losses["loss_classifier"], want_cls) and torch.equal(losses["loss_box_reg"], want_box)
    assert set(losses) == {"loss_classifier", "loss_box_reg"} | (
        {"ohem_" + k for k in STATS} if method == "ohem" else set()
    )


class OwnLoss(FirstRowsWeighted):
    """A sampler that computes the trainable pass's loss itself: twice the weighted one, plus a term."""

    def roi_loss(self, trained: TrainedRows) -> dict:
        self.trained = trained
        cls, box = weighted_roi_loss(
            trained.class_logits, trained.box_regression, trained.labels, trained.box_targets, trained.beta, None
        )
        return {"loss_classifier": 2 * cls, "loss_box_reg": 2 * box, "loss_extra": trained.class_logits.mean()}


def test_a_sampler_with_roi_loss_gets_the_trainable_pass_and_its_loss_is_the_heads():
    model = small_model()
    sampler = OwnLoss()
    heads = enable_sampler(model, sampler).roi_heads.train()
    features, proposals, shapes, targets = heads_inputs()
    with EventStorage(0):
        _, losses = heads(features, proposals, shapes, targets)
    trained = sampler.trained
    assert trained.heads is heads and trained.beta == heads.box_loss_beta
    assert trained.class_logits.requires_grad and trained.class_logits.shape == (6, 6)
    assert torch.equal(trained.labels, trained.rois.labels[trained.sample.rows])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_extra"}
    cls, _ = weighted_roi_loss(
        trained.class_logits, trained.box_regression, trained.labels, trained.box_targets, trained.beta, None
    )
    assert torch.equal(losses["loss_classifier"], 2 * cls)
    # the predicted boxes of deltas 0 are the RoIs themselves
    zero = dataclasses.replace(trained, box_regression=torch.zeros_like(trained.box_regression))
    rois = trained.rois.boxes[trained.sample.rows]
    assert torch.allclose(zero.predicted_boxes(trained.labels), rois, atol=1e-4)


class Initialising(FirstRowsWeighted):
    def __init__(self):
        super().__init__()
        self.initialised = []

    def initialise(self, heads) -> None:
        self.initialised.append(heads)


def test_enable_sampler_calls_initialise_once_with_the_new_heads():
    model = small_model()
    sampler = Initialising()
    enable_sampler(model, sampler)
    assert sampler.initialised == [model.roi_heads] and isinstance(model.roi_heads, SamplingRoIHeads)
