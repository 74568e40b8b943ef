"""Hostile files, round 2 (issue 22): ``.mat`` proposal files whose headers declare more than the proposal
limits (refused from the header, before anything is allocated), full and read-only disks (one line naming
the file, the earlier file kept), and output folders that are symbolic links (refused before anything is
written). Each table case runs one command through ``ohem.cli.main`` and checks the exit code, the single
stderr line, and that nothing outside the output folder changed (nothing at all when it fails).

The next bad file is one ``Case(...)`` line in ``CASES``."""

from __future__ import annotations

import errno
import io
import os
import re
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from ohem.cli import error_message, main
from ohem.util import atomic_open, open_append
from tests.test_hostile import (  # noqa: F401  (trained: the module's fixture, used by the table)
    PROGRESS_BAR,
    Case,
    check_case,
    ckpt_arg,
    copy_run,
    image_file,
    snapshot,
    trained,
)


def mat_extra(module: str):
    """scipy.io or h5py (the ``mat`` extra: pip install 'ohem[mat]'); the .mat tests skip without them,
    the others run."""
    return pytest.importorskip(module)


TWO_IMAGES = ["--data", "synthetic", "--split", "test", "--set", "data.num_test=2"]
PER_IMAGE = r"more than data\.max_proposal_boxes_per_image = "


# --------------------------------------------------------------------------------------- .mat files
def cells(arrays: list) -> np.ndarray:
    out = np.empty((1, len(arrays)), dtype=object)
    for i, a in enumerate(arrays):
        out.flat[i] = a
    return out


def v5(path: Path, boxes: list, compress: bool = False) -> Path:
    mat_extra("scipy.io").savemat(path, {"boxes": cells(boxes)}, do_compression=compress)
    return path


def v5_declaring(path: Path, rows: int) -> Path:
    """A tiny uncompressed v5 file whose first cell's header declares a ``rows x 4`` array (its data: 2 x 4)."""
    raw = bytearray(v5(path, [np.ones((2, 4)), np.ones((1, 4))]).read_bytes())
    at = raw.index(struct.pack("<ii", 2, 4))
    raw[at : at + 8] = struct.pack("<ii", rows, 4)
    path.write_bytes(bytes(raw))
    return path


def v5_inflating(path: Path, extra: int) -> Path:
    """A v5 file whose compressed ``boxes`` inflates to ``extra`` bytes more than its header declares."""
    raw = v5(path, [np.ones((2, 4)), np.ones((1, 4))]).read_bytes()
    header, element = raw[:128], raw[128:]
    nbytes = struct.unpack("<II", element[:8])[1]
    blob = zlib.compress(element[: 8 + nbytes] + bytes(extra), 9)
    path.write_bytes(header + struct.pack("<II", 15, len(blob)) + blob)  # 15: miCOMPRESSED
    return path


def v73(path: Path, shapes: list[tuple[int, int]], matlab_class: str = "double", dtype: str = "f8") -> Path:
    """An HDF5 (v7.3) file whose cells declare ``shapes`` (MATLAB's layout: (4, k)); nothing is written into
    them, so the file stays a few KB whatever they declare."""
    h5py = mat_extra("h5py")
    with h5py.File(path, "w") as f:
        refs = []
        for i, shape in enumerate(shapes):
            ds = f.create_dataset(f"#refs#/b{i}", shape=shape, dtype=dtype, chunks=(shape[0], min(shape[1], 1024)))
            ds.attrs["MATLAB_class"] = np.bytes_(matlab_class)
            refs.append(ds.ref)
        f.create_dataset("boxes", data=np.array(refs, dtype=h5py.ref_dtype)[:, None])
    return path


def _import(make: Callable[[Path], Path], *extra: str) -> Callable[[Path, Path], list[str]]:
    def setup(tmp: Path, tr: Path) -> list[str]:
        mat = make(tmp / "in.mat")
        assert mat.stat().st_size < 1 << 20  # what is refused is what the header declares
        return ["proposals", "--import-mat", str(mat), *TWO_IMAGES, *extra, "--out", str(tmp / "out" / "p.npz")]

    return setup


# ------------------------------------------------------------------------------------ symlinked folders
def _linked(target_name: str, link: str) -> Callable[[Path], Path]:
    """``tmp/LINK`` made a symbolic link to a new folder ``tmp/TARGET_NAME`` holding one file."""

    def make(tmp: Path) -> Path:
        (tmp / target_name).mkdir(exist_ok=True)
        (tmp / target_name / "keep.txt").write_text("not ohem's\n")
        (tmp / link).parent.mkdir(parents=True, exist_ok=True)
        (tmp / link).symlink_to(tmp / target_name, target_is_directory=True)
        return tmp / link

    return make


def _report_into_linked_folder(tmp: Path, tr: Path) -> list[str]:
    run = copy_run(tr, tmp, "run")
    _linked("elsewhere", "run/report")(tmp)
    return ["report", str(run)]


def _resume_with_linked_tb(tmp: Path, tr: Path) -> list[str]:
    out = copy_run(tr, tmp, "out")
    if (out / "tb").exists():
        import shutil

        shutil.rmtree(out / "tb")
    _linked("elsewhere", "out/tb")(tmp)
    return ["train", "--config", "demo", "--out", str(out), "--resume", *_tiny_sets()]


def _tiny_sets() -> list[str]:
    from tests.conftest import TINY

    return [arg for item in TINY for arg in ("--set", item)]


def _bench_with_linked(sub: str) -> Callable[[Path, Path], list[str]]:
    def setup(tmp: Path, tr: Path) -> list[str]:
        (tmp / "out").mkdir()
        _linked("elsewhere", f"out/{sub}")(tmp)
        return ["bench", "--config", "demo", "--arms", "ohem", "--no-errors", "--out", str(tmp / "out")]

    return setup


def _export_with_linked_imagesets(tmp: Path, tr: Path) -> list[str]:
    (tmp / "out").mkdir()
    _linked("elsewhere", "out/ImageSets")(tmp)
    return ["export", "--layout", "voc", "--split", "test", "--out", str(tmp / "out"), "--set", "data.num_test=2"]


def _out_is_link(argv: Callable[[Path, Path], list[str]]) -> Callable[[Path, Path], list[str]]:
    def setup(tmp: Path, tr: Path) -> list[str]:
        _linked("elsewhere", "out")(tmp)
        return argv(tmp, tr)

    return setup


LINK = r": is a symbolic link; ohem does not write through links it did not make"
ERR = "^ohem {}: error: "
# fmt: off
CASES = [
    # --- .mat files: refused from the header, before anything is allocated
    Case(".mat v5 cell declaring 300,000,000 x 4 (a 300-byte file)", _import(lambda p: v5_declaring(p, 300_000_000)),
         1, ERR.format("proposals") + r".*in\.mat: 'boxes' cell 1 declares an array of shape \(300000000, 4\) "
         r"\(300,000,000 boxes\), " + PER_IMAGE + r"100,000 boxes \(raise it, or null for no limit\)$"),
    Case(".mat v5 compressed zeros, 100,001 x 4", _import(lambda p: v5(p, [np.zeros((100_001, 4)), np.ones((1, 4))],
         compress=True)), 1, ERR.format("proposals") + r".*in\.mat: 'boxes' cell 1 declares an array of shape "
         r"\(100001, 4\) \(100,001 boxes\), " + PER_IMAGE),
    Case(".mat v5 compressed blob inflating past its declared size", _import(lambda p: v5_inflating(p, 20 << 20)), 1,
         ERR.format("proposals") + r".*in\.mat: a compressed variable inflates beyond the \d+ bytes it declares"),
    Case(".mat v5 over a lowered per-image limit", _import(lambda p: v5(p, [np.ones((3, 4)), np.ones((1, 4))]),
         "--set", "data.max_proposal_boxes_per_image=2"), 1,
         ERR.format("proposals") + r".*in\.mat: 'boxes' cell 1 declares .*" + PER_IMAGE + r"2 boxes"),
    Case(".mat v5 over data.max_proposal_boxes", _import(lambda p: v5(p, [np.ones((2, 4)), np.ones((2, 4))]),
         "--set", "data.max_proposal_boxes=3"), 1, ERR.format("proposals") + r".*in\.mat: 'boxes' declares 4 boxes "
         r"in all, more than data\.max_proposal_boxes = 3 \(raise it, or null for no limit\)$"),
    Case(".mat v5 more cells than images", _import(lambda p: v5(p, [np.ones((1, 4))] * 3)), 1,
         ERR.format("proposals") + r".*in\.mat: 'boxes' holds 3 arrays for the 2 images of the split test"),
    Case(".mat v5 logical boxes", _import(lambda p: v5(p, [np.ones((2, 4), bool), np.ones((1, 4))])), 1,
         ERR.format("proposals") + r".*in\.mat: boxes of image '.*' \('boxes' cell 1 of 2\): expected numbers, "
         r"got bool values$"),
    Case(".mat v7.3 cell declaring 4 x 400,000,000 (a 5 KB file)", _import(lambda p: v73(p, [(4, 400_000_000),
         (4, 1)])), 1, ERR.format("proposals") + r".*in\.mat: 'boxes' cell 1 declares an array of shape "
         r"\(4, 400000000\) \(400,000,000 boxes\), " + PER_IMAGE),
    Case(".mat v7.3 logical boxes", _import(lambda p: v73(p, [(4, 2), (4, 1)], "logical", "u1")), 1,
         ERR.format("proposals") + r".*got bool values$"),
    # --- output folders that are symbolic links: refused before anything is written
    Case("report into a symlinked RUN/report", _report_into_linked_folder, 1,
         ERR.format("report") + r".*run/report" + LINK),
    Case("report --out a symlink", lambda tmp, tr: _out_is_link(lambda t, _: ["report", str(copy_run(tr, t, "run")),
         "--out", str(t / "out")])(tmp, tr), 1, ERR.format("report") + r".*/out" + LINK),
    Case("train --out a symlink", _out_is_link(lambda tmp, tr: ["train", "--config", "demo", "--out",
         str(tmp / "out"), *_tiny_sets()]), 1, ERR.format("train") + r".*/out" + LINK),
    Case("train --resume with a symlinked tb", _resume_with_linked_tb, 1, ERR.format("train") + r".*out/tb" + LINK),
    Case("eval --out a symlink", _out_is_link(lambda tmp, tr: ["eval", *ckpt_arg(tr), "--out", str(tmp / "out"),
         "--device", "cpu", "--set", "data.num_test=2"]), 1, ERR.format("eval") + r".*/out" + LINK),
    Case("detect --out a symlink", _out_is_link(lambda tmp, tr: ["detect", *ckpt_arg(tr),
         str(image_file(tmp / "i.png")), "--out", str(tmp / "out"), "--device", "cpu"]), 1,
         ERR.format("detect") + r".*/out" + LINK),
    Case("export --out a symlink", _out_is_link(lambda tmp, tr: ["export", "--layout", "voc", "--out",
         str(tmp / "out")]), 1, ERR.format("export") + r".*/out" + LINK),
    Case("export into a folder whose ImageSets is a symlink", _export_with_linked_imagesets, 1,
         ERR.format("export") + r".*out/ImageSets" + LINK),
    Case("bench --out a symlink", _out_is_link(lambda tmp, tr: ["bench", "--config", "demo", "--arms", "ohem",
         "--out", str(tmp / "out")]), 1, ERR.format("bench") + r".*/out" + LINK),
    Case("bench with a symlinked OUT/runs", _bench_with_linked("runs"), 1, ERR.format("bench") + r".*out/runs" + LINK),
    Case("bench with a symlinked OUT/logs", _bench_with_linked("logs"), 1, ERR.format("bench") + r".*out/logs" + LINK),
]
# fmt: on


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_file(case: Case, trained: Path, tmp_path: Path, capsys) -> None:  # noqa: F811
    check_case(case, trained, tmp_path, capsys)


# ------------------------------------------------------------------------------------ full disks
class FullDisk(io.RawIOBase):
    """A file on a disk with ``room`` bytes left: a longer write fails as a full disk fails it."""

    def __init__(self, fd: int, room: int, error: int = errno.ENOSPC) -> None:
        self.fd, self.room, self.error = fd, room, error

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.fd

    def write(self, data) -> int:  # type: ignore[override]
        if len(data) > self.room:
            raise OSError(self.error, os.strerror(self.error))
        self.room -= len(data)
        return os.write(self.fd, data)

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
        super().close()


class OsWithFullDisk:
    """``os`` as ``ohem.util`` (and ``ohem.output_folder``) sees it, with every file it opens on a full disk
    (``room`` bytes left)."""

    def __init__(self, room: int, error: int = errno.ENOSPC) -> None:
        self.room, self.error = room, error

    def __getattr__(self, name: str):
        return getattr(os, name)

    def fdopen(self, fd: int, mode: str = "r", **kwargs):
        raw = io.BufferedWriter(FullDisk(fd, self.room, self.error), buffer_size=64)  # type: ignore[arg-type]
        return raw if "b" in mode else io.TextIOWrapper(raw, encoding=kwargs.get("encoding"))


class OsWithoutWriteAccess:
    """``os`` as ``ohem.util`` sees it, where no folder is writable (``os.access``: what root never sees)."""

    def __getattr__(self, name: str):
        return getattr(os, name)

    def access(self, path, mode) -> bool:
        return False


def full_disk(monkeypatch, room: int = 0, error: int = errno.ENOSPC) -> None:
    """Every file ohem's writers open (``ohem.util``'s, and ``ohem.output_folder``'s in a folder held open)."""
    import ohem.output_folder
    import ohem.util

    monkeypatch.setattr(ohem.util, "os", OsWithFullDisk(room, error))
    monkeypatch.setattr(ohem.output_folder, "os", OsWithFullDisk(room, error))


def test_a_checkpoint_on_a_full_disk_is_one_line_and_the_earlier_one_is_kept(tmp_path: Path, monkeypatch) -> None:
    from ohem.checkpoint import load_checkpoint, save_checkpoint
    from ohem.config import Config

    path = tmp_path / "checkpoint_last.pt"
    model = torch.nn.Linear(64, 64)
    save_checkpoint(path, model, Config(), ["a"], 1)
    earlier = path.read_bytes()
    full_disk(monkeypatch, room=1000)  # torch.save's first records fit, the weights do not
    with pytest.raises(OSError) as e:
        save_checkpoint(path, model, Config(), ["a"], 2)
    assert isinstance(e.value.__cause__, RuntimeError)  # torch's "unexpected pos", raised from the OSError
    assert error_message(e.value) == (
        f"{path}: no space left on device (not written; an earlier checkpoint_last.pt, if any, is left as it was)"
    )
    monkeypatch.undo()
    assert path.read_bytes() == earlier and load_checkpoint(path)["iteration"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_last.pt"]  # no temporary file left


@pytest.mark.parametrize(
    "error, reason",
    [(errno.ENOSPC, "no space left on device"), (errno.EROFS, "read-only file system"),
     (errno.EDQUOT, "disk quota exceeded")],
)  # fmt: skip
def test_text_writes_on_a_full_or_read_only_disk_name_the_file(tmp_path: Path, monkeypatch, error, reason) -> None:
    path = tmp_path / "metrics.json"
    path.write_text("earlier\n")
    full_disk(monkeypatch, room=10, error=error)
    with pytest.raises(OSError) as e, atomic_open(path) as f:
        f.write("x" * 1000)
    assert re.fullmatch(
        rf"{re.escape(str(path))}: {reason} \(not written; an earlier metrics\.json, .*\)", error_message(e.value)
    )
    with pytest.raises(OSError) as e:  # log.jsonl: appended, line by line
        with open_append(tmp_path / "log.jsonl") as log:
            log.write("y" * 1000 + "\n")
    assert error_message(e.value).startswith(f"{tmp_path / 'log.jsonl'}: {reason} (")
    monkeypatch.undo()
    assert path.read_text() == "earlier\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl", "metrics.json"]


def test_a_read_only_folder_refuses_the_temporary_file_in_one_line(tmp_path: Path, monkeypatch) -> None:
    import ohem.util

    class ReadOnlyFolder:  # ``os`` as ``ohem.util`` sees it, where no file can be made
        def __getattr__(self, name: str):
            return getattr(os, name)

        def open(self, path, flags, *args, **kwargs):
            if flags & os.O_CREAT:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS))
            return os.open(path, flags, *args, **kwargs)

    monkeypatch.setattr(ohem.util, "os", ReadOnlyFolder())
    with pytest.raises(OSError) as e, atomic_open(tmp_path / "a.txt") as f:
        f.write("x")
    assert error_message(e.value).startswith(f"{tmp_path / 'a.txt'}: read-only file system (not written")


def test_train_on_a_full_disk_keeps_the_earlier_checkpoint(trained: Path, tmp_path: Path, monkeypatch, capsys) -> None:  # noqa: F811
    """The trained run resumed for one more iteration while its disk is full: one line naming the checkpoint,
    whose earlier version (iteration 4) stays whole."""
    from ohem.checkpoint import load_checkpoint

    out = copy_run(trained, tmp_path)
    earlier = (out / "checkpoint_last.pt").read_bytes()
    full_disk(monkeypatch, room=4096)  # config.yaml fits, the checkpoint does not
    argv = ["train", "--config", "demo", "--out", str(out), "--resume", *_tiny_sets()]
    argv += ["--set", "solver.iterations=5", "--set", "train.checkpoint_every=5"]
    capsys.readouterr()
    assert main(argv) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not PROGRESS_BAR.match(line)]
    assert err == [
        f"ohem train: error: {out / 'checkpoint_last.pt'}: no space left on device (not written; an earlier "
        "checkpoint_last.pt, if any, is left as it was)"
    ]
    monkeypatch.undo()
    assert (out / "checkpoint_last.pt").read_bytes() == earlier
    assert load_checkpoint(out / "checkpoint_last.pt")["iteration"] == 4


def test_bench_names_the_failed_runs_error(tmp_path: Path) -> None:
    from ohem.bench.jobs import Job, run_jobs
    from ohem.bench.run import failure_summary

    line = f"ohem train: error: {tmp_path}/checkpoint_last.pt: no space left on device (not written; ...)"
    child = [sys.executable, "-c", f"import sys; print({line!r}, file=sys.stderr); sys.exit(1)"]
    failed = run_jobs([Job("accuracy ohem seed 0", child, tmp_path / "logs" / "a.log", 1, lambda wall: "done")], 1)
    summary = failure_summary(failed, tmp_path / "logs")
    assert "\n" not in summary
    assert summary == (
        f"ohem bench: 1 run(s) failed; first accuracy ohem seed 0: FAILED (exit 1): {line}; "
        f"logs in {tmp_path / 'logs'} (rerun to retry them)"
    )


# ------------------------------------------------------------------------------------ output folders
def test_output_folder_refuses_links_inside_and_allows_them_above(tmp_path: Path) -> None:
    from ohem.util import output_folder

    (tmp_path / "disk").mkdir()
    (tmp_path / "mounted").symlink_to(tmp_path / "disk")  # a folder above --out may be a link (another disk)
    run = output_folder(tmp_path / "mounted" / "run")
    assert run.is_dir() and (tmp_path / "disk" / "run").is_dir()
    (run / "deep").symlink_to(tmp_path / "disk")
    with pytest.raises(ValueError, match=r"run/deep: is a symbolic link"):
        output_folder(run / "deep" / "report", "report folder", inside=run)
    assert not (tmp_path / "disk" / "report").exists()


def test_an_unwritable_output_folder_is_refused_before_work(tmp_path: Path, monkeypatch) -> None:
    import ohem.util
    from ohem.util import check_output_folder

    monkeypatch.setattr(ohem.util, "os", OsWithoutWriteAccess())
    with pytest.raises(ValueError, match=rf"^--out {re.escape(str(tmp_path))}: not writable$"):
        check_output_folder(tmp_path)
    with pytest.raises(
        ValueError, match=rf"^--out .*/new/run: not writable \(it would be made in {re.escape(str(tmp_path))}\)$"
    ):
        check_output_folder(tmp_path / "new" / "run")


# ------------------------------------------------------------------------------------ .mat headers, unit
def test_mat_cells_that_are_not_plain_numbers_are_refused_from_the_header(tmp_path: Path) -> None:
    from ohem.data.mat_headers import BoxLimits
    from ohem.data.mat_proposals import read_mat_proposals

    struct_cell = v5(tmp_path / "s.mat", [{"a": np.ones((1, 4))}, np.ones((1, 4))])
    with pytest.raises(ValueError, match=r"s\.mat: 'boxes' cell 1 is a MATLAB struct array, not numbers$"):
        read_mat_proposals(struct_cell, BoxLimits(images=2))
    complex_cell = v5(tmp_path / "c.mat", [np.ones((1, 4)), np.ones((1, 4)) * 1j])
    with pytest.raises(ValueError, match=r"c\.mat: 'boxes' cell 2 holds complex numbers$"):
        read_mat_proposals(complex_cell, BoxLimits(images=2))


def test_mat_forged_byte_counts_are_refused_before_reading(tmp_path: Path) -> None:
    from ohem.data.mat_headers import BoxLimits
    from ohem.data.mat_proposals import read_mat_proposals

    path = v5(tmp_path / "d.mat", [np.ones((2, 4)), np.ones((1, 4))])
    raw = bytearray(path.read_bytes())
    at = raw.index(struct.pack("<II", 9, 64))  # miDOUBLE, 2 x 4 x 8 bytes: the first cell's data tag
    raw[at : at + 8] = struct.pack("<II", 9, 1 << 31)
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"d\.mat: 'boxes' cell 1 claims 2,147,483,648 bytes of data in 64 \(forged\)"):
        read_mat_proposals(path, BoxLimits(images=2))
    names = tmp_path / "n.mat"
    mat_extra("scipy.io").savemat(names, {"boxes": cells([np.ones((1, 4))] * 2), "images": cells(["a", "b"])})
    raw = bytearray(names.read_bytes())
    images_tag = 128 + 8 + struct.unpack("<I", raw[132:136])[0]  # after boxes (uncompressed)
    raw[images_tag + 4 : images_tag + 8] = struct.pack("<I", 17 << 20)
    names.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"n\.mat: 'images' declares 17,825,792 bytes, more than 16,777,216"):
        read_mat_proposals(names, BoxLimits(images=2))


def test_proposals_refuse_an_unwritable_folder_before_any_work(tmp_path: Path, monkeypatch, capsys) -> None:
    import ohem.util

    monkeypatch.setattr(ohem.util, "os", OsWithoutWriteAccess())
    argv = ["proposals", "--method", "dense", *TWO_IMAGES, "--out", str(tmp_path / "p.npz")]
    assert main(argv) == 1
    assert capsys.readouterr().err == f"ohem proposals: error: --out's folder {tmp_path}: not writable\n"
    assert not any(tmp_path.iterdir())
