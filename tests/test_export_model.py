"""``ohem export-model --format torchvision``: the exported weights, loaded by the printed lines into
the plain torchvision detector, detect what ``predict`` detects; what torchvision cannot hold is refused
in one line."""

import numpy as np
import pytest
import torch
from PIL import Image

from ohem.checkpoint import load_tensors, save_checkpoint
from ohem.cli import main
from ohem.config import load_config
from ohem.data.common import read_image
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
