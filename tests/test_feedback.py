"""What ``ohem train`` says when it starts (and writes to ``summary.txt``), the progress bars of
``eval`` and ``detect``, and what ``detect`` says per image."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ohem.cli import main
from ohem.data.common import read_image
from ohem.inference import model_from_checkpoint, predict
from tests.conftest import TINY


def sets(items):
    return [a for item in items for a in ("--set", item)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--config", "demo", "--out", str(out), *sets([*TINY, "train.vis_images=0"])]) == 0
    return out


def test_train_prints_and_writes_what_it_is_about_to_do(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--config", "demo", "--out", str(out), *sets([*TINY, "train.vis_images=0", "solver.lr=0.01"])]
    assert main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    expected = [
        f"run folder: {out} (new run)",
        "data: synthetic, train split 'train' 8 images, test split 'test' 4 images",
        "classes (5): circle, square, triangle, plus, ring",
        "model: small, backbone weights none (random), device cpu",
        "sampler: ohem (batch_size_per_image 16, fg_fraction 0.25, bg_iou_low 0.0, max_rois_per_chunk 1024, "
        "readonly_dropout True, readonly_precision tf32, nms_iou 0.7, mining_loss cls+box, nms_per_label False, "
        "start 0); RPN: torchvision's random anchors",
        "schedule: 4 iterations of 2 images, lr 0.01 (warm-up 2 iterations, x0.1 at steps [3]); "
        "evaluation (voc) at the end; checkpoints every 2 and at the end",
    ]
    assert printed[: len(expected)] == ["ohem train: " + expected[0], *(f"  {line}" for line in expected[1:])]
    assert (out / "summary.txt").read_text().splitlines() == expected
    # a resumed run says where it resumes; the heuristic sampler shows its own settings
    resumed = [*argv, "--set", "solver.iterations=6", "--resume"]
    assert main(resumed) == 0
    assert f"run folder: {out} (resumed at iteration 4 of 6)" in capsys.readouterr().out
    heuristic = ["train", "--config", "demo", "--out", str(tmp_path / "h")]
    heuristic += sets([*TINY, "solver.iterations=1", "solver.warmup_iterations=0", "solver.steps=[]"])
    assert main([*heuristic, "--set", "sampler.method=heuristic", "--set", "train.vis_images=0"]) == 0
    lines = (tmp_path / "h" / "summary.txt").read_text().splitlines()
    line = next(x for x in lines if x.startswith("sampler"))
    assert line.startswith("sampler: heuristic (") and "fg_fraction 0.25" in line and "nms_iou" not in line
    assert "(warm-up 0 iterations, no lr steps)" in next(x for x in lines if x.startswith("schedule"))


@pytest.mark.parametrize("disabled", [False, True])
def test_eval_shows_a_progress_bar_unless_tqdm_disable(run, tmp_path, capsys, monkeypatch, disabled):
    monkeypatch.setenv("TQDM_DISABLE", "1" if disabled else "")
    argv = ["eval", "--checkpoint", str(run / "checkpoint_last.pt"), "--out", str(tmp_path), "--device", "cpu"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert ("eval: 100%" in err and "4/4 [" in err and "img/s]" in err) != disabled, err


def picture(path, seed):
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(path)
    return path


def test_detect_says_per_image_what_it_kept_or_the_best_score_it_saw(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "")
    images = [str(picture(tmp_path / f"{k}.png", k)) for k in range(2)]
    model, _, classes = model_from_checkpoint(run / "checkpoint_last.pt", torch.device("cpu"))
    found = predict(model, [(read_image(p, "image", exif_orientation=True), {}) for p in images], torch.device("cpu"))
    assert all(len(d.scores) for d in found)  # an untrained model scores something on each
    out = tmp_path / "out"
    assert main(["detect", "--checkpoint", str(run / "checkpoint_last.pt"), *images, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "detect: 100%" in captured.err and "2/2 [" in captured.err
    kept = json.loads((out / "detections.json").read_text())
    for path, det, record in zip(images, found, kept):
        n = len(record["scores"])
        if n:
            said = f"{n} detection{'s' if n != 1 else ''}"
        else:
            best = int(det.scores.argmax())
            label = classes[int(det.labels[best]) - 1]
            said = f"0 detections (none scored >= --score-thresh 0.5; best {float(det.scores[best]):.3f}, {label})"
        assert f"{path}: {said} -> {out / (path.rsplit('/', 1)[1])}" in captured.out.splitlines()
    # above every score the model gave: the best one is named
    assert main(["detect", "--checkpoint", str(run / "checkpoint_last.pt"), images[0], "--out", str(out / "hi"),
                 "--score-thresh", "1.5"]) == 0  # fmt: skip
    best = int(found[0].scores.argmax())
    label = classes[int(found[0].labels[best]) - 1]
    line = f"{images[0]}: 0 detections (none scored >= --score-thresh 1.5; best {float(found[0].scores[best]):.3f}, "
    assert f"{line}{label}) -> {out / 'hi' / '0.png'}" in capsys.readouterr().out.splitlines()
