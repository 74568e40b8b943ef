"""The warning for OHEM runs whose all-RoI loss stops falling while the mined loss stays high."""

import math

from ohem.mining.stall import StallWatch


def feed(watch, all_roi, mined, steps):
    warnings = []
    for it in range(1, steps + 1):
        message = watch.add(it, all_roi(it), mined(it))
        if message:
            warnings.append((it, message))
    return warnings


def test_a_healthy_run_that_converges_low_is_not_warned_about():
    watch = StallWatch(window=10)
    # falls from 1.5 to ~0.08 and levels off there: converged, not stalled
    warnings = feed(watch, lambda it: 0.08 + 1.42 * math.exp(-it / 15), lambda it: 0.9, 300)
    assert warnings == []
    assert len(watch.all_roi) == 30


def test_a_stalled_run_is_warned_about_once_when_three_windows_bring_nothing():
    watch = StallWatch(window=10, start=20)
    # falls until iteration 44, then stays at 0.63 (64 % of the first window's mean) with mined 1.25
    all_roi = lambda it: max(0.63, 1.5 - 0.02 * it)  # noqa: E731
    warnings = feed(watch, all_roi, lambda it: 1.25, 400)
    assert len(warnings) == 1
    iteration, message = warnings[0]
    # windows end at 30, 40, ...; the one ending at 50 is the best before the plateau (~0.64), and
    # the three after it (60, 70, 80) bring nothing below 0.95 x that
    assert iteration == 80
    assert watch.all_roi[0] == sum(all_roi(it) for it in range(21, 31)) / 10  # warm-up steps not counted
    assert message.startswith("iteration 80: OHEM's mean loss over all RoIs has not fallen for 30 iterations (0.630")
    assert "stays at 1.250" in message


def test_a_plateau_that_the_mined_loss_still_falls_through_is_not_a_stall():
    watch = StallWatch(window=10)
    warnings = feed(watch, lambda it: 0.7, lambda it: 2.0 * 0.97**it, 200)
    assert warnings == []
