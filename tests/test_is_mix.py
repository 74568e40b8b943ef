"""The ``is-mix`` sampler: its weighted loss is an unbiased estimate of the mean RoI loss, lambda = 1 is
uniform, the schedule, NMS candidates, and the sampler in the head."""

import pytest
import torch
from pydantic import ValidationError

from ohem.events import EventStorage
from ohem.mining import SAMPLERS, ISMixSampler, LabelledRoIs, PerRoILoss, enable_sampler
from ohem.mining.samplers.is_mix import mixture_probabilities
from tests.test_roi_heads import grid_proposals, heads_inputs, small_model


def made_up_rois(counts: list[int], seed: int = 0) -> tuple[LabelledRoIs, PerRoILoss]:
    """Images of ``counts`` RoIs with skewed losses (a few large, many small), as the read-only pass gives."""
    g = torch.Generator().manual_seed(seed)
    n = sum(counts)
    boxes = grid_proposals(size=400, step=10, box=8)[:n]  # no two overlap
    image_ids = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])
    labels = (torch.rand(n, generator=g) < 0.2).long()
    cls = torch.empty(n).exponential_(1.0, generator=g) ** 3  # heavy-tailed
    box = torch.where(labels > 0, torch.rand(n, generator=g), 0.0)
    zeros = torch.zeros(n, dtype=torch.long)
    rois = LabelledRoIs(boxes, image_ids, zeros, labels, torch.zeros(n, 4), boxes, len(counts))
    return rois, PerRoILoss(cls, box, torch.rand(n, generator=g), None)


def sampler(mix: float, **settings) -> ISMixSampler:
    settings = {"nms_iou": None, **settings}
    return SAMPLERS["is-mix"](batch_size_per_image=16, lambda_uniform=mix, **settings)


def estimates(s: ISMixSampler, rois: LabelledRoIs, losses: PerRoILoss, draws: int) -> torch.Tensor:
    """The head's loss (weighted sum over the number of rows) of ``draws`` independent samples."""
    loss = losses.cls + losses.box
    out = []
    for _ in range(draws):
        sample = s.sample(rois, losses, 0)
        weights = torch.ones(sample.rows.numel()) if sample.weights is None else sample.weights
        out.append((weights * loss[sample.rows]).sum() / sample.rows.numel())
    return torch.stack(out)


@pytest.mark.parametrize("mix", [0.1, 0.5, 1.0])
def test_weighted_loss_is_an_unbiased_estimate_of_the_mean_roi_loss(mix):
    torch.manual_seed(0)
    rois, losses = made_up_rois([300])
    mean = (losses.cls + losses.box).mean()
    got = estimates(sampler(mix), rois, losses, 2000)
    standard_error = got.std() / len(got) ** 0.5
    assert abs(got.mean() - mean) < 3 * standard_error
    if mix < 1:  # the same draws unweighted are far off: the weights are what makes it unbiased
        biased = estimates(sampler(mix, weights="none"), rois, losses, 2000)
        assert biased.mean() - mean > 10 * biased.std() / len(biased) ** 0.5


def test_two_images_estimate_the_mean_of_each_images_mean():
    torch.manual_seed(0)
    rois, losses = made_up_rois([100, 250])
    loss = losses.cls + losses.box
    per_image = (loss[:100].mean() + loss[100:].mean()) / 2
    got = estimates(sampler(0.3), rois, losses, 2000)
    assert abs(got.mean() - per_image) < 3 * got.std() / len(got) ** 0.5


def test_lambda_one_is_uniform_and_none_weights_are_none():
    rois, losses = made_up_rois([50, 30])
    loss = losses.cls + losses.box
    assert torch.allclose(mixture_probabilities(loss[:50], 1.0), torch.full((50,), 1 / 50))
    sample = sampler(1.0).sample(rois, losses, 0)
    # B = 16 draws per image; a RoI drawn k times is one row of weight k (x rows / draws: the head divides by
    # the rows), and each draw's weight is 1 / (N x 1/N) = 1
    rows = sample.rows.numel()
    draws = sample.weights * 32 / rows
    assert torch.allclose(draws, draws.round()) and (draws >= 1).all() and int(draws.sum().round()) == 32
    assert torch.allclose(sample.weights.sum(), torch.tensor(float(rows)))
    per_image = torch.bincount(rois.image_ids[sample.rows]).tolist()
    assert all(1 <= n <= 16 for n in per_image) and len(set(sample.rows.tolist())) == rows  # no row twice
    assert torch.equal(rois.image_ids[sample.rows], rois.image_ids[sample.rows].sort().values)  # image order
    unweighted = sampler(0.5, weights="none").sample(rois, losses, 0)  # weights: the draws only
    counts = unweighted.weights * 32 / unweighted.rows.numel()
    assert torch.allclose(counts, counts.round()) and int(counts.sum().round()) == 32
    # lambda 0: in proportion to the loss; zero losses give uniform
    assert torch.allclose(mixture_probabilities(torch.tensor([1.0, 3.0]), 0.0), torch.tensor([0.25, 0.75]))
    assert torch.allclose(mixture_probabilities(torch.zeros(4), 0.0), torch.full((4,), 0.25))
    assert (sampler(0.2).sample(rois, losses, 0).weights <= 1 / 0.2 + 1e-5).all()  # bounded by 1 / lambda


def test_lambda_decays_linearly_from_one_to_is_lambda():
    s = sampler(0.2, lambda_schedule="decay", lambda_decay_iterations=100)
    assert [s.mixture(i) for i in (0, 50, 100, 1000)] == pytest.approx([1.0, 0.6, 0.2, 0.2])
    assert sampler(0.2).mixture(0) == 0.2 and sampler(0.2).mixture(None) == 0.2  # constant
    with pytest.raises(RuntimeError, match="^sampler.lambda_schedule=decay needs the iteration"):
        s.sample(*made_up_rois([10]), None)
    with pytest.raises(ValidationError, match="lambda_uniform"):
        SAMPLERS["is-mix"](lambda_uniform=1.5)
    with pytest.raises(ValidationError, match="weights"):
        SAMPLERS["is-mix"](weights="ht")


def test_with_nms_only_survivors_are_drawn():
    rois, losses = made_up_rois([40])
    rois.boxes[1] = rois.boxes[0] + 0.1  # row 1 overlaps row 0 (IoU > 0.9)
    losses.cls[0], losses.cls[1] = 50.0, 40.0  # row 1 has the lower loss: NMS drops it
    s = sampler(0.0, nms_iou=0.7)
    assert (
        1 not in s.candidates(rois, losses.cls + losses.box).tolist() and s.candidates(rois, losses.cls).numel() == 39
    )
    drawn = torch.cat([s.sample(rois, losses, 0).rows for _ in range(20)])
    assert 1 not in drawn.tolist() and 0 in drawn.tolist()


def test_is_mix_in_the_head_trains_on_b_weighted_draws_per_image():
    model = small_model()
    cfg = SAMPLERS["is-mix"](batch_size_per_image=20, lambda_uniform=0.5, nms_iou=None)
    heads = enable_sampler(model, cfg).roi_heads.train()
    assert heads.sampler.readonly is not None  # it ranks by the read-only pass's losses
    features, proposals, shapes, targets = heads_inputs()
    with EventStorage(0) as storage:
        _, losses = heads(features, proposals, shapes, targets)
    mined = storage.latest("roi_mining")
    assert all(1 <= n <= 20 for n in torch.bincount(mined["image_ids"]).tolist())  # 20 draws, a row per RoI drawn
    assert losses["loss_classifier"].requires_grad and "ohem_all_roi_loss" in heads.last_statistics


def test_memory_follows_the_roi_count_not_batch_size_per_image():
    rois, losses = made_up_rois([10, 5])
    sample = SAMPLERS["is-mix"](batch_size_per_image=100_000, nms_iou=None, weights="none").sample(rois, losses, 0)
    assert sample.rows.numel() <= 15  # 2 x 100,000 draws: at most one row per RoI
    draws = sample.weights * 200_000 / sample.rows.numel()  # the weights carry how often each was drawn
    assert int(draws.sum().round()) == 200_000
