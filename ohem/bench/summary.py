"""What ``ohem bench`` makes of its CSVs: ``summary.md`` (the tables, a verdict written from the
numbers, the error counts) and the plots. Everything here reads rows; nothing trains."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ohem.bench.arms import builtin_arms
from ohem.evaluation.errors import KINDS
from ohem.util import atomic_open

Row = dict[str, Any]
BASELINES = ("heuristic", "tv-default")  # the arms every other arm is compared with
SPREAD_RULE = (
    "a lead counts as beyond the seeds' spread when it exceeds the sum of the two arms' sample standard "
    "deviations over seeds (a conservative rule: two arms whose seeds overlap never pass it)"
)


@dataclass
class Comparison:
    """The arms' test mAP (%, one value per seed) at one budget."""

    budget: str  # e.g. "equal iterations (60 each)"
    values: dict[str, list[float]]
    missing: list[str] = field(default_factory=list)  # arms that have no evaluation within the budget


def mean_sd(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None with one value: the spread is unknown)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def verdict(comparisons: list[Comparison]) -> str:
    """One paragraph: which arm wins at each budget, by how much, and whether it exceeds the seeds' spread."""
    sentences = [s for c in comparisons for s in (_sentence(c), _against_random(c)) if s]
    winners = [(_winner(c), c.budget.split(" (")[0]) for c in comparisons]
    winners = [(arm, budget) for arm, budget in winners if arm]
    if len({arm for arm, _ in winners}) > 1:
        sentences.append("So the winner depends on the budget: " + ", ".join(f"{a} at {b}" for a, b in winners) + ".")
    sentences.append(f"Rule: {SPREAD_RULE}.")
    return " ".join(sentences)


def _ranked(c: Comparison) -> list[str]:
    return sorted(c.values, key=lambda arm: statistics.mean(c.values[arm]), reverse=True)


def _winner(c: Comparison) -> str | None:
    """The arm with the highest mean, if there are two arms and it leads at the precision printed."""
    ranked = _ranked(c)
    if len(ranked) < 2:
        return None
    lead = statistics.mean(c.values[ranked[0]]) - statistics.mean(c.values[ranked[1]])
    return ranked[0] if lead >= 0.05 else None


def _sentence(c: Comparison) -> str:
    late = ""
    if c.missing:
        late = f" ({', '.join(c.missing)}: no evaluation within this budget; evaluate more often with train.eval_every)"
    ranked = _ranked(c)
    if not ranked:
        return f"At {c.budget} no arm has an evaluation{late}."
    if len(ranked) == 1:
        only = ranked[0]
        return f"At {c.budget} only {only} has an evaluation ({statistics.mean(c.values[only]):.1f} mAP){late}."
    (win, m_win, sd_win), (second, m_second, sd_second) = [(a, *mean_sd(c.values[a])) for a in ranked[:2]]
    if not _winner(c):
        return f"At {c.budget}, {win} and {second} tie at {m_win:.1f} mAP{late}."
    lead = m_win - m_second
    text = f"At {c.budget}, {win} wins with {m_win:.1f} mAP, {lead:.1f} points above {second} ({m_second:.1f})"
    if sd_win is None or sd_second is None:
        seeds = min(len(c.values[win]), len(c.values[second]))
        text += f"; with {seeds} seed the seeds' spread is unknown, so it is not known whether the lead exceeds it"
    elif lead > sd_win + sd_second:
        text += f", beyond the seeds' spread ({lead:.1f} > sd {sd_win:.1f} + {sd_second:.1f})"
    else:
        text += f", within the seeds' spread ({lead:.1f} <= sd {sd_win:.1f} + {sd_second:.1f}): not a clear win"
    return text + late + "."


RANDOM = "tv-default"  # the question users ask: does the winner beat random sampling (torchvision's default)?


def _against_random(c: Comparison) -> str:
    """The winner against tv-default, when tv-default ran but is neither the winner nor the runner-up
    (the winner's sentence already compares those two); "" otherwise."""
    win = _winner(c)
    if not win or RANDOM not in c.values or RANDOM in _ranked(c)[:2]:
        return ""
    (m_win, sd_win), (m_random, sd_random) = mean_sd(c.values[win]), mean_sd(c.values[RANDOM])
    lead = m_win - m_random
    text = f"Against random sampling ({RANDOM}, {m_random:.1f}) {win} leads by {lead:.1f}"
    if sd_win is None or sd_random is None:
        return text + ", with 1 seed of one of them: the spread is unknown."
    where, relation = ("beyond", ">") if lead > sd_win + sd_random else ("within", "<=")
    return text + f", {where} the seeds' spread ({lead:.1f} {relation} sd {sd_win:.1f} + {sd_random:.1f})."


def values_at(curves: list[Row], arms: list[str], key: str, limit: float) -> Comparison:
    """Each arm's mAP (%) per seed at its last evaluation with ``key`` (iteration or seconds) <= ``limit``."""
    last: dict[tuple[str, str], tuple[float, float]] = {}
    for r in curves:
        x, value = number(r.get(key)), number(r.get("mAP"))
        if r["arm"] in arms and x is not None and value is not None and x <= limit * (1 + 1e-9):
            seen = last.get((r["arm"], str(r["seed"])))
            if seen is None or x > seen[0]:
                last[(r["arm"], str(r["seed"]))] = (x, value * 100)
    values = {arm: [v for (a, _), (_, v) in sorted(last.items()) if a == arm] for arm in arms}
    return Comparison("", {a: v for a, v in values.items() if v}, [a for a, v in values.items() if not v])


def comparisons(acc: list[Row], curves: list[Row], cost: dict[str, Row], budget: str) -> list[Comparison]:
    """The arms at equal iterations and at equal training time. The budget the runs were given is
    compared on their final mAP; the other one on their curves, at the smallest budget all arms reached."""
    arms = list(dict.fromkeys(r["arm"] for r in acc))
    final = {arm: [v * 100 for r in acc if r["arm"] == arm and (v := number(r["mAP"])) is not None] for arm in arms}
    iterations = {r["arm"]: int(r["iterations"]) for r in acc}
    timed = {arm: iterations[arm] * float(cost[arm]["s_per_iter"]) for arm in arms if arm in cost}
    result = []
    if budget == "iterations":
        result.append(Comparison(f"equal iterations ({min(iterations.values())} each)", final))
        if timed:
            limit = min(timed.values())
            # seconds from the unrounded s/iter, so that the fastest arm's last evaluation is at exactly ``limit``
            exact = [
                {**r, "seconds": int(r["iteration"]) * float(cost[r["arm"]]["s_per_iter"])}
                for r in curves
                if r["arm"] in timed
            ]
            at_time = values_at(exact, list(timed), "seconds", limit)
            at_time.missing += [arm for arm in arms if arm not in timed]
            at_time.budget = (
                f"equal training time ({limit:.1f} s each at each arm's measured s/iter, read from "
                "the curves of runs scheduled by iterations: not runs given that time)"
            )
            result.append(at_time)
    else:
        seconds = [float(r["seconds"]) for r in acc if number(r.get("seconds")) is not None]
        each = f" ({statistics.mean(seconds):.1f} s each)" if seconds else ""
        result.append(Comparison(f"equal training time{each}", final))
        at_iterations = values_at(curves, arms, "iteration", min(iterations.values()))
        at_iterations.budget = (
            f"equal iterations ({min(iterations.values())} each, read from the curves of runs scheduled by time)"
        )
        result.insert(0, at_iterations)
    return result


SUMMARY_COLUMNS = [
    "arm",
    "seeds",
    "iterations",
    "train s",
    "mAP % (mean ± sd)",
    "per seed",
    "− heuristic",
    "− tv-default",
    "s/iter",
    "× heuristic",
    "× tv-default",
    "GFLOP/iter",
    "FLOPs × heuristic",
    "measured ÷ FLOPs",
    "RoI pooling MB/iter",
    "peak RSS MiB",
    "× heuristic",
    "mining share",
    "all-RoI loss",
]


def summary_markdown(
    title: str,
    arms: list[str],
    acc: list[Row],
    curves: list[Row],
    cost: dict[str, Row],
    budget: str,
    errors: list[Row] | None = None,
    extra: str = "",
    descriptions: dict[str, str] | None = None,
) -> str:
    """``summary.md``: the table per arm, the arms at both budgets, the verdict, ``extra`` (a section such
    as the schedules'), the error counts (``errors.csv`` rows, if any), the arms' ``descriptions`` (default:
    the built-in arms')."""
    maps = {a: [v * 100 for r in acc if r["arm"] == a and (v := number(r["mAP"])) is not None] for a in arms}
    rows = []
    for arm in arms:
        mine = [r for r in acc if r["arm"] == arm]
        c = cost.get(arm, {})
        rows.append(
            [
                arm,
                str(len(mine)),
                _join(r["iterations"] for r in mine),
                _join(_fmt(r.get("seconds"), 0) for r in mine),
                mean_sd_text(maps[arm]),
                ", ".join(f"{v:.1f}" for v in maps[arm]) or "–",
                *(_diff(maps, arm, base) for base in BASELINES),
                _cost_text(c),
                *(_ratio(cost, arm, base, "s_per_iter") for base in BASELINES),
                _fmt(c.get("gflop_per_iter"), 2),
                _ratio(cost, arm, "heuristic", "gflop_per_iter"),
                _over_flop_bound(cost, arm),
                _fmt(c.get("roi_pool_mb_per_iter"), 0),
                _fmt(c.get("peak_rss_mib"), 0),
                _ratio(cost, arm, "heuristic", "peak_rss_mib"),
                _percent(c.get("mining_share")),
                _fmt(_mean(r.get("train_roi_loss") for r in mine), 4),
            ]
        )
    found = comparisons(acc, curves, cost, budget) if acc else []
    budgets = [[arm, *(mean_sd_text(c.values.get(arm, [])) for c in found)] for arm in arms]
    parts = [
        f"# {title}",
        "",
        "mAP: the test metric of the config (train.eval_metric) in %; − heuristic / − tv-default: difference "
        "of the means in points; s/iter and peak RSS: the cost phase (each arm alone, all threads; s/iter the "
        "median of its repeats timed while the rest of the machine was quiet, ± (max − min) / median; **busy**: "
        "other processes used the CPU during every repeat, so it is not the arm's own time); × : ratio; "
        "train s: iterations × s/iter; mining share: the read-only pass and selection's part of the step; "
        "all-RoI loss: mean loss over all RoIs of training images at the last evaluation "
        "(train.roi_loss_images).",
        "",
        table(*without_empty_columns(SUMMARY_COLUMNS, rows)),
        "",
        *(f"**Warning:** {w}\n" for w in training_warnings(maps, curves)),
    ]
    if found:
        parts += [
            "## At equal iterations and at equal time",
            "",
            table(["arm", *(c.budget for c in found)], budgets),
            "",
            "## Verdict",
            "",
            verdict(found),
            "",
        ]
    if extra:
        parts += [extra, ""]
    if errors:
        parts += [errors_markdown(arms, errors), ""]
    if descriptions is None:
        descriptions = {name: arm.description for name, arm in builtin_arms().items()}
    parts += ["## Arms", "", *(f"- **{arm}**: {descriptions[arm]}" for arm in arms if arm in descriptions), ""]
    return "\n".join(parts)


UNTRAINED = 5.0  # mAP (%): below this every arm is still close to guessing
CLIMBING = 3.0  # mAP points gained between an arm's last two evaluations: still far from its end


def training_warnings(maps: dict[str, list[float]], curves: list[Row]) -> list[str]:
    """Lines that belong before any verdict: every arm nearly untrained, or every arm still climbing."""
    means = {arm: statistics.mean(v) for arm, v in maps.items() if v}
    if not means:
        return []
    if max(means.values()) < UNTRAINED:
        return [
            f"every arm is below {UNTRAINED:g} mAP (best {max(means.values()):.1f}): the detectors are barely "
            "trained, so a ranking between them says nothing; train longer (solver.iterations) before comparing."
        ]
    gains = {}
    for arm in means:
        series = _series(curves, [arm], "iteration", "mAP").get(arm, {})
        last_two = [points[-2:] for points in series.values() if len(points) >= 2]
        if last_two:
            gains[arm] = statistics.mean(b[1] - a[1] for a, b in last_two)
    if gains and len(gains) == len(means) and min(gains.values()) >= CLIMBING:
        return [
            f"every arm's mAP still rose by {min(gains.values()):.1f} points or more between its last two "
            "evaluations: the runs are far from converged, and a longer schedule may change the ranking "
            "(ohem bench --schedules 1 2 4, or more solver.iterations)."
        ]
    return []


def errors_markdown(arms: list[str], errors: list[Row]) -> str:
    """The error-phase section: each arm's count of each kind, mean over its seeds."""
    scores = ", ".join(dict.fromkeys(str(r["score"]) for r in errors))
    rows = []
    for arm in arms:
        mine = [r for r in errors if r["arm"] == arm]
        if mine:
            rows.append([arm, str(len(mine)), *(_fmt(_mean(r[kind] for r in mine), 1) for kind in KINDS)])
    return "\n".join(
        [
            "## What the detectors get wrong",
            "",
            f"Every test detection scoring >= {scores} put in the first kind of error that fits "
            "(`ohem.evaluation.errors`, IoU 0.5); missed: ground-truth boxes (not difficult) that no detection "
            "matched. Counts per run, mean over an arm's seeds (`errors.csv`).",
            "",
            table(["arm", "seeds", *KINDS], rows),
        ]
    )


def plot_curves(out: Path, curves: list[Row], arms: list[str]) -> list[Path]:
    """mAP against iteration and against seconds, all-RoI loss against iteration (seeds faint, mean bold)."""
    written = []
    for x_key, y_key, name, xlabel, ylabel in [
        ("iteration", "mAP", "map_vs_iteration.png", "iteration", "test mAP (%)"),
        ("seconds", "mAP", "map_vs_seconds.png", "training seconds (iteration × the arm's s/iter)", "test mAP (%)"),
        (
            "iteration",
            "train_roi_loss",
            "roi_loss_vs_iteration.png",
            "iteration",
            "mean loss over all RoIs, train images",
        ),
    ]:
        series = _series(curves, arms, x_key, y_key)
        if not series:
            continue
        fig = curves_figure(series, xlabel, ylabel, top=100 if y_key == "mAP" else None)
        with atomic_open(out / name, binary=True) as f:  # never through a symlink; a full disk: one line
            fig.savefig(f, format="png", dpi=100)
        written.append(out / name)
    return written


def curves_figure(series: dict[str, dict[str, list]], xlabel: str, ylabel: str, top: float | None = None) -> Any:
    """One plot of ``_series``' arms, its y-axis from 0 (to ``top``), its legend beside it."""
    from matplotlib.figure import Figure  # the object API: no pyplot state, no display needed

    fig = Figure(figsize=(8, 5), layout="constrained")  # room for the legend beside the plot
    ax = fig.subplots()
    singles = [_plot_arm(ax, f"C{i % 10}", arm, per_seed) for i, (arm, per_seed) in enumerate(series.items())]
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.set_ylim(bottom=0, top=top)  # from 0: a gap is seen at its true size
    points = [s for s in singles if s is not None]
    if len(points) == len(singles):  # no curve at all: ticks at the points, not 1900, 1925, ...
        ax.set_xticks(sorted({x for x, _, _ in points}))
    _write_values(fig, ax, points)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)  # off the curves
    return fig


def _plot_arm(ax: Any, colour: str, arm: str, per_seed: dict[str, list]) -> tuple[float, float, str] | None:
    """One arm: each seed's curve faint, their mean bold. A mean of one point (one evaluation) is a
    marker, not a line that is not there: returned (x, y, colour) for ``_write_values``."""
    for points in per_seed.values():
        if len(points) > 1:
            ax.plot(*zip(*points), color=colour, alpha=0.3, lw=1)
    xs = sorted({x for points in per_seed.values() for x, _ in points})
    mean = [statistics.mean(y for points in per_seed.values() for x2, y in points if x2 == x) for x in xs]
    label = f"{arm} ({len(per_seed)} seed{'s'[: len(per_seed) > 1]})"
    if len(xs) > 1:
        ax.plot(xs, mean, "o-", color=colour, lw=2, label=label)
        return None
    ax.plot(xs, mean, "o", color=colour, label=label, clip_on=False)
    return xs[0], mean[0], colour


def _write_values(fig: Any, ax: Any, points: list[tuple[float, float, str]], gap_px: float = 13) -> None:
    """Each single point's value beside it, moved up where needed so that no two values overlap."""
    if not points:
        return
    fig.draw_without_rendering()  # the layout, so that data map to their final pixels
    placed: list[tuple[float, float]] = []  # (x px, y px) of the values written
    for x, y, colour in sorted(points, key=lambda p: p[1]):
        px, py = ax.transData.transform((x, y))
        lift = max([0.0, *(qy + gap_px - py for qx, qy in placed if abs(qx - px) < 60)])
        placed.append((px, py + lift))
        ax.annotate(
            f"{y:.3g}", (x, y), textcoords="offset pixels", xytext=(8, lift), va="center", color=colour, fontsize=9
        )


def _series(curves: list[Row], arms: list[str], x_key: str, y_key: str) -> dict[str, dict[str, list]]:
    """arm -> seed -> sorted (x, y) points, for the rows that have both values."""
    scale = 100 if y_key == "mAP" else 1
    series: dict[str, dict[str, list]] = {}
    for arm in arms:
        for r in curves:
            x, y = number(r.get(x_key)), number(r.get(y_key))
            if r["arm"] == arm and x is not None and y is not None:
                series.setdefault(arm, {}).setdefault(str(r["seed"]), []).append((x, y * scale))
    return {arm: {seed: sorted(p) for seed, p in s.items()} for arm, s in series.items()}


def number(value: Any) -> float | None:
    """A CSV cell as a float; None when empty."""
    if value is None or value == "":
        return None
    return float(value)


def _mean(values: Any) -> float | None:
    numbers = [n for n in map(number, values) if n is not None]
    return statistics.mean(numbers) if numbers else None


def _fmt(value: Any, digits: int) -> str:
    value = number(value)
    return "–" if value is None else f"{value:.{digits}f}"


def _percent(value: Any) -> str:
    value = number(value)
    return "–" if value is None else f"{value * 100:.0f} %"


def _join(values: Any) -> str:
    return ", ".join(dict.fromkeys(str(v) for v in values)) or "–"


def mean_sd_text(values: list[float]) -> str:
    """``mean ± sd`` over seeds, ``mean (1 seed)``, or "–" for none."""
    if not values:
        return "–"
    mean, sd = mean_sd(values)
    return f"{mean:.1f} ± {sd:.1f}" if sd is not None else f"{mean:.1f} (1 seed)"


def _diff(maps: dict[str, list[float]], arm: str, base: str) -> str:
    if arm == base or not maps.get(arm) or not maps.get(base):
        return "–"
    return f"{statistics.mean(maps[arm]) - statistics.mean(maps[base]):+.1f}"


def _cost_text(c: Row) -> str:
    """An arm's s/iter with its spread over repeats, and a mark when every repeat ran on a busy machine
    (rows of benches before repeats existed have neither)."""
    text = _fmt(c.get("s_per_iter"), 4)
    spread = number(c.get("s_per_iter_spread"))
    if spread is not None:
        text += f" ± {spread:.0%}"
    return text + (" **busy**" if str(c.get("contended")) == "1" else "")


def _over_flop_bound(cost: dict[str, Row], arm: str) -> str:
    """The measured step-time ratio over the heuristic divided by the FLOP ratio: 1.00 when the step
    costs what its arithmetic predicts, above it when the extra work is overhead (launches, syncs,
    memory-bound kernels such as RoIAlign)."""
    time, flops = _ratio(cost, arm, "heuristic", "s_per_iter"), _ratio(cost, arm, "heuristic", "gflop_per_iter")
    return "–" if "–" in (time, flops) else f"{float(time) / float(flops):.2f}"


def _ratio(cost: dict[str, Row], arm: str, base: str, key: str) -> str:
    a, b = number(cost.get(arm, {}).get(key)), number(cost.get(base, {}).get(key))
    return "–" if a is None or not b or arm == base else f"{a / b:.2f}"


def without_empty_columns(header: list[str], rows: list[list[str]]) -> tuple[list[str], list[list[str]]]:
    """The columns where some row has a value (not "–"): a column no arm of the call measured says nothing."""
    keep = [i for i in range(len(header)) if i == 0 or any(row[i] != "–" for row in rows)]
    return [header[i] for i in keep], [[row[i] for i in keep] for row in rows]


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
