"""The optional extras (pyproject.toml): with one missing, a command that needs it says so in one line
before writing any file, training writes everything else and says once what it skipped, and the
package itself imports and enables OHEM with none of them."""

import json
import subprocess
import sys

import pytest

from ohem.cli import main
from tests.conftest import TINY

OPTIONAL = ("cv2", "pycocotools", "tensorboard", "torch.utils.tensorboard", "matplotlib", "scipy", "h5py")


def block(monkeypatch, *names):
    """Make ``import NAME`` (and of every submodule already loaded) raise ImportError."""
    for name in names:
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            monkeypatch.setitem(sys.modules, loaded, None)
        monkeypatch.setitem(sys.modules, name, None)


def only_error(capsys, expected):
    captured = capsys.readouterr()
    assert captured.err == f"{expected}\n"


def test_selective_search_without_opencv(tmp_path, monkeypatch, capsys):
    block(monkeypatch, "cv2")
    out = tmp_path / "p.npz"
    argv = ["proposals", "--data", "synthetic", "--split", "test", "--out", str(out), "--set", "data.num_test=2"]
    assert main(argv) == 1
    only_error(capsys, "ohem proposals: error: selective search needs OpenCV contrib: pip install 'ohem[proposals]'")
    assert list(tmp_path.iterdir()) == []
    assert main([*argv[:-2], "--method", "dense", "--set", "data.num_test=2"]) == 0  # dense needs no OpenCV
    assert out.exists()


def test_opencv_without_contrib_is_named(monkeypatch):
    import types

    from ohem.data.proposals import require_selective_search
    from ohem.util import MissingExtra

    monkeypatch.setitem(sys.modules, "cv2", types.ModuleType("cv2"))  # opencv-python: no cv2.ximgproc
    with pytest.raises(MissingExtra, match=r"no cv2.ximgproc\): pip install 'ohem\[proposals\]'$"):
        require_selective_search()


def test_coco_metric_without_pycocotools(tmp_path, monkeypatch, capsys):
    block(monkeypatch, "pycocotools")
    detections = tmp_path / "results.json"
    detections.write_text("[]")
    out = tmp_path / "eval"
    argv = ["eval", "--detections", str(detections), "--data", "synthetic", "--metric", "coco", "--out", str(out)]
    assert main([*argv, "--set", "data.num_test=2"]) == 1
    only_error(capsys, "ohem eval: error: --metric coco needs pycocotools: pip install 'ohem[coco]'")
    assert not out.exists()
    run = tmp_path / "run"
    argv = ["train", "--config", "demo", "--out", str(run), "--set", "train.eval_metric=coco"]
    assert main(argv) == 1
    only_error(capsys, "ohem train: error: train.eval_metric: coco needs pycocotools: pip install 'ohem[coco]'")
    assert not run.exists()


def test_drawing_commands_without_matplotlib(tmp_path, monkeypatch, capsys):
    block(monkeypatch, "matplotlib")
    image = tmp_path / "a.png"
    image.write_bytes(b"")
    assert main(["detect", "--checkpoint", str(tmp_path / "c.pt"), str(image), "--out", str(tmp_path / "d")]) == 1
    only_error(capsys, "ohem detect: error: drawing detections needs matplotlib: pip install 'ohem[plots]'")
    assert main(["report", str(tmp_path)]) == 1
    only_error(capsys, "ohem report: error: plotting needs matplotlib: pip install 'ohem[plots]'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_training_without_tensorboard_and_matplotlib_writes_the_rest(tmp_path, monkeypatch, capsys):
    block(monkeypatch, "tensorboard", "torch.utils.tensorboard", "matplotlib")
    out = tmp_path / "run"
    argv = ["train", "--config", "demo", "--out", str(out), *[a for item in TINY for a in ("--set", item)]]
    assert main(argv) == 0
    captured = capsys.readouterr()
    note = (
        "ohem train: note: not writing tb/ (TensorBoard is not installed: pip install 'ohem[tensorboard]'); "
        "nor detections.png (matplotlib is not installed: pip install 'ohem[plots]')"
    )
    assert [line for line in captured.err.splitlines() if "ohem" in line or "install" in line] == [note]
    names = {p.name for p in out.iterdir()}
    assert {"log.jsonl", "mining.jsonl", "metrics.json", "config.yaml", "checkpoint_last.pt"} <= names
    assert not {"tb", "detections.png"} & names
    steps = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [s["iteration"] for s in steps if "eval" not in s] == [1, 2, 3, 4]
    assert "mAP" in json.loads((out / "metrics.json").read_text())
    assert f"wrote {out / 'metrics.json'}, {out / 'checkpoint_last.pt'}" in captured.out


def test_the_package_needs_no_extra():
    code = f"""
import sys
for name in {OPTIONAL!r}:
    sys.modules[name] = None
import torchvision
import ohem
model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
    weights=None, weights_backbone=None, num_classes=3
)
ohem.enable_ohem(model, batch_size_per_image=8)
print(type(model.roi_heads).__name__)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "SamplingRoIHeads"
