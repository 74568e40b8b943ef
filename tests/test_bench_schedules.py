"""``ohem bench --schedules``: every arm at multiples of the run length, keyed by schedule in every
CSV, resumable; the schedule table and verdict on hand-made numbers; bad multiples."""

import csv

import pytest

from ohem.bench import Bench, run_bench
from ohem.bench.schedules import schedule_markdown, schedule_verdict
from ohem.bench.spec import run_overrides
from ohem.cli import main
from ohem.config import load_config
from tests.test_bench import TINY_BENCH, read


def test_a_schedule_stretches_the_run_and_its_lr_steps():
    # the demo recipe: 1500 iterations, steps [1000, 1300], warm-up 100, evaluation every 500
    b = Bench(config="demo", out=None, arms=["ohem", "ohem-warm"])
    iterations, overrides = run_overrides(b, "ohem", 0, 1, None, schedule=4)
    assert iterations == 6000
    assert overrides[-4:] == [
        "solver.iterations=6000",
        "solver.steps=[4000, 5200]",
        "solver.warmup_iterations=400",
        "train.eval_every=2000",
    ]
    assert run_overrides(b, "ohem", 0, 1, None, schedule=1) == run_overrides(b, "ohem", 0, 1, None)  # as before
    warm = load_config("demo", run_overrides(b, "ohem-warm", 0, 1, None, schedule=2)[1])
    assert (warm.solver.iterations, warm.sampler.start) == (3000, 1000)  # mining from the same third
    timed = Bench(config="demo", out=None, arms=["ohem"], budget="seconds", seconds=30.0)
    assert run_overrides(timed, "ohem", 0, 1, 0.1, schedule=2)[0] == 600  # twice the seconds


def test_every_arm_runs_at_every_schedule_and_a_rerun_skips_them(tmp_path, capsys):
    out = tmp_path / "b"
    bench = dict(config="demo", out=out, arms=["heuristic", "ohem"], overrides=list(TINY_BENCH), cost_iters=0)
    assert run_bench(Bench(**bench, schedules=[1.0, 2.0], error_score=0.05)) == 0
    rows = read(out / "accuracy.csv")
    assert [(r["arm"], r["schedule"], r["iterations"], r["run"]) for r in rows] == [
        ("heuristic", "1", "4", "runs/accuracy-heuristic-seed0"),
        ("ohem", "1", "4", "runs/accuracy-ohem-seed0"),
        ("heuristic", "2", "8", "runs/accuracy-heuristic-seed0-x2"),
        ("ohem", "2", "8", "runs/accuracy-ohem-seed0-x2"),
    ]
    # evaluations every 2 iterations at 1x, every 4 at 2x: the same fractions of the run
    curves = {(r["arm"], r["schedule"]): [] for r in rows}
    for r in read(out / "curves.csv"):
        curves[(r["arm"], r["schedule"])].append(int(r["iteration"]))
    assert curves[("ohem", "1")] == [2, 4] and curves[("ohem", "2")] == [4, 8]
    assert sorted((r["arm"], r["schedule"]) for r in read(out / "errors.csv")) == sorted(curves)
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "1, 2 × the run (tables: the 2× runs)" in summary
    assert "| heuristic | 1 | 8 |" in summary  # the main table holds the longest runs
    assert "| arm | 1× (4 it.) | 2× (8 it.) |" in summary.split("## mAP against schedule length")[1]
    assert (out / "map_vs_schedule.png").stat().st_size > 0
    capsys.readouterr()

    assert run_bench(Bench(**bench, schedules=[1.0, 2.0], error_score=0.05)) == 0  # all there: nothing runs
    assert "started" not in capsys.readouterr().out
    # rows of a folder made before schedules existed ran the config's length: they count as 1x
    with (out / "accuracy.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "schedule"])
        writer.writeheader()
        writer.writerows({k: v for k, v in r.items() if k != "schedule"} for r in rows[:2])
    assert run_bench(Bench(**bench, error_score=None)) == 0
    assert "started" not in capsys.readouterr().out
    assert "mAP against schedule length" not in (out / "summary.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("value", ["0", "-1", "nan", "1001"])
def test_a_bad_schedule_is_a_one_line_error(tmp_path, capsys, value):
    args = ["bench", "--config", "demo", "--arms", "ohem", "--out", str(tmp_path / "b"), "--schedules", "1", value]
    assert main(args) == 1
    err = capsys.readouterr().err
    expected = f"--schedules: give multiples of the run length in (0, 1000], got {float(value):g}"
    assert err == f"ohem bench: error: {expected}\n"
    assert not (tmp_path / "b").exists()


def table(**arms):
    """schedule -> arm -> per-seed mAP, from keyword lists given per schedule 1x, 2x, 4x."""
    return {k: {arm: values[i] for arm, values in arms.items()} for i, k in enumerate((1.0, 2.0, 4.0))}


def test_the_verdict_says_whether_the_lead_holds_grows_or_vanishes():
    tv = [[74.8, 75.2, 74.8], [80.0, 80.4, 80.2], [83.0, 83.4, 83.2]]
    vanishes = table(ohem=[[78.4, 79.2, 77.7], [81.0, 82.0, 81.5], [83.0, 83.9, 83.4]], **{"tv-default": tv})
    text = schedule_verdict(vanishes)
    assert text.startswith("Verdict: the best sampler at 1×, ohem, leads tv-default at 1× by +3.5, beyond the spread")
    assert "So the lead vanishes: at 4× the lead is within the seeds' spread." in text
    holds = table(ohem=[[78.4, 79.2, 77.7], [83.0, 84.0, 83.5], [86.0, 86.9, 86.4]], **{"tv-default": tv})
    assert "So the lead holds: at 4× the lead is beyond the spread" in schedule_verdict(holds)
    grows = table(ohem=[[76.0, 76.4, 76.2], [83.0, 84.0, 83.5], [88.0, 88.4, 88.2]], **{"tv-default": tv})
    assert "So the lead grows, beyond the spread at 4×" in schedule_verdict(grows)
    shrinks = table(ohem=[[84.0, 84.4, 84.2], [84.0, 84.4, 84.2], [85.0, 85.4, 85.2]], **{"tv-default": tv})
    assert "So the lead shrinks but stays beyond the spread at 4×" in schedule_verdict(shrinks)
    turns = table(ohem=[[78.4, 79.2, 77.7], [80.0, 80.4, 80.2], [80.0, 80.4, 80.2]], **{"tv-default": tv})
    assert "So the lead turns around: tv-default leads at 4×, beyond the spread" in schedule_verdict(turns)
    one_seed = table(ohem=[[78.4], [81.0], [82.0]], **{"tv-default": [[74.8], [80.0], [83.0]]})
    assert "not known whether beyond the spread" in schedule_verdict(one_seed)
    # the best sampler is chosen at the shortest schedule, not the longest
    two = table(
        ohem=[[78.4, 79.2, 77.7], [81.0, 82.0, 81.5], [83.0, 83.9, 83.4]],
        libra=[[76.0, 76.4, 76.2], [83.0, 84.0, 83.5], [88.0, 88.4, 88.2]],
        **{"tv-default": tv},
    )
    assert ", ohem, leads" in schedule_verdict(two)
    assert schedule_verdict({1.0: {"ohem": [80.0], "tv-default": [79.0]}}).endswith("not measured yet.")


def test_the_schedule_table_has_a_cell_per_arm_and_schedule_and_the_leads():
    acc = [
        {"arm": arm, "seed": seed, "schedule": k, "iterations": int(1500 * float(k)), "mAP": value}
        for arm, k, seed, value in [
            ("tv-default", "1", 0, 0.75),
            ("tv-default", "1", 1, 0.76),
            ("ohem", "1", 0, 0.78),
            ("ohem", "1", 1, 0.80),
            ("tv-default", "4", 0, 0.84),
            ("ohem", "4", 0, 0.845),
        ]
    ]
    text = schedule_markdown(acc, ["tv-default", "ohem"])
    assert "| arm | 1× (1500 it.) | 4× (6000 it.) |" in text
    assert "| tv-default | 75.5 ± 0.7 | 84.0 (1 seed) |" in text
    assert "| ohem − tv-default | +3.5 (2.1) | +0.5 |" in text  # the spread needs two seeds of both


def test_the_r50_bench_starts_from_every_weight_of_its_source_task_but_the_predictor():
    from ohem.data import build_dataset
    from ohem.mining import build_detector

    source, target = load_config("transfer_source_r50"), load_config("bench_r50_transfer")
    assert (target.model.name, target.model.min_size, target.model.rpn_post_nms_top_n_train) == (
        "fasterrcnn_resnet50_fpn",
        800,
        2000,
    )
    assert (target.solver.iterations, target.solver.steps) == (1500, [1000, 1300])
    shapes = []
    for cfg in (source, target):
        classes = len(build_dataset(cfg.data, "test").classes)
        model = build_detector(cfg.model, cfg.sampler, classes)
        shapes.append({k: v.shape for k, v in model.state_dict().items()})
    fresh = tuple(target.model.init_weights_skip)
    assert fresh == ("roi_heads.box_predictor",)
    assert {k: v for k, v in shapes[0].items() if not k.startswith(fresh)} == {
        k: v for k, v in shapes[1].items() if not k.startswith(fresh)
    }
