"""Hostile input, round 3 (issue 30), pattern 4e: an output folder swapped mid-run. ``export``, ``detect`` and
``train`` hold their output folder open (``ohem.output_folder.OutputFolder``) and check before every write that
its path still names it: a folder renamed away and replaced by a symbolic link (or by another folder of the
same name) stops the command with one line; nothing is written into the link's target or the new folder, and
what was written before stays in the folder that was checked.

Each row of ``CASES`` swaps one folder right after the command wrote one named file (``OutputFolder.open``
wrapped); the next swap to try is one ``Swap(...)`` line."""

from __future__ import annotations

import contextlib
import os
import re
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ohem.cli import main
from ohem.engine.runlog import tensorboard_available
from ohem.output_folder import FolderReplaced, OutputFolder
from tests.test_hostile import SETS, ckpt_arg, image_file, trained

__all__ = ["trained"]  # the trained-run fixture of tests/test_hostile.py, shared

DATA = ["--set", "data.num_train=3", "--set", "data.num_test=2", "--set", "data.image_size=128"]


@dataclass
class Swap:
    """``argv(tmp, trained)``: the command, writing into ``tmp/out``; right after it writes the file named
    ``after``, ``tmp/folder`` is renamed to ``tmp/moved`` and replaced by a link to ``tmp/elsewhere``
    (``how="link"``) or by a new empty folder (``how="folder"``)."""

    name: str
    argv: Callable[[Path, Path], list[str]]
    after: str
    folder: str = "out"
    how: str = "link"


def _export(layout: str) -> Callable[[Path, Path], list[str]]:
    return lambda tmp, _: ["export", "--layout", layout, "--split", "train", "--out", str(tmp / "out"), *DATA]


def _detect(tmp: Path, trained: Path) -> list[str]:
    photos = [str(image_file(tmp / f"p{i}.png", seed=i)) for i in range(3)]
    return ["detect", *ckpt_arg(trained), *photos, "--out", str(tmp / "out"), "--device", "cpu"]


def _train(tmp: Path, _: Path) -> list[str]:
    return ["train", "--config", "demo", "--out", str(tmp / "out"), *SETS]


# fmt: off
CASES = [
    Swap("export voc: OUT a link after the first image", _export("voc"), "synthetic-train-000000.png"),
    Swap("export voc: OUT another folder", _export("voc"), "synthetic-train-000000.png", how="folder"),
    Swap("export voc: OUT/JPEGImages a link", _export("voc"), "synthetic-train-000000.png", "out/JPEGImages"),
    Swap("export coco: OUT/train another folder", _export("coco"), "synthetic-train-000000.png", "out/train",
         how="folder"),
    Swap("detect: OUT a link after the first drawing", _detect, "p0.png"),
    Swap("detect: OUT another folder", _detect, "p0.png", how="folder"),
    Swap("train: RUN a link after the first checkpoint", _train, "checkpoint_last.pt"),
    Swap("train: RUN another folder", _train, "checkpoint_last.pt", how="folder"),
    Swap("train: RUN/tb a link", _train, "checkpoint_last.pt", "out/tb"),
]
# fmt: on


@contextlib.contextmanager
def swapping(monkeypatch: pytest.MonkeyPatch, tmp: Path, case: Swap) -> Iterator[list[str]]:
    """``OutputFolder.open`` wrapped to swap ``case.folder`` once ``case.after`` is written; yields the
    names of the files written through it before the swap."""
    real = OutputFolder.open
    written: list[str] = []

    @contextlib.contextmanager
    def open_then_swap(self: OutputFolder, path: typing.Any, binary: bool = False) -> Iterator[typing.IO[typing.Any]]:
        with real(self, path, binary) as f:
            yield f
        if not (tmp / "moved").exists():
            written.append(Path(path).name)
            if Path(path).name == case.after:
                (tmp / case.folder).rename(tmp / "moved")
                if case.how == "link":
                    (tmp / case.folder).symlink_to(tmp / "elsewhere", target_is_directory=True)
                else:
                    (tmp / case.folder).mkdir()

    monkeypatch.setattr(OutputFolder, "open", open_then_swap)
    yield written


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_folder_swapped_mid_run_is_refused(
    case: Swap, trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    if case.folder.endswith("tb") and not tensorboard_available():
        pytest.skip("TensorBoard is not installed")
    argv = case.argv(tmp_path, trained)
    (tmp_path / "elsewhere").mkdir()
    capsys.readouterr()
    with swapping(monkeypatch, tmp_path, case) as written:
        rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err, err
    link = f"now a symbolic link to {re.escape(str(tmp_path / 'elsewhere'))}"
    now = link if case.how == "link" else "now another folder"
    swapped = re.escape(str(tmp_path / case.folder))
    last = [line for line in re.split(r"[\r\n]", err) if line.strip()][-1]
    assert re.fullmatch(
        rf"ohem {argv[0]}: error: {swapped}: the folder was replaced while ohem wrote into it \({now}\); "
        r"nothing more written",
        last,
    ), err
    assert not list((tmp_path / "elsewhere").iterdir())  # nothing through the link
    if case.how == "folder":
        assert not list((tmp_path / case.folder).iterdir())  # nor into the folder put in its place
    checked = [tmp_path / "moved"] + ([tmp_path / "out"] if case.folder != "out" else [])  # a subfolder swapped
    before = {name for folder in checked for _, _, files in os.walk(folder) for name in files}
    assert case.after in written and case.after in before  # what was written before the swap stays
    assert all(name in before for name in written)


def test_an_output_folder_checks_and_writes_where_it_was_opened(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with OutputFolder(out) as folder:
        with folder.open(out / "sub" / "a.txt") as f:
            f.write("one\n")
        assert (out / "sub" / "a.txt").read_text() == "one\n"
        out.rename(tmp_path / "moved")
        out.symlink_to(tmp_path / "elsewhere")
        replaced = r"out: the folder was replaced .*\(now a symbolic link to .*elsewhere\)"
        with pytest.raises(FolderReplaced, match=replaced):
            folder.check()
        with pytest.raises(FolderReplaced), folder.open(out / "b.txt") as f:
            f.write("two\n")
        out.unlink()
        with pytest.raises(FolderReplaced, match=r"\(now missing\)"):
            folder.check()
    assert sorted(p.name for p in (tmp_path / "moved").rglob("*")) == ["a.txt", "sub"]  # no temporaries left


def test_a_link_where_a_subfolder_is_made_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "JPEGImages").symlink_to(tmp_path / "elsewhere")  # put there after the checks
    with OutputFolder(tmp_path / "out") as folder, pytest.raises(FolderReplaced) as e:
        folder.open(tmp_path / "out" / "JPEGImages" / "a.png").__enter__()
    shown = tmp_path / "out" / "JPEGImages"
    assert str(e.value) == f"{shown}: is a symbolic link; ohem does not write through links it did not make"
    assert not list((tmp_path / "elsewhere").iterdir())
