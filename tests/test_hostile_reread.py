"""Hostile input, round 3 (issue 30), pattern 3: values re-read later as something else. Paths set from
options reach the config (and a bench's child processes) as the same strings, whatever YAML would make
of them; a recipe's name is resolved once; a bench folder resumes from another folder and after a move,
and is tied to its ``--pretrain`` config and checkpoint."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import pytest
import yaml

from ohem.bench import Bench
from ohem.cli import main
from ohem.commands.common import data_config
from ohem.config import Config, load_config
from ohem.config_values import set_values, value_override, yaml_scalar
from ohem.recipes import CONFIGS_DIR, looks_like_a_path
from ohem.util import file_sha256
from tests.conftest import TINY
from tests.test_hostile import snapshot
from tests.test_hostile_bench import SETS

ODD = ["/d/my data #2", "2007", "yes", "null", "~", "a: b", "x #", "'q'", "[1]", "\U0001f600", "\udc80", "", " lead"]


@pytest.mark.parametrize("value", ODD)
def test_a_path_set_as_a_value_reads_back_unchanged(value: str) -> None:
    assert load_config(None, [value_override("data.root", value)]).data.root == value
    assert set_values(Config(), {"model.init_weights": value}).model.init_weights == value
    assert yaml.safe_load(yaml_scalar(value)) == value


@pytest.mark.parametrize("root", ["/d/my data #2", "2007", "yes", "null", "1e3", "a: b"])
def test_data_roots_are_paths_not_yaml(root: str) -> None:
    args = argparse.Namespace(data=f"coco:{root}", overrides=[], classes=None, loader_workers=None)
    cfg = data_config(Config(), args)
    assert (cfg.data.dataset, cfg.data.root) == ("coco", root)


def test_a_folder_named_like_a_recipe_does_not_shadow_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bench").mkdir()  # the --out of an earlier `ohem bench --config bench --out bench`
    assert not looks_like_a_path("bench")
    b = Bench(config="bench", out=tmp_path / "bench", arms=["ohem"])
    assert Path(b.config_file) == CONFIGS_DIR / "bench.yaml"  # resolved once: what every run is handed
    (tmp_path / "demo").write_text("solver: {lr: 0.5}\n")  # a file of that name is still a file
    assert load_config("demo").solver.lr == 0.5


def test_train_config_demo_out_demo_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    sets = [a for item in [*TINY, "train.vis_images=0"] for a in ("--set", item)]
    assert main(["train", "--config", "demo", "--out", "demo", *sets]) == 0
    assert main(["train", "--config", "demo", "--out", "demo", "--resume", *sets, "--set", "solver.iterations=5"]) == 0
    assert json.loads((tmp_path / "demo" / "metrics.json").read_text())


def _pretrain_config(path: Path, *changes: str) -> Path:
    sections: dict = {}
    for item in [*TINY, "train.vis_images=0", *changes]:
        key, value = item.split("=", 1)
        section, name = key.split(".")
        sections.setdefault(section, {})[name] = yaml.safe_load(value)
    path.write_text(yaml.safe_dump(sections))
    return path


def _unlocked(files: dict) -> dict:  # the lock file a refused call takes is all it may leave
    return {path: state for path, state in files.items() if not path.endswith(".lock")}


def _argv(source: Path) -> list[str]:
    return ["bench", "--config", "demo", "--arms", "heuristic", "--no-errors", "--cost-iters", "0", *SETS,
            "--pretrain", str(source)]  # fmt: skip


def test_a_pretrained_bench_in_odd_folders_resumes_elsewhere_and_stays_tied_to_its_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    source = _pretrain_config(tmp_path / "source #1.yaml")
    first = tmp_path / "x: yes"
    first.mkdir()
    monkeypatch.chdir(first)
    assert main([*_argv(source), "--out", "b #1"]) == 0  # relative, with '#': YAML would cut it to 'b'
    out = first / "b #1"
    run = out / "runs" / "accuracy-heuristic-seed0"
    assert (
        yaml.safe_load((run / "config.yaml").read_text())["model"]["init_weights"] == "b #1/pretrain/checkpoint_last.pt"
    )
    settings = json.loads((out / "bench.json").read_text())
    assert settings["values"]["model"]["init_weights"] == "OUT/pretrain/checkpoint_last.pt"
    assert settings["pretrain_sha256"] == file_sha256(out / "pretrain" / "checkpoint_last.pt")

    # moved, run from another folder by an absolute path, its run's last step undone: resumed, not refused
    moved = tmp_path / "null" / "2007"
    moved.parent.mkdir()
    os.rename(out, moved)
    (moved / "accuracy.csv").unlink()
    (run := moved / "runs" / "accuracy-heuristic-seed0").joinpath("metrics.json").unlink()
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main([*_argv(source), "--out", str(moved)]) == 0, capsys.readouterr().err
    assert "--resume" in (moved / "logs" / "accuracy-heuristic-seed0.log").read_text()
    assert (moved / "accuracy.csv").is_file() and (run / "metrics.json").is_file()

    # another --pretrain, none, or a checkpoint replaced since: refused, nothing changed
    other = _pretrain_config(tmp_path / "other.yaml", "solver.lr=0.5")
    checkpoint = moved / "pretrain" / "checkpoint_last.pt"
    plain = _argv(source)[:-2]  # without --pretrain
    for argv, message in [
        ([*_argv(other), "--out", str(moved)],
         rf"--pretrain {other}: {moved / 'pretrain'} was trained from another config \(solver\.lr differs\); "
         "use another --out$"),
        ([*plain, "--out", str(moved)],
         rf"{moved / 'bench.json'}: this folder's runs start from {moved / 'pretrain'} \(--pretrain\); give the "
         "--pretrain config it was trained from, or use another --out$"),
    ]:  # fmt: skip
        before = snapshot(tmp_path)
        capsys.readouterr()
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and re.search(message, err), err
        assert _unlocked(snapshot(tmp_path)) == _unlocked(before)
    with checkpoint.open("ab") as f:
        f.write(b"\0")
    capsys.readouterr()
    assert main([*_argv(source), "--out", str(moved)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ohem bench: error: {checkpoint}: not the checkpoint --pretrain trained (sha256 ")
    assert err.endswith("...); this folder's runs started from that one: use another --out") and "\n" not in err
