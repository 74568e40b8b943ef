"""A warning for OHEM runs whose box head has collapsed: it scores every RoI alike, so it cannot
rank objects above background and the run will not learn to detect.

That is what OHEM from the first step did to a box head trained from random weights on 2000
proposals per image (3 of 3 seeds; docs/BENCHMARKS.md, "When OHEM pays"): the std over all RoIs
of the foreground probability fell to 0.000-0.005, against 0.05-0.18 for heads that detect. A
random-sampling start (``sampler.ohem_start``) avoided it. The mean loss over all RoIs is not the
signal: it also levels off, or rises, in healthy runs once mining starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

STALL_WINDOWS = 3  # windows in a row with a collapsed spread before a warning
COLLAPSED = 0.01  # std over all RoIs of the foreground probability below this: every RoI scored alike


@dataclass
class StallWatch:
    """Feed ``add`` each step's ``ohem_score_spread`` and ``ohem_all_roi_loss``; returns a one-line
    warning (once per run) when the means of the last ``STALL_WINDOWS`` windows of ``window`` steps
    after ``start`` all had a spread below ``COLLAPSED``."""

    window: int
    start: int = 0  # steps before this (lr warm-up, random sampling before ohem_start) are not watched
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
        return (f"iteration {iteration}: the box head scores every RoI alike (std of the foreground probability "
                f"over all RoIs {self.spread[-1]:.4f}, below {COLLAPSED} for {STALL_WINDOWS * self.window} "
                f"iterations; mean loss over all RoIs {self.all_roi[-1]:.3f}): it has collapsed and will not "
                f"learn to detect. Start mining later (sampler.ohem_start, e.g. a third of the run); see "
                f"docs/BENCHMARKS.md, 'When OHEM pays'")  # fmt: skip
