"""``ohem bench``: a tiny real benchmark (2 arms x 1 seed, in subprocesses) writes the rows it
promises (error counts included) and a rerun skips them; the budget arithmetic, the comparisons,
the verdict and the error table are checked on exact, hand-made numbers; arm listing and errors."""

import csv
import json
import os
import statistics

import pytest
import torch

from ohem.bench import (
    Bench,
    Comparison,
    budget_iterations,
    builtin_arms,
    comparisons,
    run_bench,
    schedule_overrides,
    verdict,
)
from ohem.bench.errors import image_annotations
from ohem.bench.jobs import claim
from ohem.bench.spec import run_overrides
from ohem.bench.summary import summary_markdown
from ohem.cli import main
from ohem.config import load_config
from ohem.data import build_dataset
from ohem.evaluation import KINDS, ImageDetections, classify_detections, count_errors
from ohem.inference import model_from_checkpoint, predict
from tests.conftest import TINY

TINY_BENCH = [*TINY, "train.eval_every=2", "train.roi_loss_images=2", "train.vis_images=1"]
# A threshold the 4-iteration detectors' scores reach (~1/6 per class), so that the kinds hold detections.
ERROR_SCORE = 0.05


def read(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def tiny_bench(out, **changes):
    settings = dict(
        config="demo",
        out=out,
        arms=["heuristic", "ohem"],
        seeds=[0],
        overrides=list(TINY_BENCH),
        cost_iters=2,
        cost_repeats=2,
        cost_warmup=1,
        error_score=ERROR_SCORE,
    )
    return Bench(**{**settings, **changes})


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert run_bench(tiny_bench(out)) == 0
    return out


def test_rows_hold_each_runs_numbers(bench_out):
    cost = {r["arm"]: r for r in read(bench_out / "cost.csv")}
    assert list(cost) == ["heuristic", "ohem"]
    for r in cost.values():
        assert float(r["s_per_iter"]) > 0 and float(r["peak_rss_mib"]) >= float(r["rss_before_mib"]) > 0
        assert (r["timed_iterations"], r["threads"]) == ("2", str(len(os.sched_getaffinity(0))))
        assert (r["repeats"], float(r["cpu_s_per_iter"]) > 0) == ("2", True)
    timings = read(bench_out / "cost_repeats.csv")  # interleaved: a round of every arm, then the next
    assert [(r["arm"], r["repeat"]) for r in timings] == [
        ("heuristic", "0"),
        ("ohem", "0"),
        ("heuristic", "1"),
        ("ohem", "1"),
    ]
    assert 0 < float(cost["ohem"]["mining_share"]) < 1 and cost["heuristic"]["mining_share"] == ""
    # counted, not timed: OHEM's read-only pass adds FLOPs and RoIAlign traffic to the heuristic's step
    flops = {arm: float(r["gflop_per_iter"]) for arm, r in cost.items()}
    roi_align = {arm: float(r["roi_pool_mb_per_iter"]) for arm, r in cost.items()}
    assert flops["ohem"] > flops["heuristic"] > 0 and roi_align["ohem"] > roi_align["heuristic"] > 0
    assert "| FLOPs × heuristic | measured ÷ FLOPs |" in (bench_out / "summary.md").read_text(encoding="utf-8")

    rows = read(bench_out / "accuracy.csv")
    assert [(r["arm"], r["seed"], r["iterations"]) for r in rows] == [("heuristic", "0", "4"), ("ohem", "0", "4")]
    curves = read(bench_out / "curves.csv")
    for r in rows:
        run = bench_out / r["run"]
        assert run.name == f"accuracy-{r['arm']}-seed0"
        assert float(r["mAP"]) == json.loads((run / "metrics.json").read_text())["mAP"]
        assert float(r["seconds"]) == pytest.approx(4 * float(cost[r["arm"]]["s_per_iter"]), abs=0.01)
        mine = [c for c in curves if c["arm"] == r["arm"]]
        assert [int(c["iteration"]) for c in mine] == [2, 4]  # train.eval_every=2 over 4 iterations
        logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        evals = [e for e in logged if "eval" in e]
        assert [float(c["mAP"]) for c in mine] == [e["eval"]["mAP"] for e in evals]
        assert [float(c["train_roi_loss"]) for c in mine] == pytest.approx([e["train_roi_loss"] for e in evals])
        for c in mine:
            expected = int(c["iteration"]) * float(cost[r["arm"]]["s_per_iter"])
            assert float(c["seconds"]) == pytest.approx(expected, abs=1e-3)  # written to 3 decimals
        assert float(r["train_roi_loss"]) == pytest.approx(evals[-1]["train_roi_loss"])
    assert rows[1]["mined_fg_fraction"] != "" and rows[0]["mined_fg_fraction"] == ""  # only OHEM mines
    summary = (bench_out / "summary.md").read_text()
    assert "| heuristic | 1 | 4 |" in summary and "| ohem | 1 | 4 |" in summary and "## Verdict" in summary
    for name in ("map_vs_iteration.png", "map_vs_seconds.png", "roi_loss_vs_iteration.png"):
        assert (bench_out / name).stat().st_size > 0


def test_error_rows_sort_every_detection_and_every_object_of_the_test_split(bench_out):
    rows = read(bench_out / "errors.csv")
    assert list(rows[0]) == ["arm", "seed", "schedule", "score", *KINDS]
    assert [(r["arm"], r["seed"], float(r["score"])) for r in rows] == [
        ("heuristic", "0", ERROR_SCORE),
        ("ohem", "0", ERROR_SCORE),
    ]
    for r in rows:
        model, cfg, _ = model_from_checkpoint(
            bench_out / "runs" / f"accuracy-{r['arm']}-seed0" / "checkpoint_last.pt", torch.device("cpu")
        )
        test_set = build_dataset(cfg.data, "test")
        objects = sum(
            len(image_annotations(test_set, i)["boxes"]) for i in range(len(test_set))
        )  # synthetic: none difficult
        detections = predict(model, test_set, torch.device("cpu"))
        kept = sum(int((d.scores >= ERROR_SCORE).sum()) for d in detections)
        assert kept > 0  # the check below is not 0 == 0
        assert sum(int(r[kind]) for kind in KINDS if kind != "missed") == kept  # each detection in one kind
        assert int(r["TP"]) + int(r["missed"]) == objects  # each object found once or missed
        assert int(r["difficult"]) == 0
    summary = (bench_out / "summary.md").read_text()
    assert f"Every test detection scoring >= {ERROR_SCORE} put in the first kind" in summary
    table = f"| {rows[1]['arm']} | 1 | " + " | ".join(f"{float(rows[1][k]):.1f}" for k in KINDS) + " |"
    assert table in summary


def test_rerun_skips_finished_rows_and_resumes_an_unrecorded_run(bench_out, capsys):
    files = ["cost.csv", "accuracy.csv", "curves.csv", "errors.csv"]
    before = {name: (bench_out / name).stat().st_mtime_ns for name in files}
    runs = sorted(p.name for p in (bench_out / "runs").iterdir())
    assert run_bench(tiny_bench(bench_out)) == 0
    assert {name: (bench_out / name).stat().st_mtime_ns for name in files} == before  # nothing rewritten
    assert sorted(p.name for p in (bench_out / "runs").iterdir()) == runs
    assert "started" not in capsys.readouterr().out  # no process was started

    # A run that finished but whose row was never written (stopped in between): resumed, not redone.
    errors = read(bench_out / "errors.csv")
    rows = read(bench_out / "accuracy.csv")
    with (bench_out / "accuracy.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerow(rows[0])
    assert run_bench(tiny_bench(bench_out)) == 0
    again = read(bench_out / "accuracy.csv")
    assert [r["arm"] for r in again] == ["heuristic", "ohem"] and again[1]["mAP"] == rows[1]["mAP"]
    log = (bench_out / "logs" / "accuracy-ohem-seed0.log").read_text().splitlines()
    commands = [line for line in log if line.startswith("$ ")]
    assert len(commands) == 2 and "--force" in commands[0] and "--resume" in commands[1]
    assert not (bench_out / "runs" / "accuracy-ohem-seed0" / "previous-1").exists()
    assert len([r for r in read(bench_out / "curves.csv") if r["arm"] == "ohem"]) == 2  # replaced, not doubled
    assert read(bench_out / "errors.csv") == errors  # its error row redone from the same weights: the same counts
    assert (bench_out / "logs" / "errors-ohem-seed0.log").read_text().count("$ ") == 2  # it was redone
    assert (bench_out / "logs" / "errors-heuristic-seed0.log").read_text().count("$ ") == 1  # this one was not


def test_a_rerun_at_another_error_score_redoes_only_those_rows(bench_out):
    before = {r["arm"]: r for r in read(bench_out / "errors.csv")}
    assert run_bench(tiny_bench(bench_out, arms=["heuristic"], error_score=1.0)) == 0
    after = {r["arm"]: r for r in read(bench_out / "errors.csv")}
    assert after["ohem"] == before["ohem"]  # not in this call: kept
    assert float(after["heuristic"]["score"]) == 1.0 and int(after["heuristic"]["TP"]) == 0  # none scores 1
    assert int(after["heuristic"]["TP"]) + int(after["heuristic"]["missed"]) == int(before["heuristic"]["TP"]) + int(
        before["heuristic"]["missed"]
    )
    summary = (bench_out / "summary.md").read_text()
    assert "scoring >= 1.0 put" in summary and "| ohem |" not in summary.split("## What the detectors")[1]


def test_a_folder_of_another_benchmark_is_refused(bench_out, capsys):
    args = ["bench", "--config", "demo", "--arms", "heuristic", "--out", str(bench_out)]
    args += [a for item in [*TINY_BENCH, "solver.lr=0.5"] for a in ("--set", item)]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("this folder benchmarks another config (solver.lr differs); use another --out")
    assert main([*args[:-2], "--budget", "seconds"]) == 1
    assert "holds a --budget iterations benchmark" in capsys.readouterr().err


def test_a_folder_made_before_a_config_key_existed_resumes(bench_out):
    path = bench_out / "bench.json"
    settings = json.loads(path.read_text())
    del settings["values"]["data"]["exif_orientation"]  # as a bench made before the key was added wrote it
    path.write_text(json.dumps(settings))
    assert run_bench(tiny_bench(bench_out)) == 0  # the missing key had its default: the same benchmark
    settings["values"]["data"]["exif_orientation"] = True  # a stored value other than the default is not
    path.write_text(json.dumps(settings))
    with pytest.raises(ValueError, match=r"this folder benchmarks another config \(data.exif_orientation differs\)"):
        run_bench(tiny_bench(bench_out))
    del settings["values"]["data"]["exif_orientation"]
    path.write_text(json.dumps(settings))


def test_budget_iterations_fill_the_seconds():
    assert budget_iterations(30.0, 0.1) == 300
    assert budget_iterations(10.0, 0.3) == 33  # 33.3: nearest
    assert budget_iterations(10.0, 0.4) == 25
    assert budget_iterations(0.01, 5.0) == 1  # at least one


def test_schedule_is_scaled_with_the_run_length():
    cfg = load_config(
        None,
        ["solver.iterations=1000", "solver.steps=[600, 800]", "solver.warmup_iterations=100", "train.eval_every=250"],
    )
    assert schedule_overrides(cfg, 500) == [
        "solver.iterations=500",
        "solver.steps=[300, 400]",
        "solver.warmup_iterations=50",
        "train.eval_every=125",
    ]
    scaled = load_config(None, ["solver.iterations=1000", *schedule_overrides(cfg, 3000)])
    assert (scaled.solver.iterations, scaled.solver.steps, scaled.solver.warmup_iterations) == (3000, [1800, 2400], 300)
    assert scaled.train.eval_every == 750
    warm = load_config(None, ["solver.iterations=1000", "sampler.start=300"])
    assert "sampler.start=150" in schedule_overrides(warm, 500)  # mining starts at the same fraction
    decay = load_config(None, ["solver.iterations=1000", "sampler.method=is-mix", "sampler.lambda_schedule=decay"])
    assert "sampler.lambda_decay_iterations=500" in schedule_overrides(decay, 500)  # default 1000, halved
    assert not any(o.startswith("sampler.") for o in schedule_overrides(cfg, 500))  # nothing counted in iterations


def test_warm_arm_starts_mining_at_a_third_of_any_schedule():
    b = Bench(config="demo", out=None, arms=["ohem-warm"], overrides=["solver.iterations=900"])
    assert b.arm_overrides("ohem-warm")[-1] == "sampler.start=300"
    assert load_config(b.config, b.arm_overrides("ohem-warm")).sampler.method == "ohem"
    b.overrides = ["solver.iterations=100"]
    assert b.arm_overrides("ohem-warm")[-1] == "sampler.start=33"
    assert not any(o.startswith("sampler.start") for o in b.arm_overrides("ohem"))


def test_seconds_budget_gives_each_arm_its_own_iterations():
    # the demo recipe: 1500 iterations, steps [1000, 1300], warm-up 100, evaluation every 500.
    b = Bench(config="demo", out=None, arms=["heuristic", "ohem"], budget="seconds", seconds=30.0)
    iterations, overrides = run_overrides(b, "ohem", 2, 1, s_per_iter=0.1)
    assert iterations == 300
    assert overrides[-6:] == [
        "train.seed=2",
        "train.num_threads=1",
        "solver.iterations=300",
        "solver.steps=[200, 260]",
        "solver.warmup_iterations=20",
        "train.eval_every=100",
    ]
    iterations, overrides = run_overrides(b, "heuristic", 0, 1, s_per_iter=0.05)
    assert iterations == 600 and "solver.steps=[400, 520]" in overrides
    cfg = load_config("demo", overrides)
    assert (cfg.sampler.method, cfg.solver.iterations, cfg.solver.warmup_iterations) == ("heuristic", 600, 40)
    same = Bench(config="demo", out=None, arms=["ohem"])
    assert run_overrides(same, "ohem", 0, 2, s_per_iter=0.1)[0] == 1500  # --budget iterations: the config's


def test_verdict_compares_the_winner_with_random_sampling_when_tv_default_is_further_down():
    values = {"ohem": [84.2, 85.3, 86.3], "ohem-prior": [84.4, 85.0, 85.5], "tv-default": [81.8, 81.0, 81.7]}
    text = verdict([Comparison("equal iterations (1500 each)", values)])
    assert "ohem wins with 85.3 mAP, 0.3 points above ohem-prior (85.0), within the seeds' spread" in text
    assert "Against random sampling (tv-default, 81.5) ohem leads by 3.8, beyond the seeds' spread" in text
    assert "(3.8 > sd 1.1 + 0.4)." in text
    close = {"libra": [82.7, 82.1, 82.0], "pisa": [82.0, 82.1, 82.2], "tv-default": [80.0, 82.0, 84.0]}
    assert "leads by 0.3, within the seeds' spread (0.3 <= sd 0.4 + 2.0)" in verdict([Comparison("x", close)])
    runner_up = {"ohem": [85.0, 86.0], "tv-default": [80.0, 81.0], "heuristic": [70.0, 71.0]}
    assert "Against random sampling" not in verdict([Comparison("x", runner_up)])  # already the runner-up


def test_verdict_names_the_winner_and_says_whether_it_beats_the_spread():
    at_iterations = Comparison("equal iterations (60 each)", {"heuristic": [75, 76, 77], "ohem": [80, 81, 82]})
    at_time = Comparison("equal training time (6.0 s each)", {"heuristic": [79.5, 80, 80.5], "ohem": [77, 79, 81]})
    text = verdict([at_iterations, at_time])
    assert (
        "At equal iterations (60 each), ohem wins with 81.0 mAP, 5.0 points above heuristic (76.0), beyond "
        "the seeds' spread (5.0 > sd 1.0 + 1.0)."
    ) in text
    assert (
        "At equal training time (6.0 s each), heuristic wins with 80.0 mAP, 1.0 points above ohem (79.0), "
        "within the seeds' spread (1.0 <= sd 0.5 + 2.0): not a clear win."
    ) in text
    assert "the winner depends on the budget: ohem at equal iterations, heuristic at equal training time." in text
    assert "Rule: a lead counts as beyond the seeds' spread when it exceeds the sum" in text

    one_seed = verdict([Comparison("equal iterations (60 each)", {"heuristic": [70.0], "tv-default": [72.5]})])
    assert (
        "tv-default wins with 72.5 mAP, 2.5 points above heuristic (70.0); with 1 seed the seeds' spread is "
        "unknown" in one_seed
    )
    tie = verdict([Comparison("equal iterations (60 each)", {"heuristic": [70.0, 71.0], "ohem": [70.5, 70.5]})])
    assert "heuristic and ohem tie at 70.5 mAP" in tie and "depends" not in tie


def test_comparisons_read_the_curves_at_the_other_budget():
    acc = [
        {"arm": "heuristic", "seed": "0", "iterations": "60", "mAP": "0.6", "seconds": "6"},
        {"arm": "ohem", "seed": "0", "iterations": "60", "mAP": "0.7", "seconds": "12"},
    ]
    cost = {"heuristic": {"s_per_iter": "0.1"}, "ohem": {"s_per_iter": "0.2"}}
    curves = [
        {"arm": "heuristic", "seed": "0", "iteration": "30", "seconds": "3", "mAP": "0.5"},
        {"arm": "heuristic", "seed": "0", "iteration": "60", "seconds": "6", "mAP": "0.6"},
        {"arm": "ohem", "seed": "0", "iteration": "30", "seconds": "6", "mAP": "0.55"},
        {"arm": "ohem", "seed": "0", "iteration": "60", "seconds": "12", "mAP": "0.7"},
    ]
    at_iterations, at_time = comparisons(acc, curves, cost, "iterations")
    assert at_iterations.values == {"heuristic": [60.0], "ohem": [70.0]}
    assert at_time.budget.startswith("equal training time (6.0 s each")  # the faster arm's whole run
    assert "read from the curves of runs scheduled by iterations: not runs given that time" in at_time.budget
    assert at_time.values == {"heuristic": [60.0], "ohem": [pytest.approx(55.0)]}  # ohem at 30 iterations = 6 s
    text = verdict([at_iterations, at_time])
    assert "ohem wins with 70.0 mAP, 10.0 points above heuristic" in text
    assert "heuristic wins with 60.0 mAP, 5.0 points above ohem (55.0)" in text

    late = [c for c in curves if not (c["arm"] == "ohem" and c["iteration"] == "30")]  # ohem first evaluated at 12 s
    _, at_time = comparisons(acc, late, cost, "iterations")
    assert at_time.values == {"heuristic": [60.0]} and at_time.missing == ["ohem"]
    assert "only heuristic has an evaluation (60.0 mAP) (ohem: no evaluation within this budget" in verdict([at_time])

    timed = [dict(r, iterations=n) for r, n in zip(acc, ["60", "30"])]  # --budget seconds: 6 s each
    at_iterations, at_time = comparisons(timed, curves, cost, "seconds")
    assert at_iterations.budget == "equal iterations (30 each, read from the curves of runs scheduled by time)"
    assert at_iterations.values == {"heuristic": [50.0], "ohem": [pytest.approx(55.0)]}
    assert at_time.values == {"heuristic": [60.0], "ohem": [70.0]}


def test_list_arms_shows_each_arm_and_what_it_sets(capsys):
    assert main(["bench", "--list-arms"]) == 0
    out = capsys.readouterr().out
    wanted = [
        "heuristic",
        "heuristic-bg0",
        "tv-default",
        "all-rois",
        "ohem",
        "ohem-warm",
        "ohem-no-nms",
        "ohem-cls",
        "ohem-1img",
        "ohem-512",
        "libra",
        "ohem-presample",
        "ohem-stratified",
        "pisa",
        "is-mix",
        "ohem-prior",
    ]
    arms = builtin_arms()
    assert sorted(wanted) == list(arms)
    lines = out.splitlines()
    for name, arm in arms.items():
        assert f"{name:<{len('ohem-stratified') + 2}}{arm.description}" in lines  # names in a column
        warm = " sampler.start=0.333 x solver.iterations" if arm.start_fraction else ""
        assert "sets " + " ".join(arm.overrides) + warm in [line.strip() for line in lines]
    assert "config's solver.lr" in arms["all-rois"].description


@pytest.mark.parametrize(
    "arm, expected",
    [
        ("heuristic", ("heuristic", 64, 0.1, 2, None)),
        ("heuristic-bg0", ("heuristic", 64, 0.0, 2, None)),
        ("tv-default", ("heuristic", 512, 0.0, 2, None)),
        ("ohem-no-nms", ("ohem", 64, 0.0, 2, None)),
        ("ohem-1img", ("ohem", 128, 0.0, 1, 0.7)),
        ("ohem-512", ("ohem", 512, 0.0, 2, 0.7)),
        ("libra", ("libra", 512, 0.0, 2, None)),
        ("ohem-presample", ("ohem-presample", 64, 0.0, 2, 0.7)),
        ("ohem-stratified", ("ohem-stratified", 512, 0.0, 2, None)),
        ("pisa", ("pisa", 512, 0.0, 2, None)),
        ("is-mix", ("is-mix", 64, 0.0, 2, None)),
        ("ohem-prior", ("ohem-prior", 64, 0.0, 2, 0.7)),
    ],
)
def test_arms_apply_over_the_config_and_the_users_set(arm, expected):
    b = Bench(config="demo", out=None, arms=[arm], overrides=["sampler.bg_iou_low=0.3", "solver.lr=0.01"])
    cfg = load_config(b.config, b.arm_overrides(arm))
    s = cfg.sampler
    nms_iou = s.to_dict().get("nms_iou")  # None where the sampler has no such key
    assert (s.method, s.batch_size_per_image, s.bg_iou_low, cfg.solver.images_per_batch, nms_iou) == expected
    assert cfg.solver.lr == 0.01  # what the arm does not set stays the user's


def test_unknown_arm_and_missing_config_are_one_line_errors(tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["bench", "--config", "demo", "--arms", "heuristic,nope", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    names = ", ".join(builtin_arms())
    assert err == f"ohem bench: error: --arms: unknown arm 'nope'; the arms are: {names} (or a .yaml file)\n"
    assert main(["bench", "--config", str(tmp_path / "missing.yaml"), "--arms", "ohem", "--out", str(out)]) == 1
    missing = tmp_path / "missing.yaml"
    assert capsys.readouterr().err == f"ohem bench: error: config {missing}: cannot read: no such file\n"
    assert main(["bench", "--arms", "ohem"]) == 1
    assert capsys.readouterr().err == "ohem bench: error: --config and --out required (or --list-arms)\n"
    assert not out.exists()


def test_no_cost_phase_gives_equal_iteration_rows_without_a_seconds_axis(tmp_path):
    out = tmp_path / "b"
    assert run_bench(tiny_bench(out, arms=["heuristic"], cost_iters=0, error_score=None)) == 0
    assert not (out / "cost.csv").exists() and not (out / "runs" / "cost-heuristic").exists()
    [row] = read(out / "accuracy.csv")
    assert (row["arm"], row["iterations"], row["seconds"]) == ("heuristic", "4", "")
    assert {p["seconds"] for p in read(out / "curves.csv")} == {""}
    summary = (out / "summary.md").read_text(encoding="utf-8")
    header = next(line for line in summary.splitlines() if line.startswith("| arm | seeds |"))
    assert "| heuristic | 1 | 4 | " in summary and "train s" not in header and "s/iter" not in header  # unmeasured
    assert not (out / "errors.csv").exists()  # error_score None: --no-errors
    assert "What the detectors get wrong" not in (out / "summary.md").read_text(encoding="utf-8")


def test_bad_options_and_a_busy_folder_are_one_line_errors(tmp_path, capsys):
    base = ["bench", "--config", "demo", "--arms", "ohem", "--out", str(tmp_path / "b")]
    assert main([*base, "--seconds", "5"]) == 1
    seconds = "--seconds 5.0: needs --budget seconds and a number in (0, 1e+08] (training seconds per run)"
    assert capsys.readouterr().err == f"ohem bench: error: {seconds}\n"
    assert main([*base, "--jobs", "0"]) == 1
    assert capsys.readouterr().err == "ohem bench: error: --jobs must be >= 1, got 0\n"
    assert main([*base, "--cost-repeats", "0"]) == 1
    assert capsys.readouterr().err == "ohem bench: error: --cost-repeats must be >= 1, got 0\n"
    assert main([*base, "--cost-iters", "0", "--budget", "seconds"]) == 1
    no_cost = "--cost-iters 0 (no cost phase) leaves --budget seconds nothing to divide the time by"
    assert capsys.readouterr().err == f"ohem bench: error: {no_cost}\n"
    assert main([*base, "--cost-iters", "-1"]) == 1
    assert capsys.readouterr().err == "ohem bench: error: --cost-iters must be >= 0, got -1\n"
    for score in ("1.5", "-0.1", "nan"):
        assert main([*base, "--error-score", score]) == 1
        assert capsys.readouterr().err == f"ohem bench: error: --error-score must be in [0, 1], got {float(score)}\n"
    assert main([*base, "--error-score", "0.3", "--no-errors"]) == 1
    both = "--error-score and --no-errors: give one (--no-errors skips the error phase)"
    assert capsys.readouterr().err == f"ohem bench: error: {both}\n"
    (tmp_path / "b").mkdir()
    with claim(tmp_path / "b"):  # another ohem bench is writing this folder
        assert main(base) == 1
    err = capsys.readouterr().err
    busy = f"{tmp_path / 'b'}: in use by another ohem bench; wait for it to end or use another --out"
    assert err == f"ohem bench: error: {busy}\n"
    assert not (tmp_path / "b" / "bench.json").exists()


def test_count_errors_sums_each_kind_over_the_images():
    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    targets = [{"boxes": boxes, "labels": torch.tensor([1, 2])}, {"boxes": boxes[:1], "labels": torch.tensor([1])}]
    detections = [
        ImageDetections(boxes, torch.tensor([0.9, 0.8]), torch.tensor([1, 1])),  # TP, wrong class; missed 1
        ImageDetections(
            torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 10]]),
            torch.tensor([0.9, 0.7, 0.2]),
            torch.tensor([1, 1, 1]),
        ),  # TP, background; one below 0.5
    ]
    totals = count_errors(detections, targets, 0.5)
    per_image = [classify_detections(d.boxes, d.scores, d.labels, t, 0.5) for d, t in zip(detections, targets)]
    assert totals == {kind: sum(c[kind] for c in per_image) for kind in KINDS}
    assert totals == {**dict.fromkeys(KINDS, 0), "TP": 2, "wrong class": 1, "background": 1, "missed": 1}
    with pytest.raises(ValueError, match="^2 detection lists for 1 images$"):
        count_errors(detections, targets[:1])


def test_error_table_is_the_mean_over_each_arms_seeds():
    def row(arm, seed, tp, missed):
        return {"arm": arm, "seed": seed, "score": "0.5", **dict.fromkeys(KINDS, "0"), "TP": tp, "missed": missed}

    errors = [row("heuristic", "0", "10", "4"), row("heuristic", "1", "13", "1"), row("ohem", "0", "12", "2")]
    text = summary_markdown("t", ["heuristic", "ohem"], [], [], {}, "iterations", errors)
    zeros = " | ".join(["0.0"] * 6)
    assert f"| arm | seeds | {' | '.join(KINDS)} |" in text
    assert f"| heuristic | 2 | 11.5 | {zeros} | 2.5 |" in text and f"| ohem | 1 | 12.0 | {zeros} | 2.0 |" in text
    assert "Every test detection scoring >= 0.5 put" in text
    assert "What the detectors get wrong" not in summary_markdown("t", ["ohem"], [], [], {}, "iterations")


def test_cost_row_takes_the_median_of_the_quiet_repeats():
    from ohem.bench.run import CONTENDED, cost_row

    def timing(s, share):
        return {
            "s_per_iter": s,
            "cpu_s_per_iter": s,
            "others_cpu_share": share,
            "peak_rss_mib": 100,
            "rss_before_mib": 50,
        }

    busy = CONTENDED + 0.3
    row = cost_row("a", [timing(0.10, 0.01), timing(0.31, busy), timing(0.12, 0.0), timing(0.11, "nan")], 20, 2)
    assert row["s_per_iter"] == 0.11 and row["s_per_iter_spread"] == pytest.approx(0.02 / 0.11, abs=1e-4)
    assert (row["repeats"], row["contended_repeats"], row["contended"]) == (4, 1, 0)
    every = cost_row("a", [timing(0.2, busy), timing(0.4, busy), timing(0.3, busy)], 20, 2)
    assert (every["s_per_iter"], every["contended"]) == (0.3, 1)  # no quiet repeat: all of them, marked


def test_a_busy_loop_during_one_arms_timing_does_not_move_the_ratio(tmp_path, monkeypatch):
    import subprocess
    import sys

    from ohem.bench import run as bench_run
    from ohem.bench.run import CONTENDED

    real_cost_job, loops = bench_run.cost_job, []

    def cost_job(b, arm, repeat, cores, repeats, path):
        job = real_cost_job(b, arm, repeat, cores, repeats, path)
        if (arm, repeat) != ("ohem", 0):
            return job
        start, finish = job.start, job.finish

        def start_beside_busy_loops():  # one spinning process per core for this timing only
            loops.extend(subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores))
            return start()

        def stop_loops_then_finish(wall):
            for loop in loops:
                loop.kill()
                loop.wait()
            return finish(wall)

        job.start, job.finish = start_beside_busy_loops, stop_loops_then_finish
        return job

    monkeypatch.setattr(bench_run, "cost_job", cost_job)
    # two arms of the same step cost: ohem-prior differs from ohem only in the classifier's initial bias
    b = tiny_bench(tmp_path / "b", arms=["ohem", "ohem-prior"], cost_iters=20, cost_repeats=3)
    try:
        cost, failed = bench_run.cost_phase(b, len(os.sched_getaffinity(0)))
    finally:
        for loop in loops:
            loop.kill()
    assert failed == []
    timings = {(r["arm"], r["repeat"]): r for r in read(b.out / "cost_repeats.csv")}
    busy, others = timings[("ohem", "0")], [timings[("ohem", "1")], timings[("ohem", "2")]]
    assert float(busy["others_cpu_share"]) > CONTENDED  # seen during the timed steps, whatever else runs
    # What holds on any machine: the loops' timing is never one the arm's time is taken from; the arm's
    # time is the median of its quiet repeats, or, when other work loaded every repeat, marked busy.
    quiet = [r for r in others if float(r["others_cpu_share"]) <= CONTENDED]
    assert int(cost["ohem"]["contended_repeats"]) == 3 - len(quiet)
    if not quiet:
        assert int(cost["ohem"]["contended"]) == 1
        return
    median = statistics.median(float(r["s_per_iter"]) for r in quiet)
    assert float(cost["ohem"]["s_per_iter"]) == pytest.approx(median, abs=1e-6) and int(cost["ohem"]["contended"]) == 0
    if len(quiet) == 2 and int(cost["ohem-prior"]["contended_repeats"]) == 0:  # the rest of the machine was quiet
        other = float(cost["ohem-prior"]["s_per_iter"])
        assert float(busy["s_per_iter"]) > 1.3 * other  # the loops did slow that repeat down ...
        assert 0.75 < float(cost["ohem"]["s_per_iter"]) / other < 1.33  # ... but not the arm's time


def test_summary_warns_before_the_verdict_when_no_arm_learned_or_every_arm_still_climbs():
    def rows(values):
        return [{"arm": a, "seed": 0, "iterations": 1000, "mAP": v} for a, v in values.items()]

    def curve(arm, points):
        return [{"arm": arm, "seed": 0, "iteration": it, "mAP": v} for it, v in points]

    untrained = summary_markdown(
        "t", ["heuristic", "ohem"], rows({"heuristic": 0.0, "ohem": 0.012}), [], {}, "iterations"
    )
    warning = untrained.index("**Warning:** every arm is below 5 mAP (best 1.2): the detectors are barely trained")
    assert warning < untrained.index("## Verdict")
    climbing = curve("heuristic", [(500, 0.50), (1000, 0.60)]) + curve("ohem", [(500, 0.55), (1000, 0.70)])
    text = summary_markdown(
        "t", ["heuristic", "ohem"], rows({"heuristic": 0.6, "ohem": 0.7}), climbing, {}, "iterations"
    )
    assert "every arm's mAP still rose by 10.0 points or more between its last two evaluations" in text
    settled = curve("heuristic", [(500, 0.58), (1000, 0.60)]) + curve("ohem", [(500, 0.55), (1000, 0.70)])
    assert "Warning" not in summary_markdown(
        "t", ["heuristic", "ohem"], rows({"heuristic": 0.6, "ohem": 0.7}), settled, {}, "iterations"
    )
