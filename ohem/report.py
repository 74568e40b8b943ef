"""``ohem report RUN_DIR``: plots of what OHEM mined during a run, and a gallery of the hardest RoIs.

Reads the run's ``log.jsonl``, ``mining.jsonl`` and ``config.yaml``; writes into ``RUN_DIR/report``:

* ``losses.png``: loss on the mined RoIs vs mean loss over all RoIs, per iteration (smoothed),
  and, where the run measured it, the mean loss over all RoIs of training images in eval mode;
* ``mined_fg_fraction.png``: foreground fraction among mined RoIs vs among all RoIs;
* ``mined_iou.png``: per interval, the distribution of the mined RoIs' IoU with their best gt box;
* ``mined_classes.png``: per interval, the share of each class (and background) among mined RoIs;
* ``map.png``: test mAP at each evaluation;
* ``hardest_rois.png``: the hardest RoI of evenly spaced intervals, drawn on its training image.

A run without mining records (a sampler that reports none, e.g. ``heuristic``; a run stopped before its
first record) gets ``losses.png`` and ``map.png``, and a note saying why the others are not drawn. Every
curve's y-axis starts at 0; a series of one point is drawn as a marker with its value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ohem.config import Config, config_from_dict, parse_yaml
from ohem.data import build_dataset
from ohem.engine.runlog import read_jsonl_records
from ohem.util import is_number, one_line, output_folder, regular_file
from ohem.visualize import draw_box, image_grid, image_title, save_figure, short_title


def is_box(value: object) -> bool:
    """A list of four numbers."""
    return isinstance(value, list) and len(value) == 4 and all(is_number(v) for v in value)


# Keys each kind of record must hold, with a check of its value.
_NUMBER = (is_number, "a number")
_COUNTS = (lambda v: isinstance(v, list) and all(is_number(x) for x in v), "a list of numbers")
# (``ohem_all_roi_loss``: required of an OHEM run, drawn where a step has it)
STEP_KEYS = {"iteration": _NUMBER, "loss_classifier": _NUMBER, "loss_box_reg": _NUMBER}
OHEM_STEP_KEYS = {**STEP_KEYS, "ohem_all_roi_loss": _NUMBER}
MINING_KEYS = {
    "iteration": _NUMBER,
    "mined_fg_fraction": _NUMBER,
    "iou_hist": _COUNTS,
    "label_counts": _COUNTS,
    "hardest": (lambda v: isinstance(v, list), "a list"),
}
_INDEX = (lambda v: type(v) is int and v >= 0, "an integer >= 0")
HARDEST_KEYS = {
    "image_index": _INDEX,
    "label": _INDEX,
    "box": (is_box, "a list of 4 numbers"),
    "iou": _NUMBER,
    "loss": _NUMBER,
    "iteration": _NUMBER,
}


def read_jsonl(path: Path) -> list[dict]:
    """The records of a run's JSON-lines log (a torn last line, from a run killed or still writing, is
    left out); every other problem is a one-line error naming the file and line."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (is this an ohem run directory?)")
    regular_file(path, "run log")
    return [record for _, _, record in read_jsonl_records(path)]


def check_records(path: Path, records: list[dict], keys: dict[str, tuple[Any, str]], which: str = "record") -> None:
    """Raise a one-line error naming ``path``, the record and the key unless each record holds ``keys``."""
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: {which} {number}: expected an object, got {record!r:.60}")
        for key, (ok, expected) in keys.items():
            if key not in record:
                raise ValueError(f"{path}: {which} {number} (iteration {record.get('iteration')}): missing {key!r}")
            if not ok(record[key]):
                raise ValueError(
                    f"{path}: {which} {number} (iteration {record.get('iteration')}): "
                    f"{key!r} must be {expected}, got {record[key]!r:.60}"
                )


def read_run_config(path: Path) -> Config:
    """A run folder's ``config.yaml``."""
    regular_file(path, "run config")
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid YAML ({one_line(str(e))})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of config sections, got {type(raw).__name__}")
    return config_from_dict(raw, source=str(path))


def smooth(values: np.ndarray, window: int = 25) -> np.ndarray:
    if len(values) < window:
        return values
    return np.convolve(values, np.ones(window) / window, mode="valid")


# The pictures drawn from mining.jsonl
MINED_PICTURES = ("mined_fg_fraction.png", "mined_iou.png", "mined_classes.png", "hardest_rois.png")


class Report(NamedTuple):
    """What ``write_report`` wrote, and the notes to show about what it could not draw."""

    paths: list[Path]
    notes: list[str]


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, gallery_size: int = 12) -> Report:
    """Write the report's PNGs; returns their paths and notes on the pictures not drawn (and why)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ValueError(f"{run}: not a folder (RUN_DIR is the --out of an ohem train)")
    log = read_jsonl(run / "log.jsonl")
    cfg = read_run_config(run / "config.yaml")
    mining, why_none = _mining_records(run / "mining.jsonl", cfg)
    notes: list[str] = []
    steps = [r for r in log if "eval" not in r]
    evals = [r for r in log if "eval" in r]
    check_records(run / "log.jsonl", steps, OHEM_STEP_KEYS if mining else STEP_KEYS, "step record")
    check_records(
        run / "log.jsonl",
        evals,
        {
            "eval": (
                lambda v: isinstance(v, dict) and (v.get("mAP") is None or is_number(v.get("mAP"))),
                "an object with a number (or null: nothing measured) 'mAP'",
            )
        },
        "evaluation",
    )
    figures: dict[str, Figure | None] = {"losses.png": plot_losses(steps, evals), "map.png": None}
    if mining:
        check_mining(run / "mining.jsonl", mining)
        dataset = build_dataset(cfg.data, "train")
        names = ["background", *dataset.classes]
        check_hardest(run / "mining.jsonl", mining, len(dataset), len(names))
        figures |= {
            "mined_fg_fraction.png": plot_fg_fraction(steps, mining),
            "mined_iou.png": plot_mined_iou(mining),
            "mined_classes.png": plot_mined_classes(mining, names),
            "hardest_rois.png": plot_hardest_rois(mining, dataset, names, gallery_size),
        }
        if figures["hardest_rois.png"] is None:
            notes.append("mining.jsonl records no hardest RoIs; hardest_rois.png not drawn")
    if evals:
        figures["map.png"] = plot_map(evals)
    if not mining:
        drawn = " and ".join(name for name, fig in figures.items() if fig is not None)
        notes.append(f"{why_none}; drawing {drawn} ({', '.join(MINED_PICTURES)} need mining records)")
    out = output_folder(out_dir) if out_dir else output_folder(run / "report", "report folder", inside=run)
    written = []
    for name, fig in figures.items():
        if fig is not None:
            save_figure(fig, out / name)
            written.append(out / name)
    return Report(written, notes)


def _mining_records(path: Path, cfg: Config) -> tuple[list[dict], str]:
    """``mining.jsonl``'s records, and why there are none where there are none (the sampler records
    nothing, or the run stopped before its first record)."""
    if not path.exists():
        return [], f"{path.parent}: no mining.jsonl (sampler.method {cfg.sampler.method} records no mined RoIs)"
    mining = read_jsonl(path)
    return mining, "" if mining else f"{path}: empty (the run stopped before its first mining record)"


def check_mining(path: Path, mining: list[dict]) -> None:
    """Every ``mining.jsonl`` record complete, its histograms of one length throughout."""
    check_records(path, mining, MINING_KEYS)
    for key in ("iou_hist", "label_counts"):
        lengths = {len(r[key]) for r in mining}
        if len(lengths) > 1 or 0 in lengths:
            raise ValueError(f"{path}: {key!r}: records of different or zero lengths ({sorted(lengths)})")


def check_hardest(path: Path, mining: list[dict], num_images: int, num_labels: int) -> None:
    """Every hardest RoI of ``mining.jsonl`` complete and naming an image and label of the run's data."""
    for number, record in enumerate(mining, start=1):
        where = f"record {number} (iteration {record['iteration']}): hardest"
        check_records(path, record["hardest"], HARDEST_KEYS, f"{where} RoI")
        for pick in record["hardest"]:
            if pick["image_index"] >= num_images or pick["label"] >= num_labels:
                raise ValueError(
                    f"{path}: {where}: image {pick['image_index']} / label {pick['label']} is not in "
                    f"the run's training data ({num_images} images, {num_labels} labels)"
                )


def _plot_figure() -> tuple[Figure, Axes]:
    """A 7 x 4 inch figure with one plot, laid out so that titles and a legend beside the plot fit;
    iterations are whole numbers on its x-axis."""
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, ax


def _legend_outside(ax: Axes) -> None:
    """The legend to the right of the plot, where it hides no data (none for one series: the title names it)."""
    if len(ax.get_legend_handles_labels()[0]) > 1:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)


def plot_series(ax: Axes, xs: list[float], ys: list[float], style: str = "-", **kwargs: Any) -> None:
    """A curve; a series of one point is a marker with its value written beside it (a line of one
    point is invisible, and an axis around one point says nothing of its size)."""
    if len(xs) == 1:
        kwargs.pop("alpha", None)
        ax.plot(xs, ys, "o", **kwargs)
        ax.annotate(f"{ys[0]:.3g}", (xs[0], ys[0]), textcoords="offset points", xytext=(6, 4), fontsize=9)
    else:
        ax.plot(xs, ys, style, **kwargs)


def _from_zero(ax: Axes, top: float | None = None) -> None:
    """The y-axis from 0 (to ``top``, else matplotlib's): a difference is seen at its true size."""
    ax.set_ylim(bottom=0, top=top)


def plot_losses(steps: list[dict], evals: list[dict]) -> Figure:
    """Loss on the trained RoIs, per iteration (smoothed), against the mean loss over all RoIs where the
    run measured it (OHEM: every step; the loss of training images in eval mode: at evaluations)."""
    it = [r["iteration"] for r in steps]
    trained = np.array([r["loss_classifier"] + r["loss_box_reg"] for r in steps])
    k = len(it) - len(smooth(trained)) + 1
    fig, ax = _plot_figure()
    ohem = all("ohem_all_roi_loss" in r for r in steps)
    label = "mined RoIs (what is trained on)" if ohem else "sampled RoIs (what is trained on)"
    plot_series(ax, it[k - 1 :], smooth(trained).tolist(), label=label)
    if ohem:
        every = np.array([r["ohem_all_roi_loss"] for r in steps])
        plot_series(ax, it[k - 1 :], smooth(every).tolist(), label="all RoIs of the batch")
    measured = [(r["iteration"], r["train_roi_loss"]) for r in evals if "train_roi_loss" in r]
    if measured:
        xs, ys = zip(*measured)
        plot_series(ax, list(xs), list(ys), "o-", label="all RoIs of train images (eval mode)")
    title = "Loss: mined vs all RoIs" if ohem else "Loss on the trained RoIs"
    ax.set(xlabel="iteration", ylabel="loss per RoI (cls + box)", title=title)
    _from_zero(ax)
    _legend_outside(ax)
    return fig


def plot_fg_fraction(steps: list[dict], mining: list[dict]) -> Figure:
    """Foreground fraction among mined RoIs (per interval) vs among all RoIs (per iteration)."""
    fig, ax = _plot_figure()
    mined = [r["mined_fg_fraction"] for r in mining]
    plot_series(ax, [r["iteration"] for r in mining], mined, label="among mined RoIs")
    all_fg = [(r["iteration"], r["ohem_all_fg_fraction"]) for r in steps if "ohem_all_fg_fraction" in r]
    if all_fg:
        xs, ys = zip(*all_fg)
        plot_series(ax, list(xs), list(ys), alpha=0.4, label="among all RoIs")
    ax.set(xlabel="iteration", ylabel="foreground fraction", title="Foreground share of mined RoIs")
    _from_zero(ax, 1)
    _legend_outside(ax)
    return fig


def plot_mined_iou(mining: list[dict]) -> Figure:
    """Per interval, the distribution of the mined RoIs' IoU with their best gt box (a heat map); with
    one interval, its histogram as bars."""
    mit = [r["iteration"] for r in mining]
    hist = np.array([r["iou_hist"] for r in mining], dtype=float)
    hist /= np.maximum(hist.sum(1, keepdims=True), 1)
    fig, ax = _plot_figure()
    if len(mit) == 1:
        edges = np.linspace(0, 1, hist.shape[1] + 1)
        ax.bar(edges[:-1], hist[0], width=np.diff(edges), align="edge", edgecolor="white")
        ax.axvline(0.5, color="black", ls="--", lw=1)
        ax.set_xticks(np.linspace(0, 1, 11))  # IoU, not iterations: not whole numbers
        ax.set(
            xlabel="IoU with best gt box", ylabel="share of mined RoIs", title=f"IoU of mined RoIs (iteration {mit[0]})"
        )
        _from_zero(ax)
        return fig
    image = ax.imshow(hist.T, aspect="auto", origin="lower", extent=(mit[0], mit[-1], 0, 1), cmap="viridis")
    ax.axhline(0.5, color="white", ls="--", lw=1)
    ax.set(xlabel="iteration", ylabel="IoU with best gt box", title="IoU of mined RoIs (share per interval)")
    fig.colorbar(image, ax=ax, label="share of the interval's mined RoIs")
    return fig


def plot_mined_classes(mining: list[dict], names: list[str]) -> Figure:
    """Per interval, the share of each class (and background) among mined RoIs (stacked); with one
    interval, each label's share as a bar with its value."""
    counts = np.array([r["label_counts"] for r in mining], dtype=float)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    labels = names[: shares.shape[1]]
    fig, ax = _plot_figure()
    if len(mining) == 1:
        bars = ax.bar(labels, shares[0], color=[f"C{i % 10}" for i in range(len(labels))])
        ax.bar_label(bars, labels=[f"{s:.0%}" for s in shares[0]], fontsize=8)
        title = f"Labels of mined RoIs (iteration {mining[0]['iteration']})"
        ax.set(ylabel="share of mined RoIs", title=title)
        _from_zero(ax, 1)
        return fig
    ax.stackplot([r["iteration"] for r in mining], shares.T, labels=labels)
    ax.set(xlabel="iteration", ylabel="share of mined RoIs", title="Labels of mined RoIs")
    _from_zero(ax, 1)
    handles, texts = ax.get_legend_handles_labels()  # top of the stack first, as drawn
    ax.legend(handles[::-1], texts[::-1], loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    return fig


def plot_map(evals: list[dict]) -> Figure:
    """Test mAP at each evaluation."""
    fig, ax = _plot_figure()
    measured = [r for r in evals if r["eval"].get("mAP") is not None]  # null: nothing measured
    if measured:
        xs = [r["iteration"] for r in measured]
        plot_series(ax, xs, [r["eval"]["mAP"] * 100 for r in measured], "o-", clip_on=False)  # 0 % shows
        if len(xs) == 1:  # an axis of 3.8, 3.9, ... around one evaluation's iteration says nothing
            ax.set_xticks(xs)
    ax.set(xlabel="iteration", ylabel="test mAP@0.5 (%)", title="Test mAP")
    _from_zero(ax, 100)
    return fig


def plot_hardest_rois(mining: list[dict], dataset: Any, names: list[str], gallery_size: int) -> Figure | None:
    """The hardest RoI (red) of up to ``gallery_size`` evenly spaced intervals (each interval once), on its
    training image with the image's ground truth boxes dashed. None when no interval recorded one."""
    with_rois = [r for r in mining if r["hardest"]]
    if not with_rois:
        return None
    spaced = np.linspace(0, len(with_rois) - 1, min(gallery_size, len(with_rois))).round().astype(int)
    picks = [with_rois[i]["hardest"][0] for i in dict.fromkeys(spaced.tolist())]
    fig, axes = image_grid(len(picks), (3.2, 3.4))
    for ax, pick in zip(axes.flat, picks):
        image, target = dataset[pick["image_index"]]
        ax.imshow(image.permute(1, 2, 0).numpy())
        for box in target["boxes"].tolist():
            draw_box(ax, box, "white", dashed=True)
        draw_box(ax, pick["box"], "red")
        name = short_title(image_title(dataset, pick["image_index"]), 30)
        ax.set_title(
            f"it {pick['iteration']}: {names[pick['label']]}, IoU {pick['iou']:.2f}, loss {pick['loss']:.2f}\n{name}",
            fontsize=8,
        )
    gap = "; " if len(picks) > 1 else ";\n"  # one 3.2-inch panel: the title in two lines, not clipped
    fig.suptitle(f"Hardest mined RoI (red) per interval{gap}ground truth dashed", fontsize=10)
    return fig
