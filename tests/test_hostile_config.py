"""Hostile input, round 2 (issue 22): config values that disagree, sizes that would allocate too much,
YAML that expands without bound or repeats a key, and CLI flags that do not apply. Each case runs one
command through ``ohem.cli.main`` and checks the exit code, the single stderr line (short: no huge
value quoted whole) and that nothing changed in the case's folder (every case here fails before writing).

The next bad input is one ``Case(...)`` line in ``CASES``; ``Case`` and ``snapshot`` are
tests/test_hostile.py's."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from ohem.cli import main
from tests.test_hostile import PROGRESS_BAR, Case, snapshot, text_file

ALIAS_BOMB = "".join(
    ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n']
    + [f"{x}: &{x} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, x in zip("abcdefgh", "bcdefghi")]
)  # 9^9 = 387 million strings once expanded: gigabytes from 700 bytes
LONGEST_LINE = 400  # characters: a message quotes a long value only in part
Setup = Callable[[Path, Path], list[str]]  # (the case's folder, unused) -> argv


def _train(*sets: str) -> Setup:
    args = [a for item in sets for a in ("--set", item)]
    return lambda tmp, _: ["train", "--config", "demo", "--out", str(tmp / "out"), *args]


def _train_file(yaml_text: str) -> Setup:
    return lambda tmp, _: ["train", "--config", str(text_file(tmp / "c.yaml", yaml_text)), "--out", str(tmp / "out")]


def _recipe_file(yaml_text: str) -> Setup:
    return lambda tmp, _: ["recipe", str(text_file(tmp / "c.yaml", yaml_text))]


def _proposals(*extra: str) -> Setup:
    data = ["--data", "synthetic", "--split", "test", "--set", "data.num_test=2"]
    return lambda tmp, _: ["proposals", *data, "--out", str(tmp / "out" / "p.npz"), *extra]


def _empty_out(*argv: str) -> Setup:
    return lambda tmp, _: [*argv, "--out", ""]


TRAIN = r"^ohem train: error: "
PROPOSALS = r"^ohem proposals: error: "
LIMIT = r"allows \(raise it, or null for no limit\)$"
READERS_LIMIT = r"allows \(the limit proposal files are read with; raise it with --set, or null for no limit\)$"
# fmt: off
CASES = [
    # --- rules between two fields, checked once the file and every override are merged
    Case("model.min_size above model.max_size", _train("model.min_size=600"), 1,
         TRAIN + r"override 'model\.min_size=600': model\.min_size = 600 must be <= model\.max_size = 160 "),
    Case("a min_size entry above max_size, in a file", _train_file("model:\n  min_size: [128, 900]\n  max_size: 800\n"),
         1, TRAIN + r"config .*c\.yaml: model\.min_size\[1\] = 900 must be <= model\.max_size = 800 "),
    Case("warm-up longer than the run", _train("solver.iterations=50"), 1,
         TRAIN + r"override 'solver\.iterations=50': solver\.warmup_iterations = 100 must be <= solver\.iterations = "
         r"50 \(a longer warm-up never reaches solver\.lr\)$"),
    Case("a negative lr step", _train("solver.steps=[-5, 1000]"), 1,
         TRAIN + r"override 'solver\.steps=\[-5, 1000\]': solver\.steps\[0\] must be "
         r"an integer in \[0, 1000000000\], got -5$"),
    # --- recipe cards refuse the value (not "differs from the source")
    Case("recipe, lr .nan", _recipe_file("solver:\n  lr: .nan\n"), 1,
         r"^ohem recipe: error: config .*c\.yaml: solver\.lr must be a finite number in \[0, 10\], got nan$"),
    Case("recipe, steps out of order", _recipe_file("solver:\n  steps: [1300, 1000]\n"), 1,
         r"^ohem recipe: error: config .*c\.yaml: solver\.steps must be in increasing order, got \[1300, 1000\]$"),
    Case("recipe, a negative step", _recipe_file("solver:\n  steps: [-1, 1000]\n"), 1,
         r"^ohem recipe: error: config .*c\.yaml: solver\.steps\[0\] must be an integer in \[0, 1000000000\], got -1$"),
    # --- sizes that would allocate too much: refused when the config is read
    Case("data.num_train 10^12", _train("data.num_train=1000000000000"), 1,
         TRAIN + r"override 'data\.num_train=1000000000000': data\.num_train = 1,000,000,000,000 images, more than "
         r"data\.max_synthetic_images = 1,000,000 " + LIMIT),
    Case("export, data.num_test 10^12", lambda tmp, _: ["export", "--layout", "voc", "--split", "test", "--out",
         str(tmp / "out"), "--set", "data.num_test=1000000000000"], 1,
         r"^ohem export: error: override 'data\.num_test=1000000000000': data\.num_test = .* data\.max_synthetic_"),
    Case("data.image_size 100000", _train("data.image_size=100000"), 1,
         TRAIN + r"override 'data\.image_size=100000': data\.image_size = 100,000 is 10,000,000,000 pixels per "
         r"synthetic image, more than data\.max_image_pixels = 50,000,000 " + LIMIT),
    Case("solver.iterations of 500 digits", _train("solver.iterations=" + "9" * 500), 1,
         TRAIN + r"override 'solver\.iterations=9{60,}\.\.\. \(520 characters\): solver\.iterations must be an "
         r"integer in \[1, 1000000000\], got 9{60,}\.\.\. \(500 characters\)$"),
    Case("solver.lr of 500 digits (beyond float range)", _train("solver.lr=" + "9" * 500), 1,
         TRAIN + r"override 'solver\.lr=9+\.\.\. \(512 characters\): solver\.lr must be "
         r"a finite number in \[0, 10\], got 9+"),
    Case("sampler.method of 100000 characters", _train("sampler.method=" + "x" * 100_000), 1,
         TRAIN + r"override 'sampler\.method=x+\.\.\. \(100,017 characters\): sampler\.method must be one of "
         r"heuristic, .*, got 'x+\.\.\. \(100,002 characters\)$"),
    Case("a config with a 5000-digit number", _train_file("solver:\n  lr: " + "9" * 5000 + "\n"), 1,
         TRAIN + r"config .*c\.yaml: not valid YAML: Exceeds the limit \(4300 digits\)"),
    # --- dense proposals: counts beyond the readers' limit, refused before allocating
    Case("dense --copies 30000000", _proposals("--method", "dense", "--copies", "30000000"), 1,
         PROPOSALS + r"dense proposals: copies \(--copies, boxes per object\) = 30,000,000, more than "
         r"data\.max_proposal_boxes_per_image = 100,000 " + READERS_LIMIT),
    Case("dense --max-boxes 200000000", _proposals("--method", "dense", "--max-boxes", "200000000"), 1,
         PROPOSALS + r"--max-boxes 200,000,000: more than data\.max_proposal_boxes_per_image = 100,000 boxes per "),
    Case("selective search --max-boxes 200000000", _proposals("--max-boxes", "200000000"), 1,
         PROPOSALS + r"--max-boxes 200,000,000: more than data\.max_proposal_boxes_per_image = 100,000 boxes per "),
    Case("dense, objects x copies above a lowered limit", _proposals("--method", "dense", "--copies", "50000", "--set",
         "data.max_proposal_boxes_per_image=60000"), 1, PROPOSALS + r"dense proposals: image 'synthetic-test-000000': "
         r"\d objects x 50,000 copies = [\d,]+ boxes, more than data\.max_proposal_boxes_per_image = 60,000 "),
    Case("dense, more boxes in all than data.max_proposal_boxes", _proposals("--method", "dense", "--set",
         "data.max_proposal_boxes=3000"), 1, PROPOSALS + r"dense proposals: 2 images x 2,000 boxes = 4,000 boxes in "
         r"all, more than data\.max_proposal_boxes = 3,000 " + READERS_LIMIT),
    Case("dense --jitter inf", _proposals("--method", "dense", "--jitter", "inf"), 1,
         PROPOSALS + r"dense proposals: need .*jitter a finite number >= 0; got 2000, 20, inf$"),
    # --- flags the chosen mode does not use
    Case("--import-mat with --copies", _proposals("--import-mat", "F.mat", "--copies", "3"), 1,
         PROPOSALS + r"--copies does not apply to --import-mat; it is for --method dense$"),
    Case("--import-mat with --jitter", _proposals("--import-mat", "F.mat", "--jitter", "0.1"), 1,
         PROPOSALS + r"--jitter does not apply to --import-mat; it is for --method dense$"),
    Case("selective search with --copies", _proposals("--copies", "3"), 1,
         PROPOSALS + r"--copies does not apply to --method selective-search; it is for --method dense$"),
    Case("dense with --mode", _proposals("--method", "dense", "--mode", "quality"), 1,
         PROPOSALS + r"--mode does not apply to --method dense; it is for --method selective-search$"),
    Case("dense with --processes", _proposals("--method", "dense", "--processes", "2"), 1,
         PROPOSALS + r"--processes does not apply to --method dense; it is for --method selective-search$"),
    Case("dense with --min-size", _proposals("--method", "dense", "--min-size", "3"), 1,
         PROPOSALS + r"--min-size does not apply to --method dense; it is for --method selective-search and "),
    Case("selective search with --small-boxes", _proposals("--small-boxes", "min-size"), 1,
         PROPOSALS + r"--small-boxes does not apply to --method selective-search; it is for --import-mat$"),
    # --- --out '' (Path('') is the current directory)
    Case("train --out ''", _empty_out("train", "--config", "demo"), 1,
         TRAIN + r"--out '': empty; give the folder to write$"),
    Case("eval --out ''", _empty_out("eval", "--checkpoint", "c.pt"), 1, r"^ohem eval: error: --out '': empty"),
    Case("detect --out ''", _empty_out("detect", "--checkpoint", "c.pt", "i.png"), 1,
         r"^ohem detect: error: --out '': empty"),
    Case("export --out ''", _empty_out("export", "--layout", "voc"), 1, r"^ohem export: error: --out '': empty"),
    Case("proposals --out ''", _empty_out("proposals", "--method", "dense"), 1,
         PROPOSALS + r"--out '': empty; give the \.npz file to write$"),
    Case("report --out ''", _empty_out("report", "run"), 1, r"^ohem report: error: --out '': empty"),
    Case("bench --out ''", _empty_out("bench", "--config", "demo"), 1, r"^ohem bench: error: --out '': empty"),
    # --- YAML: no anchors or aliases, no repeated keys
    Case("config, an alias bomb", _train_file(ALIAS_BOMB), 1, TRAIN + r"config .*c\.yaml: line 1: anchors and "
         r"aliases \(&name, \*name\) are not allowed in a config$"),
    Case("config, a repeated key", _train_file("solver:\n  lr: 0.1\n  iterations: 5\n  lr: 0.2\n"), 1,
         TRAIN + r"config .*c\.yaml: line 4: key 'lr' repeats the one on line 2$"),
    Case("config, a repeated section", _train_file("solver:\n  lr: 0.1\nsolver:\n  lr: 0.2\n"), 1,
         TRAIN + r"config .*c\.yaml: line 3: key 'solver' repeats the one on line 1$"),
    Case("recipe, an alias bomb", _recipe_file(ALIAS_BOMB), 1, r"^ohem recipe: error: config .*c\.yaml: line 1: "),
    Case("--set with an alias", _train("solver.steps=&s [1, 2]"), 1,
         TRAIN + r"override 'solver\.steps=&s \[1, 2\]': value is not valid YAML \(line 1: anchors and aliases"),
]
# fmt: on


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_config(case: Case, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths (and --out '', were it taken as '.') land in the case's folder
    argv = case.setup(tmp_path, tmp_path)
    before = snapshot(tmp_path)
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == case.rc, err
    lines = [line for line in re.split(r"[\r\n]", err) if line.strip() and not PROGRESS_BAR.match(line)]
    assert len(lines) == 1 and re.search(case.err, lines[0]), err
    assert len(lines[0]) <= LONGEST_LINE, lines[0][:LONGEST_LINE]
    assert snapshot(tmp_path) == before, "a refused command changed files"
