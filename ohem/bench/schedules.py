"""``ohem bench --schedules``: the arms' final mAP against the length of their run, the verdict on
whether the best sampler's lead over random sampling (tv-default) holds, grows or vanishes as the
runs get longer, and its plot. Everything here reads ``accuracy.csv`` rows; nothing trains."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from ohem.bench.spec import schedule_of
from ohem.bench.summary import RANDOM, SPREAD_RULE, mean_sd, mean_sd_text, number, table
from ohem.util import atomic_open

Row = dict[str, Any]


def by_schedule(acc: list[Row], arms: list[str]) -> dict[float, dict[str, list[float]]]:
    """schedule -> arm -> mAP (%) per seed, in row order; arms without a value left out."""
    out: dict[float, dict[str, list[float]]] = {}
    for r in acc:
        value = number(r.get("mAP"))
        if r["arm"] in arms and value is not None:
            out.setdefault(schedule_of(r), {}).setdefault(r["arm"], []).append(value * 100)
    return dict(sorted(out.items()))


def _iterations(acc: list[Row], k: float) -> str:
    values = sorted({int(r["iterations"]) for r in acc if schedule_of(r) == k})
    return "/".join(map(str, values)) + " it." if values else ""


def schedule_markdown(acc: list[Row], arms: list[str]) -> str:
    """The section: a table arm x schedule (mean ± sd over seeds), each arm's lead over tv-default
    per schedule, and the verdict."""
    values = by_schedule(acc, arms)
    header = ["arm", *(f"{k:g}× ({_iterations(acc, k)})" for k in values)]
    rows = [[arm, *(mean_sd_text(values[k].get(arm, [])) for k in values)] for arm in arms]
    if RANDOM in arms:
        rows += [[f"{arm} − {RANDOM}", *(_lead_text(values[k], arm) for k in values)] for arm in arms if arm != RANDOM]
    return "\n".join(
        [
            "## mAP against schedule length",
            "",
            "Each arm's test mAP (%) at the end of runs of 1×, 2×, ... the config's length (lr steps, warm-up, "
            "the start of mining and the evaluations scaled with it); mean ± sd over seeds. A lead is the "
            "difference of the means, with the sum of the two sds (the spread) in brackets.",
            "",
            table(header, rows),
            "",
            schedule_verdict(values),
        ]
    )


def lead(at: dict[str, list[float]], arm: str, base: str = RANDOM) -> tuple[float, float | None] | None:
    """``arm``'s mean minus ``base``'s, and the spread (sum of the sds; None with one seed of either)."""
    if not at.get(arm) or not at.get(base):
        return None
    (m_arm, sd_arm), (m_base, sd_base) = mean_sd(at[arm]), mean_sd(at[base])
    return m_arm - m_base, None if sd_arm is None or sd_base is None else sd_arm + sd_base


def _lead_text(at: dict[str, list[float]], arm: str) -> str:
    found = lead(at, arm)
    if found is None:
        return "–"
    diff, spread = found
    return f"{diff:+.1f}" + ("" if spread is None else f" ({spread:.1f})")


def _standing(diff: float, spread: float | None) -> str:
    if spread is None:
        return "spread unknown (1 seed)"
    if diff > spread:
        return f"beyond the spread ({spread:.1f})"
    if diff < -spread:
        return f"{RANDOM} ahead beyond the spread ({spread:.1f})"
    return f"within the spread ({spread:.1f})"


def schedule_verdict(values: dict[float, dict[str, list[float]]]) -> str:
    """Does the best sampler's lead over tv-default at the shortest schedule hold, grow or vanish at the
    longest? The best sampler is the arm other than tv-default with the highest mean at the shortest
    schedule that has both."""
    both = [k for k, at in values.items() if RANDOM in at and len(at) > 1]
    if len(both) < 2:
        return f"Verdict: needs {RANDOM} and another arm at two schedules or more; not measured yet."
    first, last = both[0], both[-1]
    best = max((a for a in values[first] if a != RANDOM), key=lambda a: statistics.mean(values[first][a]))
    leads = {k: lead(values[k], best) for k in both}
    steps = "; ".join(
        f"at {k:g}× by {found[0]:+.1f}, {_standing(*found)}" for k, found in leads.items() if found is not None
    )
    text = f"Verdict: the best sampler at {first:g}×, {best}, leads {RANDOM} {steps}. "
    end, start = leads[last], leads[first]
    if end is None or start is None:
        return text + f"{best} has no run at {last:g}×: not measured yet."
    (diff_end, spread_end), (diff_start, spread_start) = end, start
    if spread_end is None or spread_start is None:
        trend = "grows" if diff_end > diff_start else "shrinks"
        return text + f"At {last:g}× the lead {trend}; with one seed it is not known whether beyond the spread."
    if diff_end < -spread_end:
        outcome = f"turns around: {RANDOM} leads at {last:g}×, beyond the spread"
    elif diff_end <= spread_end:
        outcome = f"vanishes: at {last:g}× the lead is within the seeds' spread"
    elif abs(diff_end - diff_start) <= max(spread_start, spread_end):
        outcome = f"holds: at {last:g}× the lead is beyond the spread and moved by no more than a spread"
    elif diff_end > diff_start:
        outcome = f"grows, beyond the spread at {last:g}×"
    else:
        outcome = f"shrinks but stays beyond the spread at {last:g}×"
    return text + f"So the lead {outcome}. Rule: {SPREAD_RULE}."


def plot_schedules(out: Path, acc: list[Row], arms: list[str]) -> list[Path]:
    """``map_vs_schedule.png``: left, each arm's mAP against its run's iterations (seeds faint, mean bold);
    right, each arm's lead over tv-default with the spread as error bars."""
    from matplotlib.figure import Figure

    values = by_schedule(acc, arms)
    if len(values) < 2:
        return []
    fig = Figure(figsize=(11, 4.5))
    left, right = fig.subplots(1, 2)
    for i, arm in enumerate(arms):
        colour = f"C{i % 10}"
        points = [
            (int(r["iterations"]), v * 100) for r in acc if r["arm"] == arm and (v := number(r["mAP"])) is not None
        ]
        if not points:
            continue
        left.plot(*zip(*points), "o", color=colour, alpha=0.3)
        xs = sorted({x for x, _ in points})
        left.plot(
            xs, [statistics.mean(y for x2, y in points if x2 == x) for x in xs], "o-", color=colour, lw=2, label=arm
        )
        leads = [(k, found) for k, at in values.items() if arm != RANDOM and (found := lead(at, arm)) is not None]
        if leads:
            ks = [k for k, _ in leads]
            right.errorbar(
                ks,
                [d for _, (d, _) in leads],
                yerr=[s or 0 for _, (_, s) in leads],
                fmt="o-",
                color=colour,
                capsize=4,
                label=arm,
            )
    left.set(xlabel="iterations of the run", ylabel="test mAP (%)", ylim=(0, 100), xscale="log")
    lengths = sorted({int(r["iterations"]) for r in acc if r["arm"] in arms})
    left.set_xticks(lengths, [str(n) for n in lengths])  # the run lengths themselves, not powers of ten
    left.minorticks_off()
    left.set_title("final mAP against run length", fontsize=10)
    right.axhline(0, color="black", lw=1)
    right.set(xlabel="schedule (× the config's run)", ylabel=f"mAP − {RANDOM} (points)", xscale="log")
    right.set_xticks(list(values), [f"{k:g}×" for k in values])
    right.minorticks_off()
    right.set_title(f"lead over {RANDOM} (bars: sum of the two sds)", fontsize=10)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    left.legend(fontsize=8, loc="lower right")
    if right.get_legend_handles_labels()[0]:
        right.legend(fontsize=8)
    fig.tight_layout()
    with atomic_open(out / "map_vs_schedule.png", binary=True) as f:
        fig.savefig(f, format="png", dpi=100)
    return [out / "map_vs_schedule.png"]
