"""Hostile input, round 3 (issue 30), pattern 4: checks that ran once. No output of a command may be one
of its inputs (every command, one helper: ``ohem.commands.common.check_outputs_not_inputs``). Each case
runs through tests/test_hostile.py's ``check_case``: one stderr line, nothing written.

The next bad input is one ``Case(...)`` line in ``CASES``."""

from __future__ import annotations

import os
import shutil
import signal
import time
import typing
from pathlib import Path

import pytest

from ohem.cli import main, terminate_as_exit
from tests.test_hostile import SETS, Case, check_case, copy_run, trained

__all__ = ["trained"]  # the trained-run fixture of tests/test_hostile.py, shared

Setup = typing.Callable[[Path, Path], list[str]]
DATA = ["--set", "data.num_test=2", "--set", "data.num_train=2"]


def _coco(tmp: Path) -> Path:
    assert main(["export", "--layout", "coco", "--split", "test", "--out", str(tmp / "coco"), *DATA]) == 0
    return tmp / "coco"


def _proposals_over_annotations(tmp: Path, _: Path) -> list[str]:
    coco = _coco(tmp)
    out = coco / "annotations" / "instances_test.json"
    return ["proposals", "--method", "dense", "--data", f"coco:{coco}", "--split", "test", "--out", str(out)]


def _train_from_its_own(what: str) -> Setup:
    def setup(tmp: Path, trained: Path) -> list[str]:
        out = copy_run(trained, tmp)
        given = ["--config", str(out / "config.yaml")] if what == "config" else ["--config", "demo"]
        if what == "weights":
            given += ["--set", f"model.init_weights={out / 'checkpoint_last.pt'}"]
        return ["train", *given, "--out", str(out), "--force", *SETS]

    return setup


def _eval_into(name: str, flag: str) -> Setup:
    def setup(tmp: Path, trained: Path) -> list[str]:
        (tmp / "out").mkdir()
        source = trained / ("checkpoint_last.pt" if flag == "--checkpoint" else "metrics.json")
        shutil.copyfile(source, tmp / "out" / name)
        return ["eval", flag, str(tmp / "out" / name), "--out", str(tmp / "out"), *DATA[:2]]

    return setup


def _detect_into_its_checkpoint(tmp: Path, trained: Path) -> list[str]:
    (tmp / "out").mkdir()
    shutil.copyfile(trained / "checkpoint_last.pt", tmp / "out" / "detections.json")
    image = tmp / "a.png"
    shutil.copyfile(trained / "detections.png", image)
    args = ["--checkpoint", str(tmp / "out" / "detections.json"), str(image)]
    return ["detect", *args, "--out", str(tmp / "out"), "--device", "cpu"]


def _err(command: str, output: str, what: str) -> str:
    return (
        rf"^ohem {command}: error: --out .*out: writes .*out/{output}, which is this command's input "
        rf"\({what} .*\); give another --out$"
    )


# fmt: off
CASES = [
    Case("proposals --out DATA/annotations/instances_test.json", _proposals_over_annotations, 1,
         r"^ohem proposals: error: --out .*instances_test\.json: is this command's input \(the split's annotations "
         r".*instances_test\.json\); give another file to write$", out="none"),
    Case("train --out RUN --config RUN/config.yaml --force", _train_from_its_own("config"), 1,
         _err("train", "config.yaml", "--config"), inputs_untouched_in_out=True),
    Case("train --out RUN, model.init_weights=RUN/checkpoint_last.pt --force", _train_from_its_own("weights"), 1,
         _err("train", "checkpoint_last.pt", "model.init_weights"), inputs_untouched_in_out=True),
    Case("eval --detections OUT/metrics.json --out OUT", _eval_into("metrics.json", "--detections"), 1,
         _err("eval", "metrics.json", "--detections"), inputs_untouched_in_out=True),
    Case("eval --checkpoint OUT/results.json --out OUT", _eval_into("results.json", "--checkpoint"), 1,
         _err("eval", "results.json", "--checkpoint"), inputs_untouched_in_out=True),
    Case("detect --checkpoint OUT/detections.json --out OUT", _detect_into_its_checkpoint, 1,
         _err("detect", "detections.json", "--checkpoint"), inputs_untouched_in_out=True),
]
# fmt: on


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_no_output_is_an_input(case: Case, trained: Path, tmp_path: Path, capsys) -> None:
    check_case(case, trained, tmp_path, capsys)


# ------------------------------------------------------------------------------------- single bugs
def test_resume_removes_the_temporary_files_a_killed_run_left(trained: Path, tmp_path: Path) -> None:
    out = copy_run(trained, tmp_path)
    stale = out / ".checkpoint_last.pt.ab12cd_9.tmp"  # as atomic_open names it; kill -9 mid-write leaves it
    stale.write_bytes(b"half a checkpoint")
    mine = [out / ".notes.tmp", out / "keep.tmp", out / "sub" / ".x.pt.abcdefgh.tmp"]  # not ours: kept
    for path in mine:
        path.parent.mkdir(exist_ok=True)
        path.write_text("the user's own\n")
    (out / ".link.pt.abcdefgh.tmp").symlink_to(tmp_path / "elsewhere")
    longer = [*SETS, "--set", "solver.iterations=5"]
    assert main(["train", "--config", "demo", "--out", str(out), "--resume", *longer]) == 0
    assert not stale.exists() and all(path.read_text() == "the user's own\n" for path in mine)
    assert (out / ".link.pt.abcdefgh.tmp").is_symlink()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp") and p.name.startswith(".checkpoint")]


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGHUP])
def test_sighup_ends_a_command_like_sigterm(number: int) -> None:
    before = signal.getsignal(number)
    cleaned = []
    with pytest.raises(SystemExit) as stopped, terminate_as_exit():
        try:
            os.kill(os.getpid(), number)
            time.sleep(5)  # the handler raises before this ends
        finally:
            cleaned.append(True)  # finally blocks run: the loader's pymp-* folder and the lock file go
    assert stopped.value.code == 128 + number and cleaned == [True]
    assert signal.getsignal(number) == before  # restored


@pytest.mark.parametrize("method", ["libra", "pisa"])
def test_report_on_a_run_without_mining_records_says_what_it_draws(method: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / method
    assert main(["train", "--config", "demo", "--out", str(out), *SETS, "--set", f"sampler.method={method}"]) == 0
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    err = capsys.readouterr().err.strip()
    assert err == (
        f"ohem report: note: {out}: no mining.jsonl (sampler.method {method} records no mined RoIs); drawing "
        "losses.png and map.png (mined_fg_fraction.png, mined_iou.png, mined_classes.png, hardest_rois.png need "
        "mining records)"
    )
    assert sorted(p.name for p in (out / "report").iterdir()) == ["losses.png", "map.png"]
