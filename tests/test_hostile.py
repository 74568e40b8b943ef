"""Hostile input and faults against the CLI (run side): each case writes its files into a fresh
folder, runs one command, and checks the exit code, the single stderr line, and that nothing
outside the command's output folder changed (nothing at all when the command fails).

The next bad input is one ``Case(...)`` line in ``CASES``."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ohem.checkpoint import load_checkpoint
from ohem.cli import main
from ohem.util import atomic_open
from tests.conftest import TINY

SETS = [arg for item in TINY for arg in ("--set", item)]


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny finished run (4 iterations, checkpoints at 2 and 4), trained under umask 022."""
    out = tmp_path_factory.mktemp("trained") / "run"
    old = os.umask(0o022)
    try:
        assert main(["train", "--config", "demo", "--out", str(out), *SETS]) == 0
    finally:
        os.umask(old)
    return out


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file (and link, and folder) under ``root``: content hash, mode and mtime."""
    found = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            found[str(path)] = ("link", os.readlink(path))
        elif stat.S_ISREG(info.st_mode):
            found[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest(), info.st_mode, info.st_mtime_ns)
        else:
            found[str(path)] = ("other", stat.S_IFMT(info.st_mode))
    return found


def image_file(path: Path, size: tuple[int, int] = (60, 80), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def text_file(path: Path, text: str = "not a folder\n") -> Path:
    path.write_text(text)
    return path


def copy_run(trained: Path, tmp: Path, name: str = "out") -> Path:
    dest = tmp / name
    shutil.copytree(trained, dest, symlinks=True)
    (dest / "report").exists() and shutil.rmtree(dest / "report")
    return dest


def handmade_checkpoint(trained: Path, tmp: Path, **changes) -> Path:
    """The trained checkpoint with keys replaced (a value None: the key removed)."""
    state = load_checkpoint(trained / "checkpoint_last.pt")
    for key, value in changes.items():
        state.pop(key) if value is None else state.__setitem__(key, value)
    path = tmp / "hand.pt"
    torch.save(state, path)
    return path


def edit_jsonl(path: Path, edit: Callable[[list[dict]], list[dict]], tail: str = "") -> None:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    path.write_text("".join(json.dumps(r) + "\n" for r in edit(records)) + tail)


def unblock_fifo_later(path: Path, seconds: float = 20) -> None:
    """Should a command wrongly open the FIFO ``path`` for reading, open its other end after
    ``seconds`` (the reader then sees EOF and the test fails instead of hanging)."""

    def writer() -> None:
        deadline = time.time() + seconds + 60
        time.sleep(seconds)
        while time.time() < deadline and path.exists():
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
                return
            except OSError:
                time.sleep(0.2)

    threading.Thread(target=writer, daemon=True).start()


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    unblock_fifo_later(path)
    return path


def ckpt_arg(trained: Path) -> list[str]:
    return ["--checkpoint", str(trained / "checkpoint_last.pt")]


# ----------------------------------------------------------------------------------------------- cases
@dataclass
class Case:
    """``setup(tmp, trained)`` writes the case's files under ``tmp`` and returns the argv; the command
    may write only under ``tmp / out`` (on success). ``err``: regex the one stderr line must match
    (``""``: stderr must be empty); ``check(tmp)``: more assertions after the run."""

    name: str
    setup: Callable[[Path, Path], list[str]]
    rc: int
    err: str
    out: str = "out"
    check: Callable[[Path], None] | None = None
    inputs_untouched_in_out: bool = False  # files that were in the out folder before must stay as they were
    resumable: bool = False  # a failure may leave finished work in the out folder (to resume from)


def _detect_into_image_folder(tmp: Path, trained: Path) -> list[str]:
    image_file(tmp / "out" / "photo.png")
    return ["detect", *ckpt_arg(trained), str(tmp / "out" / "photo.png"), "--out", str(tmp / "out"), "--device", "cpu"]


def _check_detect_into_image_folder(tmp: Path) -> None:
    results = json.loads((tmp / "out" / "detections.json").read_text())
    assert [r["drawing"] for r in results] == [str(tmp / "out" / "photo-1.png")]


def _detect_same_stems(tmp: Path, trained: Path) -> list[str]:
    paths = [image_file(tmp / "a" / "ok.png", seed=1), image_file(tmp / "b" / "ok.png", seed=2)]
    paths.append(image_file(tmp / "ok.jpg", seed=3))
    return ["detect", *ckpt_arg(trained), *map(str, paths), "--out", str(tmp / "out"), "--device", "cpu"]


def _check_same_stems(tmp: Path) -> None:
    assert sorted(p.name for p in (tmp / "out").iterdir()) == ["detections.json", "ok-1.png", "ok-2.png", "ok.png"]


def _detect_symlinked_output(tmp: Path, trained: Path) -> list[str]:
    image_file(tmp / "ok.png")
    (tmp / "out").mkdir()
    (tmp / "victim.txt").write_text("keep me")
    (tmp / "out" / "ok.png").symlink_to(tmp / "victim.txt")
    return ["detect", *ckpt_arg(trained), str(tmp / "ok.png"), "--out", str(tmp / "out"), "--device", "cpu"]


def _train(tmp: Path, *extra: str, out: str = "out") -> list[str]:
    return ["train", "--config", "demo", "--out", str(tmp / out), *SETS, *extra]


def _with_run(*extra: str) -> Callable[[Path, Path], list[str]]:
    """Train into a copy of the trained run, with ``extra`` arguments."""

    def setup(tmp: Path, trained: Path) -> list[str]:
        copy_run(trained, tmp)
        return _train(tmp, *extra)

    return setup


def _fresh(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda tmp, trained: _train(tmp, *extra)


def _run_with_symlink(name: str, *extra: str) -> Callable[[Path, Path], list[str]]:
    def setup(tmp: Path, trained: Path) -> list[str]:
        out = copy_run(trained, tmp)
        (tmp / "elsewhere.txt").write_text("not the run's\n")
        (out / name).unlink()
        (out / name).symlink_to(tmp / "elsewhere.txt")
        return _train(tmp, *extra)

    return setup


def _checkpoint_case(**changes) -> Callable[[Path, Path], list[str]]:
    def setup(tmp: Path, trained: Path) -> list[str]:
        path = handmade_checkpoint(trained, tmp, **changes)
        return ["eval", "--checkpoint", str(path), "--out", str(tmp / "out"), "--device", "cpu"]

    return setup


def _save_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _save(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


def _seven_class_weights(tmp: Path, trained: Path) -> Path:
    weights = load_checkpoint(trained / "checkpoint_last.pt")["model"]
    key = "roi_heads.box_predictor.cls_score.weight"
    weights[key] = torch.zeros(7, weights[key].shape[1])
    return _save(tmp / "seven.pth", weights)


def _other_class_count(tmp: Path, trained: Path) -> list[str]:
    state = load_checkpoint(trained / "checkpoint_last.pt")
    state["classes"] = [*state["classes"], "extra"]
    torch.save(state, tmp / "hand.pt")
    image_file(tmp / "ok.png")
    return ["detect", "--checkpoint", str(tmp / "hand.pt"), str(tmp / "ok.png"), "--out", str(tmp / "out")]


def _report_case(edit: Callable[[Path], None]) -> Callable[[Path, Path], list[str]]:
    def setup(tmp: Path, trained: Path) -> list[str]:
        run = copy_run(trained, tmp, "run")
        edit(run)
        return ["report", str(run), "--out", str(tmp / "out")]

    return setup


def _resume_torn(tmp: Path, trained: Path) -> list[str]:
    out = copy_run(trained, tmp)
    for name in ("log.jsonl", "mining.jsonl"):
        with (out / name).open("a") as f:
            f.write('{"iteration": 5, "loss": 1.2')  # killed mid-write
    return _train(tmp, "--resume", "--set", "solver.iterations=5", "--set", "train.checkpoint_every=5")


def _check_resumed_torn(tmp: Path) -> None:
    for name in ("log.jsonl", "mining.jsonl"):
        records = [json.loads(line) for line in (tmp / "out" / name).read_text().splitlines()]
        steps = [r["iteration"] for r in records if "eval" not in r]
        assert steps == ([1, 2, 3, 4, 5] if name == "log.jsonl" else [4, 5]), (name, steps)
    assert load_checkpoint(tmp / "out" / "checkpoint_last.pt")["iteration"] == 5


def _resume_without_solver_state(tmp: Path, trained: Path) -> list[str]:
    out = copy_run(trained, tmp)
    torch.save({**load_checkpoint(trained / "checkpoint_last.pt"), "optimizer": None}, out / "checkpoint_last.pt")
    return _train(tmp, "--resume")


def _check_moved_aside(tmp: Path) -> None:
    old = tmp / "out" / "previous-1"
    assert {p.name for p in old.iterdir()} >= {"checkpoint_last.pt", "log.jsonl", "config.yaml", "metrics.json"}
    assert load_checkpoint(old / "checkpoint_last.pt")["iteration"] == 4
    assert load_checkpoint(tmp / "out" / "checkpoint_last.pt")["iteration"] == 2


def _drop_key(key: str) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        edit_jsonl(run / "mining.jsonl", lambda rs: [{k: v for k, v in r.items() if k != key} for r in rs])

    return edit


def _empty_hardest(run: Path) -> None:
    edit_jsonl(run / "mining.jsonl", lambda rs: [{**r, "hardest": []} for r in rs])


def _check_no_gallery(tmp: Path) -> None:
    names = {p.name for p in (tmp / "out").iterdir()}
    assert "losses.png" in names and "hardest_rois.png" not in names


def _check_losses_and_map_only(tmp: Path) -> None:
    assert {p.name for p in (tmp / "out").iterdir()} == {"losses.png", "map.png"}


def _torn_mining(run: Path) -> None:
    with (run / "mining.jsonl").open("a") as f:
        f.write('{"iteration": 8, "steps": 4, "iou_h')


def _bad_middle_line(run: Path) -> None:
    text = (run / "log.jsonl").read_text().splitlines()
    text[1] = text[1][:20]
    (run / "log.jsonl").write_text("\n".join(text) + "\n")


def _proposals_on_corrupt_image(tmp: Path, trained: Path) -> list[str]:
    assert (
        main(["export", "--layout", "voc", "--split", "test", "--out", str(tmp / "voc"), "--set", "data.num_test=2"])
        == 0
    )
    images = sorted((tmp / "voc").rglob("*.png"))
    images[0].write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return [
        "proposals",
        "--data",
        f"voc:{tmp / 'voc'}",
        "--split",
        "test",
        "--classes",
        "circle,square,triangle,plus,ring",
        "--processes",
        "1",
        "--out",
        str(tmp / "out" / "p.npz"),
    ]


def _coco_run(edit_test: Callable[[dict], dict]) -> Callable[[Path, Path], list[str]]:
    """Train on a COCO-layout export of the tiny synthetic data, its test JSON changed by ``edit_test``."""

    def setup(tmp: Path, trained: Path) -> list[str]:
        for split in ("train", "test"):
            data = [arg for item in TINY if item.startswith("data.") for arg in ("--set", item)]
            argv = ["export", "--layout", "coco", "--split", split, "--out", str(tmp / "coco"), *data]
            assert main(argv) == 0
        path = tmp / "coco" / "annotations" / "instances_test.json"
        path.write_text(json.dumps(edit_test(json.loads(path.read_text()))))
        coco = ["--set", "data.dataset=coco", "--set", f"data.root={tmp / 'coco'}", "--set", "data.train_split=train"]
        return _train(tmp, *coco, "--set", "data.test_split=test")

    return setup


def _swap_first_two_categories(gt: dict) -> dict:
    first, second = gt["categories"][:2]
    swapped = {first["id"]: second["id"], second["id"]: first["id"]}
    categories = [{**c, "id": swapped.get(c["id"], c["id"])} for c in gt["categories"]]
    annotations = [{**a, "category_id": swapped.get(a["category_id"], a["category_id"])} for a in gt["annotations"]]
    return {**gt, "categories": categories, "annotations": annotations}


def _check_nothing_measured(tmp: Path) -> None:
    run = tmp / "out"
    assert json.loads((run / "metrics.json").read_text(), parse_constant=reject_constant)["mAP"] is None
    evals = [json.loads(line, parse_constant=reject_constant) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["eval"]["mAP"] for r in evals if "eval" in r] == [None]  # null, not NaN


ONE_LINE_TRAIN = r"^ohem train: error: "
SET_TRAIN = ONE_LINE_TRAIN + r"override '[^']*': "  # a range error names the --set that gave the value
PROGRESS_BAR = re.compile(r"^[\w ()]+:\s+\d+%\|")  # tqdm's bars (train, selective search) are not messages
# fmt: off
CASES = [
    # --- output safety
    Case("detect into the image's own folder", _detect_into_image_folder, 0, "", check=_check_detect_into_image_folder,
         inputs_untouched_in_out=True),
    Case("detect, inputs with one stem", _detect_same_stems, 0, "", check=_check_same_stems),
    Case("detect, --out is an input file", lambda tmp, tr: ["detect", *ckpt_arg(tr), str(image_file(tmp / "p.png")),
         "--out", str(tmp / "p.png")], 1, r"^ohem detect: error: --out .*p\.png: exists and is not a folder$"),
    Case("detect, an output name is a symlink", _detect_symlinked_output, 1,
         r"^ohem detect: error: .*out/ok\.png: is a symbolic link"),
    Case("eval, --out is a file", lambda tmp, tr: [
        "eval", *ckpt_arg(tr), "--out", str(image_file(tmp / "f.png")), "--device", "cpu"], 1,
        r"^ohem eval: error: --out .*f\.png: exists and is not a folder$"),
    Case("export, --out is a file", lambda tmp, tr: ["export", "--layout", "voc", "--out", str(text_file(tmp / "f"))],
         1, r"^ohem export: error: --out .*: exists and is not a folder$"),
    Case("train, --out is a file", lambda tmp, tr: _train(tmp, out="f.png") if image_file(tmp / "f.png") else [], 1,
         ONE_LINE_TRAIN + r"--out .*f\.png: exists and is not a folder$"),
    Case("train into a folder that holds a run", _with_run(), 1,
         ONE_LINE_TRAIN + r".*/out: holds a run \(checkpoint_last\.pt\); continue it with --resume, or .* --force"),
    Case("--resume and --force", _with_run("--resume", "--force"), 1, ONE_LINE_TRAIN + "--resume .* --force .*"),
    Case("--resume with another sampler", _with_run("--resume", "--set", "sampler.method=heuristic"), 1,
         ONE_LINE_TRAIN + r"checkpoint .*checkpoint_last\.pt: sampler\.method: the run was trained with 'ohem'"),
    Case("--resume with another model size", _with_run("--resume", "--set", "model.max_size=160"), 1,
         ONE_LINE_TRAIN + r"checkpoint .*: model\.max_size: "),
    Case("--resume shorter than the checkpoint", _with_run("--resume", "--set", "solver.iterations=3"), 1,
         ONE_LINE_TRAIN + r"checkpoint .*: solver\.iterations: 3 is below the checkpoint's iteration 4"),
    Case("--resume without a checkpoint", _fresh("--resume"), 1,
         ONE_LINE_TRAIN + r".*checkpoint_last\.pt: --resume: no checkpoint to continue from$"),
    Case("--resume through a symlinked log", _run_with_symlink("log.jsonl", "--resume"), 1,
         ONE_LINE_TRAIN + r".*out/log\.jsonl: is a symbolic link"),
    Case("--force with a symlinked config.yaml", _run_with_symlink("config.yaml", "--force"), 1,
         ONE_LINE_TRAIN + r".*out/config\.yaml: is a symbolic link"),
    # --- runs that recover / refused before anything runs (the out folder is not even made)
    Case("torn last log lines, --resume", _resume_torn, 0, "", check=_check_resumed_torn),
    Case("--force moves the old run aside", _with_run("--force", "--set", "solver.iterations=2"), 0,
         r"^ohem train: moved the earlier run in .*out to .*out/previous-1$", check=_check_moved_aside),
    Case("solver.iterations 0", _fresh("--set", "solver.iterations=0"), 1, SET_TRAIN + "solver.iterations must"),
    Case("solver.iterations -5", _fresh("--set", "solver.iterations=-5"), 1, SET_TRAIN + "solver.iterations"),
    Case("images_per_batch 0", _fresh("--set", "solver.images_per_batch=0"), 1, SET_TRAIN + "solver.images_per"),
    Case("images_per_batch -2", _fresh("--set", "solver.images_per_batch=-2"), 1, SET_TRAIN + "solver.images"),
    Case("batch_size_per_image 0", _fresh("--set", "sampler.batch_size_per_image=0"), 1,
         SET_TRAIN + r"sampler\.batch_size_per_image must be an integer in \[1, 100000\], got 0$"),
    Case("num_threads -1", _fresh("--set", "train.num_threads=-1"), 1, SET_TRAIN + r"train\.num_threads must be"),
    Case("num_threads 0", _fresh("--set", "train.num_threads=0"), 1, SET_TRAIN + r"train\.num_threads must be"),
    Case("mining_log_every 0", _fresh("--set", "train.mining_log_every=0"), 1, SET_TRAIN + r"train\.mining_log"),
    Case("empty test split", _fresh("--set", "data.num_test=0"), 1, SET_TRAIN + r"data\.num_test must be an integ"),
    Case("negative train split", _fresh("--set", "data.num_train=-3"), 1, SET_TRAIN + r"data\.num_train must be"),
    Case("device bogus", _fresh("--set", "train.device=bogus"), 1, ONE_LINE_TRAIN + "train.device: 'bogus' is not a"),
    Case("backbone weights of another shape", lambda tmp, tr: _train(tmp, "--set", "model.backbone_weights="
         f"{_save(tmp / 'bb.pt', {'stem.0.weight': torch.zeros(3, 3, 1, 1)})}"), 1, ONE_LINE_TRAIN + r"model\.backbone_"
         r"weights .*bb\.pt: weights of another model \(size mismatch for stem\.0\.weight: .*torch\.Size\(\[32, 3, 3, "
         r"3\]\)\.\)$"),
    Case("init_weights of another class count", lambda tmp, tr: _train(tmp, "--set", "model.init_weights="
         f"{_seven_class_weights(tmp, tr)}"), 1, ONE_LINE_TRAIN + r"init_weights: weights of another model or class "
         r"count \(size mismatch for roi_heads\."),
    Case("--set not YAML", _fresh("--set", "solver.lr=["), 1, ONE_LINE_TRAIN + r"override 'solver\.lr=\[': value is"),
    Case("config is a folder", lambda tmp, tr: ["train", "--config", str(tmp), "--out", str(tmp / "out")], 1,
         ONE_LINE_TRAIN + r"config .*: is a directory, not a regular file$"),
    Case("config is a FIFO", lambda tmp, tr: ["train", "--config", str(fifo(tmp / "c.yaml")), "--out",
         str(tmp / "out")], 1, ONE_LINE_TRAIN + r"config .*c\.yaml: is a FIFO \(named pipe\), not a regular file"),
    Case("recipe of a FIFO", lambda tmp, tr: ["recipe", str(fifo(tmp / "c.yaml"))], 1,
         r"^ohem recipe: error: config .*c\.yaml: is a FIFO \(named pipe\), not a regular file$"),
    Case("recipe of a folder", lambda tmp, tr: ["recipe", str(tmp)], 1,
         r"^ohem recipe: error: config .*: is a directory, not a regular file$"),
    Case("config whose base: is a FIFO", lambda tmp, tr: ["train", "--config", str(text_file(tmp / "r.yaml",
         f"base: {fifo(tmp / 'b.yaml')}\n")), "--out", str(tmp / "out")], 1,
         ONE_LINE_TRAIN + r"config .*b\.yaml: is a FIFO \(named pipe\), not a regular file$"),
    Case("config whose base: is missing", lambda tmp, tr: ["train", "--config", str(text_file(tmp / "r.yaml",
         "base: gone.yaml\n")), "--out", str(tmp / "out")], 1, ONE_LINE_TRAIN + r"config .*gone\.yaml: cannot read"),
    Case("detect --score-thresh nan", lambda tmp, tr: ["detect", *ckpt_arg(tr), str(image_file(tmp / "i.png")),
         "--out", str(tmp / "out"), "--score-thresh", "nan"], 1, r"^ohem detect: error: --score-thresh: must be a "
         r"finite number, got nan$"),
    Case("detect a 3x5000 image", lambda tmp, tr: ["detect", *ckpt_arg(tr), str(image_file(tmp / "t.png", (3, 5000))),
         "--out", str(tmp / "out"), "--device", "cpu"], 1,
         r"^ohem detect: error: image .*t\.png: (5000x3 px is too thin|image size 5000x3 is degenerate)"),
    Case("detect --device bogus", lambda tmp, tr: ["detect", *ckpt_arg(tr), str(image_file(tmp / "i.png")),
         "--out", str(tmp / "out"), "--device", "bogus"], 1, r"^ohem detect: error: --device: 'bogus' is not a"),
    # --- checkpoints: hand-made, of another model, not files
    Case("checkpoint without config", _checkpoint_case(config=None), 1,
         r"^ohem eval: error: checkpoint .*hand\.pt: config: missing"),
    Case("checkpoint without classes", _checkpoint_case(classes=None), 1,
         r"^ohem eval: error: checkpoint .*hand\.pt: classes: expected a non-empty list"),
    Case("checkpoint model is a list", _checkpoint_case(model=[1, 2]), 1,
         r"^ohem eval: error: checkpoint .*hand\.pt: model: its weights are not a state dict \(got list\)$"),
    Case("checkpoint of another class count", _other_class_count, 1,
         r"^ohem detect: error: checkpoint .*hand\.pt: weights of another model or class count \(size mismatch for "
         r"roi_heads\.box_predictor\.cls_score\.weight: copying a param with shape torch\.Size\(\[6, \d+\]\) from "
         r"checkpoint, the shape in current model is torch\.Size\(\[7, \d+\]\)\.; "),
    Case("checkpoint is a folder", lambda tmp, tr: ["eval", "--checkpoint", str(tmp), "--out", str(tmp / "out")], 1,
         r"^ohem eval: error: checkpoint .*: is a directory, not a regular file$"),
    Case("checkpoint is a FIFO", lambda tmp, tr: ["eval", "--checkpoint", str(fifo(tmp / "c.pt")), "--out",
         str(tmp / "out")], 1, r"^ohem eval: error: checkpoint .*c\.pt: is a FIFO \(named pipe\), not a regular file"),
    Case("resume a checkpoint without solver state", _resume_without_solver_state, 1,
         ONE_LINE_TRAIN + r"checkpoint .*: optimizer: missing"),
    # --- report on hand-edited run folders
    Case("report, mining.jsonl missing", _report_case(lambda run: (run / "mining.jsonl").unlink()), 0,
         r"^ohem report: note: .*run: no mining\.jsonl \(sampler\.method ohem records no mined RoIs\); drawing "
         r"losses\.png and map\.png \(", check=_check_losses_and_map_only),
    Case("report, torn last mining line", _report_case(_torn_mining), 0, ""),
    Case("report, bad middle log line", _report_case(_bad_middle_line), 1,
         r"^ohem report: error: .*run/log\.jsonl: line 2: "),
    Case("report, record without iou_hist", _report_case(_drop_key("iou_hist")), 1,
         r"^ohem report: error: .*run/mining\.jsonl: record 1 \(iteration 4\): missing 'iou_hist'$"),
    Case("report, empty hardest list", _report_case(_empty_hardest), 0, r"^ohem report: note: .*no hardest RoIs",
         check=_check_no_gallery),
    Case("report, hardest image out of range", _report_case(lambda run: edit_jsonl(run / "mining.jsonl", lambda rs: [
         {**r, "hardest": [{**r["hardest"][0], "image_index": 99}]} for r in rs])), 1,
         r"^ohem report: error: .*mining\.jsonl: record 1 \(iteration 4\): hardest: image 99 .* not in the run"),
    Case("report, config.yaml not a mapping", _report_case(lambda run: (run / "config.yaml").write_text("- a\n")), 1,
         r"^ohem report: error: .*run/config\.yaml: expected a mapping"),
    Case("report, config.yaml not YAML", _report_case(lambda run: (run / "config.yaml").write_text("a: [\n")), 1,
         r"^ohem report: error: .*run/config\.yaml: not valid YAML"),
    Case("report on a file", lambda tmp, tr: ["report", str(image_file(tmp / "f.png"))], 1,
         r"^ohem report: error: .*f\.png: not a folder"),
    # --- library errors: one line, not a traceback
    Case("detections file is a folder", lambda tmp, tr: ["eval", "--detections", str(tmp), "--out",
         str(tmp / "out")], 1, r"^ohem eval: error: detections file .*: is a directory, not a regular file"),
    Case("detections file nested 100000 deep", lambda tmp, tr: ["eval", "--detections", str(text_file(
         tmp / "deep.json", "[" * 100000 + "]" * 100000)), "--out", str(tmp / "out"), "--set", "data.num_test=2"], 1,
         r"^ohem eval: error: .*detections.*deep\.json.*(nest|deep)"),
    Case("config not UTF-8", lambda tmp, tr: ["train", "--config", str(_save_bytes(tmp / "c.yaml", b"\xff\xfe x")),
         "--out", str(tmp / "out")], 1, ONE_LINE_TRAIN + r"config .*c\.yaml: .*UTF-8"),
    Case("proposals on a corrupt image", _proposals_on_corrupt_image, 1,
         r"^ohem proposals: error: .*synthetic-test-00000", resumable=True),
    # --- loader and mining settings, dense proposals
    Case("train --workers -1", lambda tmp, tr: _train(tmp, "--workers", "-1"), 1,
         SET_TRAIN + r"data\.workers must be an integer in \[0, 64\] or null, got -1$"),
    Case("train, test.images_per_batch 0", lambda tmp, tr: _train(tmp, "--set", "test.images_per_batch=0"), 1,
         SET_TRAIN + r"test\.images_per_batch must be an integer in \[1, 4096\], got 0$"),
    Case("train, sampler.start -5", lambda tmp, tr: _train(tmp, "--set", "sampler.start=-5"), 1,
         SET_TRAIN + r"sampler\.start must be an integer in \[0, 1000000000\], got -5$"),
    Case("train, data.workers a string", lambda tmp, tr: _train(tmp, "--set", "data.workers=many"), 1,
         ONE_LINE_TRAIN + r".*data\.workers.*many"),
    Case("eval --workers -1", lambda tmp, tr: ["eval", *ckpt_arg(tr), "--out", str(tmp / "out"), "--workers", "-1",
         "--device", "cpu"], 1,
         r"^ohem eval: error: override 'data\.workers=-1': data\.workers must be an integer in \[0, 64\] or null, "
         r"got -1$"),
    Case("dense proposals, --copies -1", lambda tmp, tr: ["proposals", "--data", "synthetic", "--split", "test",
         "--method", "dense", "--copies", "-1", "--out", str(tmp / "out" / "p.npz"), "--set", "data.num_test=2"], 1,
         r"^ohem proposals: error: dense proposals: need .* got 2000, -1, 0\.15$"),
    Case("dense proposals, --jitter nan", lambda tmp, tr: ["proposals", "--data", "synthetic", "--split", "test",
         "--method", "dense", "--jitter", "nan", "--out", str(tmp / "out" / "p.npz"), "--set", "data.num_test=2"], 1,
         r"^ohem proposals: error: dense proposals: need .* got 2000, 20, nan$"),
    # --- class lists, and a test split with nothing to measure
    Case("COCO categories []", _coco_run(lambda gt: {**gt, "categories": [], "annotations": []}), 1,
         ONE_LINE_TRAIN + r"COCO annotations .*instances_test\.json: 'categories' is empty: no class to train on"),
    Case("COCO test split with two category ids swapped", _coco_run(_swap_first_two_categories), 1,
         ONE_LINE_TRAIN + r"data\.test_split: test split's classes \['square', 'circle', .*\] differ from the "
         r"training split's \['circle', 'square', .*\] \(the same names in another order\); a run needs"),
    Case("test split without objects", _coco_run(lambda gt: {**gt, "annotations": []}), 0,
         r"^ohem train: note: mAP n/a: no class has objects in the test split \(4 images\); nothing was measured$",
         check=_check_nothing_measured),
    # --- ohem bench's cost phase
    Case("bench --cost-iters -1", lambda tmp, tr: ["bench", "--config", "demo", "--arms", "ohem",
         "--cost-iters", "-1", "--out", str(tmp / "out" / "b")], 1,
         r"^ohem bench: error: --cost-iters must be >= 0, got -1$"),
    Case("bench --cost-iters 0 with --budget seconds", lambda tmp, tr: ["bench", "--config", "demo",
         "--arms", "ohem", "--cost-iters", "0", "--budget", "seconds", "--out", str(tmp / "out" / "b")], 1,
         r"^ohem bench: error: --cost-iters 0 \(no cost phase\) leaves --budget seconds nothing to divide"),
]
# fmt: on


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(case: Case, trained: Path, tmp_path: Path, capsys) -> None:
    check_case(case, trained, tmp_path, capsys)


def check_case(case: Case, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Run ``case``: its exit code, its one stderr line, and nothing changed outside its out folder."""
    argv = case.setup(tmp_path, trained)
    out = tmp_path / case.out
    before, trained_before = snapshot(tmp_path), snapshot(trained)
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == case.rc, err
    lines = [line for line in re.split(r"[\r\n]", err) if line.strip() and not PROGRESS_BAR.match(line)]
    if case.err:
        assert len(lines) == 1 and re.search(case.err, lines[0]), err
    else:
        assert not lines, err
    assert snapshot(trained) == trained_before
    after = snapshot(tmp_path)
    for path, state in before.items():
        inside = Path(path).is_relative_to(out) and not case.inputs_untouched_in_out
        assert inside and rc == 0 or after.get(path) == state, f"{path} changed"
    assert rc == 0 or case.resumable or set(after) == set(before), f"failed, yet wrote {set(after) - set(before)}"
    assert all(Path(p).is_relative_to(out) for p in set(after) - set(before))
    if case.check:
        case.check(tmp_path)


# ------------------------------------------------------------------------------- beyond one command
def test_a_forked_loader_worker_does_not_keep_the_run_folder_locked(tmp_path: Path) -> None:
    from ohem.engine import run_folder

    with run_folder.claim(tmp_path):
        (fd,) = run_folder._HELD_LOCKS
        pid = os.fork()
        if pid == 0:  # the child: its copy of the lock's descriptor must be closed already
            try:
                os.fstat(fd)
                os._exit(1)
            except OSError:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        os.fstat(fd)  # the parent still holds it


def test_second_train_into_a_folder_in_use_fails_at_once_naming_the_first(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "ohem",
        "train",
        "--config",
        "demo",
        "--out",
        str(tmp_path / "run"),
        *SETS,
        "--set",
        "solver.iterations=200",
        "--set",
        "train.checkpoint_every=1",
        "--set",
        "solver.warmup_iterations=1",  # the resume below may end at iteration 1: the warm-up must fit
    ]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        checkpoint, deadline = tmp_path / "run" / "checkpoint_last.pt", time.time() + 180
        while not checkpoint.exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.1)
        assert first.poll() is None, "the first run ended before the second started"
        second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
        assert first.poll() is None, "the second run waited for the first"
        assert second.returncode == 1
        assert second.stderr.strip() == (
            f"ohem train: error: {tmp_path / 'run'}: in use by another ohem train (pid {first.pid}); "
            "wait for it to end or use another --out"
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    lock = tmp_path / "run" / ".lock"
    assert lock.read_text().strip() == str(first.pid)  # the killed run's lock is left behind ...
    done = load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")["iteration"]
    resume = [
        "train",
        "--config",
        "demo",
        "--out",
        str(tmp_path / "run"),
        *SETS,
        "--resume",
        "--set",
        "train.checkpoint_every=1",
        "--set",
        f"solver.iterations={done}",
        "--set",
        "solver.warmup_iterations=1",
    ]
    assert main(resume) == 0  # ... and taken over by the next run, which removes it when it ends
    assert not lock.exists()


def test_files_follow_the_umask(trained: Path, tmp_path: Path) -> None:
    for name in ("checkpoint_last.pt", "config.yaml", "metrics.json", "log.jsonl", "mining.jsonl", "detections.png"):
        assert stat.S_IMODE((trained / name).stat().st_mode) == 0o644, name
    old = os.umask(0o077)
    try:
        with atomic_open(tmp_path / "private.txt") as f:
            f.write("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "private.txt").stat().st_mode) == 0o600
    (tmp_path / "private.txt").chmod(0o640)  # a replaced file keeps the permissions it was given
    with atomic_open(tmp_path / "private.txt") as f:
        f.write("y")
    assert stat.S_IMODE((tmp_path / "private.txt").stat().st_mode) == 0o640


def reject_constant(token: str) -> None:
    raise ValueError(f"non-standard JSON token {token}")


def test_metrics_json_is_strict_json(trained: Path, tmp_path: Path) -> None:
    text = (trained / "metrics.json").read_text()
    metrics = json.loads(text, parse_constant=reject_constant)
    assert None in metrics["AP"].values()  # the tiny test split lacks a class: its AP is null, not NaN
    out = tmp_path / "eval"
    assert main(["eval", *ckpt_arg(trained), "--out", str(out), "--device", "cpu"]) == 0
    metrics.pop("best")  # train's metrics.json also names its best evaluation; eval's has one
    assert json.loads((out / "metrics.json").read_text(), parse_constant=reject_constant) == metrics


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is a directory, not a regular file"):
        main(["--debug", "eval", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "out")])
    with pytest.raises(ValueError, match="is a directory, not a regular file"):
        main(["eval", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "out"), "--debug"])


def test_checkpoint_errors_keep_torchs_explanation_whole(tmp_path: Path, capsys) -> None:
    class Payload:
        def __reduce__(self):
            return (print, ("this ran",))

    torch.save({"format": "ohem-checkpoint-1", "model": Payload()}, tmp_path / "evil.pt")
    assert main(["eval", "--checkpoint", str(tmp_path / "evil.pt"), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "this ran" not in err
    assert "Unsupported global: GLOBAL print was not an allowed global" in err  # past 200 characters, kept
    assert "\x1b" not in err  # torch's bold type is not copied


def test_report_gallery_shows_each_interval_once() -> None:
    from ohem.report import plot_hardest_rois

    class Images:
        def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
            return torch.zeros(3, 16, 16), {"boxes": torch.zeros(0, 4)}

    pick = {"image_index": 0, "box": [1, 1, 8, 8], "label": 1, "iou": 0.5, "loss": 2.0}
    mining = [{"iteration": it, "hardest": [{**pick, "iteration": it}]} for it in (50, 100, 150)]
    mining.insert(1, {"iteration": 75, "hardest": []})  # an interval without a record: skipped
    fig = plot_hardest_rois(mining, Images(), ["background", "a"], gallery_size=12)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert [t.split(":")[0] for t in titles] == ["it 50", "it 100", "it 150"]
    assert plot_hardest_rois([{"iteration": 1, "hardest": []}], Images(), ["background", "a"], 12) is None


def test_an_image_the_model_would_resize_to_nothing_is_refused(trained: Path) -> None:
    from ohem.inference import TestTime, check_image_size, model_from_checkpoint

    model, _, _ = model_from_checkpoint(trained / "checkpoint_last.pt", torch.device("cpu"))
    check_image_size(model, 2, 200, TestTime(), "image ok.png")  # 128 x 1.28 px: still a pixel
    too_thin = r"^image thin\.png: 5000x3 px is too thin: the model resizes it to 1\.3e\+02x0\.077 px"
    with pytest.raises(ValueError, match=too_thin):
        check_image_size(model, 3, 5000, TestTime(), "image thin.png")
