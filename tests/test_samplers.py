"""The sampler plug-in contract (docs/SAMPLERS.md, "Write your own sampler"): the registry, a sampler
written outside the package, rows in any order, weights, torch's RNG, state in checkpoints, the loss
dict holding losses only, and the documented example run exactly as written."""

import dataclasses
import importlib
import re
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import Tensor

import ohem
from ohem.checkpoint import load_checkpoint, save_checkpoint
from ohem.engine.trainer import restore_sampler
from ohem.events import EventStorage
from ohem.mining import (
    SAMPLERS,
    LabelledRoIs,
    ReadOnlyPassSampler,
    Sample,
    SamplerBase,
    SamplingRoIHeads,
    TrainedRows,
    each_image,
    enable_sampler,
    label_rois,
    register_sampler,
    sampler_class,
)
from ohem.mining.rois import unreduced_loss_terms, weighted_roi_loss
from tests.conftest import builtin_methods
from tests.test_roi_heads import batch, heads_inputs, small_model

DOCS = Path(__file__).resolve().parent.parent / "docs" / "SAMPLERS.md"
STATS = {"ohem_score_spread", "ohem_all_roi_loss", "ohem_mined_loss", "ohem_mined_fg_fraction", "ohem_all_fg_fraction"}


@pytest.mark.parametrize("method", builtin_methods())
def test_every_built_in_sampler_is_one_file_named_after_it_with_described_settings(method):
    cls = SAMPLERS[method]
    assert cls.__module__ == f"ohem.mining.samplers.{method.replace('-', '_')}" and cls.method == method
    sampler = cls()
    settings = {k: v for k, v in sampler.to_dict().items() if k != "method"}
    assert cls(**settings) == sampler  # its YAML section builds it back
    undescribed = [name for name, info in cls.__pydantic_fields__.items() if not info.description]
    assert undescribed == []  # docs/CONFIG.md is generated from the descriptions
    assert sampler.stretched(2.0).method == method and sampler.state_dict() == {}
    assert (sampler.readonly is not None) == isinstance(sampler, ReadOnlyPassSampler)


def test_settings_are_checked_strictly_and_prefixes_are_gone():
    with pytest.raises(ValidationError, match="batch_size_per_image"):
        SAMPLERS["ohem"](batch_size_per_image=64.5)
    with pytest.raises(ValidationError, match="libra_bins"):
        SAMPLERS["libra"](libra_bins=3)  # unknown key: it is bins now
    with pytest.raises(ValidationError, match="nms_iou"):
        SAMPLERS["ohem"](nms_iou=float("nan"))
    with pytest.raises(ValidationError, match=r"sampler\.floor_thr must be below 0.5"):
        SAMPLERS["libra"](floor_thr=0.5)
    assert SAMPLERS["libra"](bins=5).bins == 5 and SAMPLERS["heuristic"]().bg_iou_low == 0.1


def test_stretched_scales_the_iteration_counts_half_up():
    assert SAMPLERS["ohem"](start=100).stretched(2.5).start == 250
    assert SAMPLERS["ohem"](start=3).stretched(0.5).start == 2  # 1.5 rounds up
    assert SAMPLERS["ohem-presample"](start=10, factor=2).stretched(2).factor == 2
    assert SAMPLERS["is-mix"](lambda_decay_iterations=1).stretched(0.1).lambda_decay_iterations == 1


def test_an_unknown_method_is_a_one_line_error_and_a_name_is_registered_once():
    with pytest.raises(ValueError, match=r"^sampler.method: unknown sampler 'random'; choose one of .*ohem.*$"):
        sampler_class("random")
    with pytest.raises(TypeError, match="not a subclass of ohem.SamplerBase"):
        register_sampler("x")(dict)  # type: ignore[type-var]
    with pytest.raises(ValueError, match="'ohem' is already ohem.mining.samplers.ohem.OHEMSampler"):

        @register_sampler("ohem")
        class Other(SamplerBase):
            pass


class FirstRowsWeighted(SamplerBase):
    """A sampler from outside the package: rows 0, 2, 4 of each image, weights 1, 2, 3, in the image order
    of ``order`` (``reversed``: the last image's rows first; ``shuffled``: any order at all)."""

    order: str = "sorted"
    """sorted | reversed | shuffled."""
    weighted: bool = True
    """Weights 1, 2, 3 (else None)."""

    def __post_init__(self) -> None:
        self.seen: list = []

    def sample(self, rois: LabelledRoIs, per_roi, iteration) -> Sample:
        self.seen.append((per_roi, iteration))
        rows = each_image(rois, lambda image: image[:6:2])
        weights = torch.tensor([1.0, 2.0, 3.0]).repeat(rois.num_images) if self.weighted else None
        if self.order == "reversed":  # each image's rows in their order, the images last first
            order = torch.cat([torch.arange(3 * i, 3 * i + 3) for i in reversed(range(rois.num_images))])
        elif self.order == "shuffled":
            order = torch.tensor([5, 0, 3, 1, 4, 2])
        else:
            order = torch.arange(rows.numel())
        return Sample(rows[order], None if weights is None else weights[order])


register_sampler("test-first-rows")(FirstRowsWeighted)


def test_a_sampler_plugs_in_as_a_copy_and_its_weights_multiply_the_terms_over_the_row_count():
    model = small_model()
    sampler = FirstRowsWeighted()
    heads = enable_sampler(model, sampler).roi_heads.train()
    assert isinstance(heads, SamplingRoIHeads) and heads.sampler == sampler and heads.sampler is not sampler
    features, proposals, shapes, targets = heads_inputs()
    inputs = []
    heads.box_head.register_forward_hook(lambda m, i, o: inputs.append(i[0]))
    with EventStorage(7) as storage:
        _, losses = heads(features, proposals, shapes, targets)
    assert heads.sampler.seen == [(None, 7)] and sampler.seen == []  # no read-only pass asked for, none ran
    assert len(inputs) == 1 and inputs[0].shape[0] == 6  # the trainable pass alone, on the 6 rows
    assert set(losses) == {"loss_classifier", "loss_box_reg"} and "roi_mining" not in storage.records
    rois = label_rois(heads, proposals, targets, 0.0)
    rows = each_image(rois, lambda image: image[:6:2])
    boxes, _, labels, box_targets = rois.per_image(rows)
    with torch.no_grad():
        logits, deltas = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, boxes, shapes)))
    cls, box = unreduced_loss_terms(logits, deltas, torch.cat(labels), torch.cat(box_targets), heads.box_loss_beta)
    weights = torch.tensor([1.0, 2.0, 3.0, 1.0, 2.0, 3.0])
    # divided by the number of rows (6), not by the sum of the weights (12)
    torch.testing.assert_close(losses["loss_classifier"].detach(), (cls * weights).sum() / 6)
    torch.testing.assert_close(losses["loss_box_reg"].detach(), (box * weights).sum() / 6)


def test_weights_of_one_are_torchvisions_loss_and_weights_of_two_double_it():
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


def train_losses(sampler: SamplerBase, steps: int = 3) -> list[dict[str, float]]:
    """Each step's losses of a few SGD steps of the small detector with ``sampler``, from one seed."""
    model = enable_sampler(small_model(), sampler)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images, targets = batch()
    torch.manual_seed(1)
    out = []
    for it in range(steps):
        with EventStorage(it):
            losses = model.train()(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        out.append({k: v.item() for k, v in losses.items()})
    return out


@pytest.mark.parametrize("weighted", [False, True])
def test_rows_out_of_image_order_train_as_the_rows_sorted(weighted):
    sorted_rows = train_losses(FirstRowsWeighted(weighted=weighted))
    # images out of order, each image's rows in order: the head's stable sort gives the same rows exactly
    assert train_losses(FirstRowsWeighted(order="reversed", weighted=weighted)) == sorted_rows
    # any order at all: the same rows, summed in another order within an image
    shuffled = train_losses(FirstRowsWeighted(order="shuffled", weighted=weighted))
    for got, want in zip(shuffled, sorted_rows):
        assert got.keys() == want.keys() and all(got[k] == pytest.approx(want[k], rel=1e-5) for k in want)


@pytest.mark.parametrize("method", builtin_methods())
def test_every_sampler_draws_from_torchs_rng(method):
    def step() -> dict[str, Tensor]:
        model = enable_sampler(small_model(), SAMPLERS[method](batch_size_per_image=8))
        images, targets = batch()
        torch.manual_seed(3)
        with EventStorage(0):
            losses = model.train()(images, targets)
        return {**losses, **model.roi_heads.last_statistics}

    first, second = step(), step()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_the_loss_dict_holds_losses_only_and_the_statistics_go_to_the_storage_and_the_heads():
    model = ohem.enable_ohem(small_model(), batch_size_per_image=16)
    images, targets = batch()
    with EventStorage(0) as storage:
        losses = model.train()(images, targets)
    assert all(key.startswith("loss_") for key in losses)
    heads = model.roi_heads
    assert set(heads.last_statistics) == STATS and not any(v.requires_grad for v in heads.last_statistics.values())
    assert storage.statistics == [heads.last_statistics]
    loss = sum(losses.values())  # torchvision's reference loop: the training loss
    torch.testing.assert_close(
        loss,
        losses["loss_classifier"] + losses["loss_box_reg"] + losses["loss_objectness"] + losses["loss_rpn_box_reg"],
    )


def test_a_gt_less_image_gives_finite_box_targets():
    heads = small_model().roi_heads
    _, proposals, _, targets = heads_inputs()
    targets[1] = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)}
    rois = label_rois(heads, proposals, targets, 0.0)
    assert bool(torch.isfinite(rois.box_targets).all())
    assert bool((rois.box_targets[rois.image_ids == 1] == 0).all()) and bool(
        (rois.labels[rois.image_ids == 1] == 0).all()
    )


class Counting(FirstRowsWeighted):
    """A sampler with state: the steps it sampled."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.steps = 0

    def sample(self, rois, per_roi, iteration) -> Sample:
        self.steps += 1
        return super().sample(rois, per_roi, iteration)

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]


register_sampler("test-counting")(Counting)


def test_a_samplers_state_is_saved_in_checkpoints_and_restored_on_resume(tmp_path):
    from ohem.config import Config

    model = enable_sampler(small_model(), Counting())
    images, targets = batch()
    for it in range(2):
        with EventStorage(it):
            model.train()(images, targets)
    heads = model.roi_heads
    assert heads.sampler.steps == 2
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model, Config(), ["a"], 2, sampler_state=heads.sampler.state_dict())
    resumed = enable_sampler(small_model(), Counting())
    restore_sampler(load_checkpoint(path), resumed, path)
    assert resumed.roi_heads.sampler.steps == 2
    # a sampler without state refuses a state (another sampler's checkpoint)
    plain = enable_sampler(small_model(), FirstRowsWeighted())
    with pytest.raises(ValueError, match=r"sampler: cannot be restored \(sampler test-first-rows: keeps no state"):
        restore_sampler(load_checkpoint(path), plain, path)


def test_a_sample_that_breaks_the_contract_is_a_one_line_error_naming_the_sampler():
    class FloatRows(FirstRowsWeighted):
        def sample(self, rois, per_roi, iteration) -> Sample:
            return Sample(super().sample(rois, per_roi, iteration).rows.float())

    class NoBoxLoss(FirstRowsWeighted):
        def roi_loss(self, trained: TrainedRows) -> dict:
            return {"loss_classifier": trained.class_logits.mean()}

    for cls, message in ((FloatRows, "rows must be a 1-D tensor of integer"), (NoBoxLoss, "missing loss_box_reg")):
        heads = enable_sampler(small_model(), register_sampler(f"test-{cls.__name__}")(cls)()).roi_heads.train()
        with pytest.raises(ValueError, match=f"^sampler test-{cls.__name__}: .*{message}"):
            heads(*heads_inputs())


class OwnLoss(FirstRowsWeighted):
    """A sampler that computes the trainable pass's loss itself: twice the weighted one, plus a term."""

    def roi_loss(self, trained: TrainedRows) -> dict:
        self.trained = trained
        cls, box = weighted_roi_loss(
            trained.class_logits, trained.box_regression, trained.labels, trained.box_targets, trained.beta, None
        )
        return {"loss_classifier": 2 * cls, "loss_box_reg": 2 * box, "loss_extra": trained.class_logits.mean()}


register_sampler("test-own-loss")(OwnLoss)


def test_a_sampler_with_roi_loss_gets_the_trainable_pass_and_its_loss_is_the_heads():
    heads = enable_sampler(small_model(), OwnLoss()).roi_heads.train()
    features, proposals, shapes, targets = heads_inputs()
    with EventStorage(0):
        _, losses = heads(features, proposals, shapes, targets)
    trained = heads.sampler.trained
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
    fail: bool = False
    """Raise after changing the weights."""

    def initialise(self, heads) -> None:
        torch.nn.init.zeros_(heads.box_predictor.cls_score.weight)
        if self.fail:
            raise RuntimeError("initialise failed")


register_sampler("test-initialising")(Initialising)


def test_enable_sampler_calls_initialise_and_a_failing_one_leaves_the_model_as_it_was():
    model = small_model()
    enable_sampler(model, Initialising())
    assert isinstance(model.roi_heads, SamplingRoIHeads) and not model.roi_heads.box_predictor.cls_score.weight.any()
    model = small_model()
    before, heads = model.roi_heads.box_predictor.cls_score.weight.clone(), model.roi_heads
    with pytest.raises(RuntimeError, match="initialise failed"):
        enable_sampler(model, Initialising(fail=True))
    assert model.roi_heads is heads and torch.equal(heads.box_predictor.cls_score.weight, before)


def test_the_documented_example_runs_as_written(tmp_path, monkeypatch, capsys):
    text = DOCS.read_text(encoding="utf-8")
    block = re.search(r"<!-- example: own-sampler -->\n```python\n(.*?)```\n<!-- /example -->", text, re.S)
    assert block is not None
    code = block.group(1)
    assert 25 <= len(code.splitlines()) <= 45
    # a module of its own, as `imports: [my_sampler]` would import it
    (tmp_path / "my_sampler.py").write_text(code, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    SAMPLERS.pop("hard-fg-random-bg", None)
    try:
        module = importlib.import_module("my_sampler")
        assert SAMPLERS["hard-fg-random-bg"] is module.HardForegroundRandomBackground
        assert module.HardForegroundRandomBackground.__pydantic_fields__["fg_weight"].description
        assert torch.isfinite(module.loss) and set(module.losses) == {
            "loss_classifier",
            "loss_box_reg",
            "loss_objectness",
            "loss_rpn_box_reg",
        }
        assert re.fullmatch(r"loss [\d.]+, all-RoI loss [\d.]+\n", capsys.readouterr().out)
    finally:
        SAMPLERS.pop("hard-fg-random-bg", None)
        sys.modules.pop("my_sampler", None)
