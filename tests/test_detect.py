"""``ohem detect`` with a Fast R-CNN checkpoint (a model on proposals): proposals from selective search or
from a ``--proposals`` file, the same detections ``predict`` gives on those boxes; ``--set`` test-time keys."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ohem.checkpoint import save_checkpoint
from ohem.cli import main
from ohem.config import load_config
from ohem.data.common import read_image
from ohem.data.proposals import selective_search, write_proposals
from ohem.inference import model_from_checkpoint, predict
from ohem.mining import build_detector
from tests.conftest import TINY

DATA = ["--set", "data.num_train=8", "--set", "data.num_test=4", "--set", "data.image_size=128"]


@pytest.fixture(scope="module")
def fast_checkpoint(tmp_path_factory):
    """A fast_rcnn_small trained 2 iterations on dense proposals of the tiny synthetic data."""
    folder = tmp_path_factory.mktemp("fast")
    for split in ("train", "test"):
        args = ["proposals", "--method", "dense", "--max-boxes", "50", "--split", split, *DATA]
        assert main([*args, "--out", str(folder / f"{split}.npz")]) == 0
    overrides = [*TINY, "model.name=fast_rcnn_small", "solver.iterations=2", "solver.steps=[]", "train.vis_images=0"]
    overrides += [f"data.proposals={folder / 'train.npz'}", f"data.test_proposals={folder / 'test.npz'}"]
    args = ["train", "--config", "demo", "--out", str(folder / "run")]
    assert main([*args, *(x for item in overrides for x in ("--set", item))]) == 0
    return folder / "run" / "checkpoint_last.pt"


def photos(folder, count=2):
    paths = []
    for i in range(count):
        path = folder / f"photo{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (100, 120, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def expected(checkpoint, path, proposals, overrides=()):
    """``predict``'s detections of the checkpoint's model on one image with these proposals."""
    model, _, _ = model_from_checkpoint(checkpoint, torch.device("cpu"), overrides)
    image = read_image(path, "image", exif_orientation=True)
    return predict(model, [(image, {"proposals": proposals})], torch.device("cpu"))[0]


def detect(checkpoint, paths, out, *more):
    return main(["detect", "--checkpoint", str(checkpoint), *paths, "--out", str(out), "--device", "cpu", *more])


def test_fast_rcnn_detects_on_selective_search_proposals(fast_checkpoint, tmp_path, capsys):
    paths = photos(tmp_path)
    assert detect(fast_checkpoint, paths, tmp_path / "det", "--score-thresh", "0") == 0
    err = capsys.readouterr().err
    assert "fast_rcnn_small reads proposals: computing them with selective search (fast, at most 2000" in err
    records = json.loads((tmp_path / "det" / "detections.json").read_text())
    for path, record in zip(paths, records):
        boxes = torch.from_numpy(selective_search(read_image(path, "image"), "fast", 2000))  # data.max_proposals
        want = expected(fast_checkpoint, path, boxes)
        assert len(record["boxes"]) == len(want.boxes) > 0
        assert torch.allclose(torch.tensor(record["boxes"]), want.boxes, atol=1e-4)
        assert torch.allclose(torch.tensor(record["scores"]), want.scores, atol=1e-5)


def test_fast_rcnn_reads_a_proposal_file_and_test_time_keys(fast_checkpoint, tmp_path, capsys):
    paths = photos(tmp_path)
    boxes = {
        "photo0": [[0, 0, 50, 50], [10, 10, 90, 80], [60, 20, 119, 99]],  # found by the stem
        "photo1.png": [[5, 5, 60, 60], [100, 50, 400, 400]],  # by the file name; the second box is clipped
    }
    write_proposals(tmp_path / "mine.npz", boxes)
    keys = ["--set", "model.box_score_thresh=0", "--set", "model.box_detections_per_img=4"]
    args = ["--proposals", str(tmp_path / "mine.npz"), "--score-thresh", "0", *keys]
    assert detect(fast_checkpoint, paths, tmp_path / "det", *args) == 0
    assert "selective search" not in capsys.readouterr().err
    records = json.loads((tmp_path / "det" / "detections.json").read_text())
    clipped = [boxes["photo0"], [[5, 5, 60, 60], [100, 50, 120, 100]]]
    for path, record, proposals in zip(paths, records, clipped):
        want = expected(fast_checkpoint, path, torch.tensor(proposals, dtype=torch.float32), keys[1::2])
        assert len(record["boxes"]) == 4  # box_detections_per_img, of 2-3 boxes x 5 classes scoring >= 0
        assert torch.allclose(torch.tensor(record["boxes"]), want.boxes, atol=1e-4)
        assert torch.allclose(torch.tensor(record["scores"]), want.scores, atol=1e-5)


def test_fast_rcnn_with_no_box_inside_the_image_says_so(fast_checkpoint, tmp_path, capsys):
    [path] = photos(tmp_path, 1)
    write_proposals(tmp_path / "out.npz", {"photo0": [[200, 200, 300, 300]]})
    assert detect(fast_checkpoint, [path], tmp_path / "det", "--proposals", str(tmp_path / "out.npz")) == 0
    assert "photo0.png: 0 detections (no proposal box lies inside the image)" in capsys.readouterr().out


def test_a_raised_box_score_thresh_is_named_when_nothing_is_kept(fast_checkpoint, tmp_path, capsys):
    [path] = photos(tmp_path, 1)
    write_proposals(tmp_path / "p.npz", {"photo0": [[0, 0, 50, 50]]})
    args = ["--proposals", str(tmp_path / "p.npz"), "--set", "model.box_score_thresh=1"]
    assert detect(fast_checkpoint, [path], tmp_path / "det", *args) == 0
    said = "photo0.png: 0 detections (the model kept no box: none scored above model.box_score_thresh 1)"
    assert said in capsys.readouterr().out


def rpn_checkpoint(path):
    cfg = load_config("demo", TINY)
    save_checkpoint(path, build_detector(cfg.model, cfg.sampler, 5, load_weights=False), cfg, list("abcde"), 1)
    return path


def test_bad_proposals_and_keys_are_one_line_before_any_output(fast_checkpoint, tmp_path, capsys):
    paths = photos(tmp_path)
    write_proposals(tmp_path / "one.npz", {"photo0": [[0, 0, 50, 50]], "other": [[0, 0, 9, 9]]})
    out = tmp_path / "det"
    cases = [
        (
            [fast_checkpoint, "--proposals", str(tmp_path / "one.npz")],
            f"--proposals {tmp_path / 'one.npz'}: no boxes for image {paths[1]} "
            f"(looked for '{paths[1]}', 'photo1.png', 'photo1'; the file has 2 images, e.g. 'photo0', 'other')",
        ),
        (
            [fast_checkpoint, "--set", "solver.lr=1"],
            "override 'solver.lr=1': detect takes only the test-time keys model.box_score_thresh,",
        ),
        (
            [rpn_checkpoint(tmp_path / "rpn.pt"), "--proposals", str(tmp_path / "one.npz")],
            "--proposals: model.name small makes its own proposals (an RPN); the option is for Fast R-CNN models",
        ),
        (
            [fast_checkpoint, "--set", "model.box_nms_thresh=2"],
            "model.box_nms_thresh",
        ),
    ]
    for (checkpoint, *more), message in cases:
        assert detect(checkpoint, paths, out, *more) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"ohem detect: error: {message}") or message in err, err
        assert "\n" not in err and not out.exists()
