"""A warning for OHEM runs whose box head has collapsed: it scores every RoI alike, so it cannot
rank objects above background and the run will not learn to detect.

That is what OHEM from the first step did to the small 256-wide box head trained from random
weights on 2000 proposals per image (docs/BENCHMARKS.md, "When OHEM pays"): the std over all RoIs
of the foreground probability, averaged over 50 steps, fell below 0.001 by iteration 150-250 and
stayed at 0.0000 (the 2 collapsed runs logged with it). Heads that detect: 0.013 and up. A 4096-wide
head passed through 0.0027-0.01 for up to 250 steps and then learned (3 of 3 runs), hence the low
threshold. A random-sampling start (``sampler.start``) or a wider head avoided the collapse.
Two windows below the threshold are enough: collapsed runs logged on the CPU (2026-12-04, OHEM and
OHEM with a background prior, from scratch on dense proposals) had 50-step means 0.00017 then 0.00001
by iteration 300 (OHEM) and 0.00024 then 0.00001 by 250 (the prior), against healthy heads' 0.0027 and
up, so the warning comes by iteration 300 after a 100-step warm-up (with three windows: 350).
The mean loss over all RoIs is not the signal: it also levels off, or rises, in healthy runs once
mining starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

STALL_WINDOWS = 2  # windows in a row with a collapsed spread before a warning
COLLAPSED = 0.001  # std over all RoIs of the foreground probability below this: every RoI scored alike


@dataclass
class StallWatch:
    """Feed ``add`` each step's ``ohem_score_spread`` and ``ohem_all_roi_loss``; returns a one-line
    warning (once per run) when the means of the last ``STALL_WINDOWS`` windows of ``window`` steps
    after ``start`` all had a spread below ``COLLAPSED``."""

    window: int
    start: int = 0  # steps before this (lr warm-up, random sampling before sampler.start) are not watched
    spread: list[float] = field(default_factory=list)  # per-window means
    all_roi: list[float] = field(default_factory=list)
    _sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    warned: bool = False

    def add(self, iteration: int, score_spread: float, all_roi_loss: float) -> str | None:
        if iteration <= self.start or self.warned:
            return None
        self._sums = [self._sums[0] + score_spread, self._sums[1] + all_roi_loss, self._sums[2] + 1]
        if self._sums[2] < self.window:
            return None
        self.spread.append(self._sums[0] / self._sums[2])
        self.all_roi.append(self._sums[1] / self._sums[2])
        self._sums = [0.0, 0.0, 0.0]
        if len(self.spread) < STALL_WINDOWS or max(self.spread[-STALL_WINDOWS:]) >= COLLAPSED:
            return None
        self.warned = True
        return (
            f"iteration {iteration}: the box head scores every RoI alike (std of the foreground probability "
            f"over all RoIs {self.spread[-1]:.4f}, below {COLLAPSED} for {STALL_WINDOWS * self.window} "
            f"iterations; mean loss over all RoIs {self.all_roi[-1]:.3f}): it has collapsed (no such run of "
            f"ours recovered). Start mining later (sampler.start, e.g. a third of the run) or widen the "
            f"box head; see docs/BENCHMARKS.md, 'When OHEM pays'"
        )
