"""``ohem export-model``: the exported weights (``--format torchvision``), loaded by the printed lines
into the plain torchvision detector, and the TorchScript and ONNX files, run by the printed lines,
detect what ``predict`` detects; what a format cannot hold is refused in one line."""

import numpy as np
import pytest
import torch
from PIL import Image

from ohem.checkpoint import load_tensors, save_checkpoint
from ohem.cli import main
from ohem.config import load_config
from ohem.data.common import read_image
from ohem.export_model import TORCHVISION_MODELS
from ohem.inference import model_from_checkpoint, predict
from ohem.mining import build_detector
from tests.conftest import TINY

CLASSES = ["cat", "dog", "bird"]
MOBILENET = ["model.name=fasterrcnn_mobilenet_v3_large_fpn", "model.min_size=160", "model.max_size=160"]


def checkpoint(path, overrides, perturb=True):
    """An ohem checkpoint of a freshly built detector (built as ``model_from_checkpoint`` rebuilds it:
    with ImageNet weights configured, torchvision's frozen batch norms), its weights made random."""
    cfg = load_config("demo", [*TINY, *overrides])
    torch.manual_seed(0)
    model = build_detector(cfg.model, cfg.sampler, len(CLASSES), load_weights=False)
    if perturb:  # frozen batch norms start as the identity: give them statistics, so eps matters
        state = model.state_dict()
        for key, value in state.items():
            if key.endswith("running_var"):
                value.mul_(0.5 + torch.rand_like(value))
            elif key.endswith("running_mean"):
                value.add_(0.01 * torch.randn_like(value))
            elif key.startswith("roi_heads.box_predictor."):  # scores that differ from box to box
                value.add_(0.5 * torch.randn_like(value))
        model.load_state_dict(state)
    save_checkpoint(path, model, cfg, CLASSES, iteration=10)
    return path


@pytest.mark.parametrize("weights", ["imagenet", "null"])
def test_exported_weights_in_plain_torchvision_detect_as_predict(tmp_path, capsys, weights):
    ckpt = checkpoint(tmp_path / "c.pt", [*MOBILENET, f"model.backbone_weights={weights}"])
    out = tmp_path / "plain.pt"
    assert main(["export-model", str(ckpt), "--format", "torchvision", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"wrote {out}; the plain torchvision detector")
    code = "\n".join(printed[1:])
    assert "torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(weights=None" in code
    namespace = {}
    exec(code, namespace)  # the printed lines, as a user runs them
    plain = namespace["model"]
    assert namespace["classes"] == ["__background__", *CLASSES]
    assert type(plain.roi_heads).__name__ == "RoIHeads"  # torchvision's own, no sampler
    assert all(isinstance(v, torch.Tensor) for v in load_tensors(out, "exported").values())
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (120, 150, 3), dtype=np.uint8)).save(path)
    image = read_image(path, "image")
    ours, _, _ = model_from_checkpoint(ckpt, torch.device("cpu"))
    expected = predict(ours, [(image, {})], torch.device("cpu"))[0]
    with torch.no_grad():
        got = plain([image])[0]
    assert len(expected.scores) > 5 and expected.scores.std() > 0.01
    torch.testing.assert_close(got["boxes"], expected.boxes)
    torch.testing.assert_close(got["scores"], expected.scores)
    assert torch.equal(got["labels"], expected.labels)


@pytest.mark.parametrize(
    "overrides, says",
    [
        (["model.name=small"], "model.name small: its backbone is ohem's own, not a torchvision builder's"),
        ([*MOBILENET, "model.box_voting=true"], "model.box_voting: +B (iterative box regression with voting)"),
        ([*MOBILENET, "model.test_min_size=[128,160]"], "model.test_min_size [128, 160]: +M (an image pyramid)"),
        ([*MOBILENET, "model.channel_order=BGR"], "model.channel_order BGR: torchvision's transform feeds RGB only"),
    ],
)
def test_what_torchvision_cannot_hold_is_one_line_saying_why(tmp_path, capsys, overrides, says):
    ckpt = checkpoint(tmp_path / "c.pt", overrides, perturb=False)
    assert main(["export-model", str(ckpt), "--out", str(tmp_path / "plain.pt")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ohem export-model: error: checkpoint {ckpt}: {says}") and "\n" not in err, err
    assert not (tmp_path / "plain.pt").exists()


def test_fast_rcnn_on_proposal_files_is_refused(tmp_path, capsys):
    from ohem.export_model import check_exportable

    cfg = load_config("demo", ["model.name=fast_rcnn_small"])
    with pytest.raises(ValueError, match=r"c\.pt: model\.name fast_rcnn_small: Fast R-CNN reads external proposal"):
        check_exportable(cfg, tmp_path / "c.pt")


def run_exported(tmp_path, capsys, fmt):
    """Export a mobilenet checkpoint in ``fmt``; the printed lines, and the checkpoint."""
    ckpt = checkpoint(tmp_path / "c.pt", [*MOBILENET, "model.backbone_weights=null"])
    out = tmp_path / f"model.{fmt}"
    assert main(["export-model", str(ckpt), "--format", fmt, "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"wrote {out}; the plain torchvision detector as ")
    return "\n".join(printed[1:]), ckpt


def photo(tmp_path, height, width, seed):
    path = tmp_path / f"photo{seed}.png"
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return read_image(path, "image")


# what the printed lines get from torch and the scripted model, as a user's script would: said in the docs
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.filterwarnings("ignore:RCNN always returns a \\(Losses, Detections\\) tuple in scripting:UserWarning")
def test_torchscript_file_detects_as_predict(tmp_path, capsys):
    code, ckpt = run_exported(tmp_path, capsys, "torchscript")
    ours, _, _ = model_from_checkpoint(ckpt, torch.device("cpu"))
    for image in (photo(tmp_path, 120, 150, 1), photo(tmp_path, 150, 90, 2)):
        namespace = {"image": image}
        with torch.no_grad():
            exec(code, namespace)  # the printed lines, as a user runs them
        expected = predict(ours, [(image, {})], torch.device("cpu"))[0]
        assert len(expected.scores) > 5 and expected.scores.std() > 0.01
        # the same torch ops on the same weights: equal to float32 rounding
        torch.testing.assert_close(namespace["boxes"], expected.boxes)
        torch.testing.assert_close(namespace["scores"], expected.scores)
        assert torch.equal(namespace["labels"], expected.labels)
    assert namespace["classes"] == ["__background__", *CLASSES]


def test_onnx_file_detects_as_predict_on_images_of_other_shapes(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    code, ckpt = run_exported(tmp_path, capsys, "onnx")
    ours, _, _ = model_from_checkpoint(ckpt, torch.device("cpu"))
    # traced on one 160 x 120 image: a landscape and a portrait image of other sizes run through it
    for image in (photo(tmp_path, 120, 150, 1), photo(tmp_path, 150, 90, 2)):
        namespace = {"image": image.numpy()}
        exec(code, namespace)
        expected = predict(ours, [(image, {})], torch.device("cpu"))[0]
        assert len(expected.scores) > 5 and expected.scores.std() > 0.01
        # onnxruntime's kernels round differently from torch's: boxes within 1e-3 px, scores within 1e-5
        torch.testing.assert_close(torch.from_numpy(namespace["boxes"]), expected.boxes, atol=1e-3, rtol=0)
        torch.testing.assert_close(torch.from_numpy(namespace["scores"]), expected.scores, atol=1e-5, rtol=0)
        assert torch.equal(torch.from_numpy(namespace["labels"]), expected.labels)


def test_formats_a_model_cannot_be_held_in_are_one_line_saying_why(tmp_path, capsys, monkeypatch):
    from ohem.export_model import check_format
    from tests.test_extras import block

    cfg = load_config("demo", ["model.name=maskrcnn_resnet50_fpn"])
    with pytest.raises(ValueError, match=r"^checkpoint c\.pt: model\.name maskrcnn_resnet50_fpn: --format onnx holds"):
        check_format(cfg, "onnx", "c.pt")
    check_format(cfg, "torchscript", "c.pt")  # Mask R-CNN scripts
    ckpt = checkpoint(tmp_path / "c.pt", ["model.name=small"], perturb=False)
    for fmt in ("torchscript", "onnx"):
        assert main(["export-model", str(ckpt), "--format", fmt, "--out", str(tmp_path / "m")]) == 1
        err = capsys.readouterr().err
        assert err == (
            f"ohem export-model: error: checkpoint {ckpt}: model.name small: its backbone is ohem's own, not a "
            f"torchvision builder's; export-model exports {', '.join(TORCHVISION_MODELS)}\n"
        )
    block(monkeypatch, "onnx")
    assert main(["export-model", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "m")]) == 1
    assert capsys.readouterr().err == "ohem export-model: error: --format onnx needs onnx: pip install 'ohem[export]'\n"
    assert not (tmp_path / "m").exists()
