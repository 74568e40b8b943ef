"""The warning for OHEM runs whose box head collapses (every RoI scored alike), and the statistic it
reads: the spread over all RoIs of the read-only pass's foreground probability."""

import torch

from ohem.mining import enable_ohem
from ohem.mining.stall import COLLAPSED, StallWatch
from tests.test_roi_heads import heads_inputs, small_model


def feed(watch, spread, all_roi, steps):
    warnings = []
    for it in range(1, steps + 1):
        message = watch.add(it, spread(it), all_roi(it))
        if message:
            warnings.append((it, message))
    return warnings


def test_a_head_that_keeps_ranking_rois_is_not_warned_about_even_when_its_loss_levels_off():
    watch = StallWatch(window=10, start=20)
    # all-RoI loss flat (or rising, as once mining starts), but the scores spread: a healthy head
    warnings = feed(watch, lambda it: 0.05 + 0.0001 * it, lambda it: 0.3 + 0.0002 * it, 500)
    assert warnings == []
    assert len(watch.spread) == 48  # (500 - 20) / 10 windows after the start


def test_a_collapsed_head_is_warned_about_once_after_two_windows():
    watch = StallWatch(window=10, start=20)
    # the spread falls from 0.03 and stays at 0.0002 from iteration 40 on
    spread = lambda it: max(0.0002, 0.03 - 0.00075 * it)  # noqa: E731
    warnings = feed(watch, spread, lambda it: 0.75, 400)
    assert len(warnings) == 1
    iteration, message = warnings[0]
    # windows 21-30 and 31-40 are above 0.001; 41-50 and 51-60 below: the warning at 60
    assert [round(s, 4) for s in watch.spread[:4]] == [0.0109, 0.0034, 0.0002, 0.0002]
    assert iteration == 60
    assert message.startswith(
        "iteration 60: the box head scores every RoI alike (std of the foreground "
        "probability over all RoIs 0.0002, below 0.001 for 20 iterations; mean loss over "
        "all RoIs 0.750)"
    )
    assert "sampler.start" in message


def test_a_head_that_is_flat_for_a_while_and_recovers_is_not_warned_about():
    watch = StallWatch(window=50, start=100)
    # the 4096-wide head of docs/BENCHMARKS.md, seed 2: 50-step means 0.0027-0.0048 until 300, then rising
    means = {150: 0.0035, 200: 0.0033, 250: 0.0027, 300: 0.0027, 350: 0.0095, 400: 0.0302}
    warnings = feed(watch, lambda it: means.get(50 * -(-it // 50), 0.04), lambda it: 0.6, 600)
    assert warnings == []
    assert [round(s, 4) for s in watch.spread[:6]] == [0.0035, 0.0033, 0.0027, 0.0027, 0.0095, 0.0302]


def test_the_collapses_logged_on_dense_proposals_are_warned_about_by_iteration_300():
    # 50-step means of the read-only pass's score spread after the 100-step warm-up (bench_dense from
    # scratch, seed 0, 2026-12-04): OHEM, and OHEM with the background prior
    for means, expected in (([0.00176, 0.00126, 0.00017, 0.00001, 0.0], 300), ([0.00419, 0.00024, 0.00001], 250)):
        watch = StallWatch(window=50, start=100)
        warnings = feed(watch, lambda it, m=means: m[min((it - 101) // 50, len(m) - 1)], lambda it: 0.7, 400)
        assert [it for it, _ in warnings] == [expected]


def test_steps_before_the_start_are_not_watched():
    watch = StallWatch(window=10, start=100)
    assert feed(watch, lambda it: 0.0, lambda it: 0.7, 119) == []  # collapsed, but only 1 window watched
    assert watch.spread == [0.0]


def test_the_spread_is_logged_zero_for_a_head_that_scores_every_roi_alike():
    features, proposals, shapes, targets = heads_inputs()
    heads = enable_ohem(small_model(), batch_size_per_image=8).roi_heads.train()
    _, losses = heads(features, proposals, shapes, targets)
    with torch.no_grad():  # larger class weights than at init: a head whose scores differ by RoI
        heads.box_predictor.cls_score.weight.mul_(20)
    heads(features, proposals, shapes, targets)
    assert float(heads.last_statistics["ohem_score_spread"]) > COLLAPSED
    with torch.no_grad():  # the class scores no longer depend on the RoI: a collapsed head
        heads.box_predictor.cls_score.weight.zero_()
    heads(features, proposals, shapes, targets)
    assert float(heads.last_statistics["ohem_score_spread"]) < 1e-6
