"""A warning for OHEM runs that stop learning: the mean loss over all RoIs stops falling while the
mined RoIs' loss stays high.

That is what OHEM does when each image holds more hard RoIs that no model can fit (near-duplicate
boxes on both sides of the fg/bg IoU threshold) than it may keep: they take the whole budget at
every step, and the easy background is never trained on (docs/BENCHMARKS.md, "When OHEM pays").
A healthy run's all-RoI loss falls to a small fraction of its start; a stalled one levels off high.
"""

from __future__ import annotations

from dataclasses import dataclass, field

STALL_WINDOWS = 3  # windows without progress before a warning
PROGRESS = 0.95  # a window "makes progress" if it goes below this x the best loss before it
STILL_HIGH = 0.25  # all-RoI loss above this x its first window's: not converged, stalled


@dataclass
class StallWatch:
    """Feed ``add`` each step's ``ohem_all_roi_loss`` and ``ohem_mined_loss``; returns a one-line
    warning (once per run) when the last ``STALL_WINDOWS`` windows of ``window`` steps after
    ``start`` brought neither loss below ``PROGRESS`` x its best before them, and the all-RoI loss
    is still above ``STILL_HIGH`` x its first window's."""

    window: int
    start: int = 0  # steps before this (the lr warm-up) are not watched
    all_roi: list[float] = field(default_factory=list)  # per-window means
    mined: list[float] = field(default_factory=list)
    _sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    warned: bool = False

    def add(self, iteration: int, all_roi_loss: float, mined_loss: float) -> str | None:
        if iteration <= self.start or self.warned:
            return None
        self._sums = [self._sums[0] + all_roi_loss, self._sums[1] + mined_loss, self._sums[2] + 1]
        if self._sums[2] < self.window:
            return None
        self.all_roi.append(self._sums[0] / self._sums[2])
        self.mined.append(self._sums[1] / self._sums[2])
        self._sums = [0.0, 0.0, 0.0]
        if not self.stalled():
            return None
        self.warned = True
        steps = STALL_WINDOWS * self.window
        return (f"iteration {iteration}: OHEM's mean loss over all RoIs has not fallen for {steps} iterations "
                f"({self.all_roi[-1]:.3f}, {self.all_roi[-1] / self.all_roi[0]:.0%} of its first {self.window}) "
                f"while the mined RoIs' loss stays at {self.mined[-1]:.3f}: the budget may go to RoIs no model "
                f"can fit (near-duplicates across the fg/bg IoU threshold); see docs/BENCHMARKS.md, "
                f"'When OHEM pays'")  # fmt: skip

    def stalled(self) -> bool:
        if len(self.all_roi) <= STALL_WINDOWS:
            return False
        before, recent = slice(None, -STALL_WINDOWS), slice(-STALL_WINDOWS, None)
        flat = all(min(losses[recent]) >= PROGRESS * min(losses[before]) for losses in (self.all_roi, self.mined))
        return flat and self.all_roi[-1] > STILL_HIGH * self.all_roi[0]
