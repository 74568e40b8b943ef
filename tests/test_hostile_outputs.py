"""Hostile inputs, round 2 (issue 22): checkpoints that stand alone, EXIF-oriented photos, ``detect``
streaming its inputs and checking its outputs first, ``export`` into folders it did not write.

The CLI cases are ``Case(...)`` rows run as ``tests/test_hostile.py`` runs its own (exit code, the one
stderr line, nothing changed outside the out folder); focused unit tests follow the table."""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ohem.checkpoint import load_checkpoint, save_checkpoint
from ohem.cli import main
from ohem.config import Config, ModelConfig, load_config
from ohem.data.export import MANIFEST
from tests.test_hostile import SETS, Case, check_case, ckpt_arg, handmade_checkpoint, image_file, text_file, trained

__all__ = ["trained"]  # the trained-run fixture of tests/test_hostile.py, shared

DATA_SETS = ["--set", "data.num_train=4", "--set", "data.num_test=2", "--set", "data.image_size=128"]


# ----------------------------------------------------------------------------------------- helpers
def exif_photo(path: Path, size: tuple[int, int] = (40, 100), orientation: int = 6) -> Path:
    """A JPEG of ``size`` (height, width) stored pixels with EXIF orientation ``orientation`` (6: to be
    shown turned 90 degrees clockwise: stored 100 wide and 40 high, upright 40 wide and 100 high)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)
    pixels[:8, :16] = 255  # a white block at the stored top left: where it ends up shows the turn
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif.tobytes(), quality=95)
    return path


def backbone_weights_file(path: Path) -> Path:
    """A local backbone weights file for the small model (a state dict of its backbone)."""
    from ohem.models import build_model

    torch.save(build_model(ModelConfig(min_size=128, max_size=128), 5).backbone.state_dict(), path)
    return path


def run_trained_from_a_file_then_deleted(tmp: Path) -> Path:
    """A tiny run trained from a local backbone weights file, which is then deleted; its checkpoint."""
    weights = backbone_weights_file(tmp / "backbone.pth")
    argv = ["train", "--config", "demo", "--out", str(tmp / "run"), *SETS]
    assert main([*argv, "--set", f"model.backbone_weights={weights}"]) == 0
    weights.unlink()
    return tmp / "run" / "checkpoint_last.pt"


def export_argv(tmp: Path, *extra: str, layout: str = "voc", split: str = "train") -> list[str]:
    return ["export", "--layout", layout, "--split", split, "--out", str(tmp / "out"), *DATA_SETS, *extra]


# ------------------------------------------------------------------------------------------- cases
def _eval_without_backbone_file(tmp: Path, trained: Path) -> list[str]:
    checkpoint = run_trained_from_a_file_then_deleted(tmp)
    return ["eval", "--checkpoint", str(checkpoint), "--out", str(tmp / "out"), "--device", "cpu"]


def _detect_without_backbone_file(tmp: Path, trained: Path) -> list[str]:
    checkpoint = run_trained_from_a_file_then_deleted(tmp)
    photo = image_file(tmp / "photo.png")
    return ["detect", "--checkpoint", str(checkpoint), str(photo), "--out", str(tmp / "out"), "--device", "cpu"]


def _check_detected_one(tmp: Path) -> None:
    assert len(json.loads((tmp / "out" / "detections.json").read_text())) == 1


def _detect_exif_photo(tmp: Path, trained: Path) -> list[str]:
    photo = exif_photo(tmp / "phone.jpg")
    return ["detect", *ckpt_arg(trained), str(photo), "--out", str(tmp / "out"), "--device", "cpu"]


def _check_upright(tmp: Path) -> None:
    (record,) = json.loads((tmp / "out" / "detections.json").read_text())
    assert (record["width"], record["height"]) == (40, 100)  # stored 100 wide, 40 high; shown turned


def _detect_into(obstacle: str) -> object:
    """detect with ``OUT/obstacle`` a folder where it would write a file."""

    def setup(tmp: Path, trained: Path) -> list[str]:
        photos = [image_file(tmp / "a.png", seed=1), image_file(tmp / "ok.png", seed=2)]
        (tmp / "out" / obstacle).mkdir(parents=True)
        return ["detect", *ckpt_arg(trained), *map(str, photos), "--out", str(tmp / "out"), "--device", "cpu"]

    return setup


def _export_over_users_file(path: str, layout: str = "voc", *extra: str) -> object:
    def setup(tmp: Path, trained: Path) -> list[str]:
        (tmp / "out" / path).parent.mkdir(parents=True)
        text_file(tmp / "out" / path, "the user's own\n")
        return export_argv(tmp, *extra, layout=layout)

    return setup


def _check_replaced_split_file(tmp: Path) -> None:
    names = (tmp / "out" / "ImageSets" / "Main" / "train.txt").read_text().split()
    assert names == [f"synthetic-train-{i:06d}" for i in range(4)]


def _smaller_export_again(tmp: Path, trained: Path) -> list[str]:
    assert main(export_argv(tmp, "--set", "data.num_train=5")) == 0
    assert main(export_argv(tmp, split="test")) == 0  # another split of the same folder: kept
    text_file(tmp / "out" / "JPEGImages" / "mine.jpg", "the user's own\n")
    text_file(tmp / "out" / "notes.txt", "the user's own\n")
    return export_argv(tmp, "--set", "data.num_train=2")


def _check_no_stale_images(tmp: Path) -> None:
    out = tmp / "out"
    pngs = sorted(p.name for p in (out / "JPEGImages").glob("synthetic-train-*"))
    assert pngs == ["synthetic-train-000000.png", "synthetic-train-000001.png"]
    assert len(list((out / "Annotations").glob("synthetic-train-*"))) == 2
    assert len(list((out / "JPEGImages").glob("synthetic-test-*"))) == 2  # the test split's export stays
    assert (out / "JPEGImages" / "mine.jpg").read_text() == (out / "notes.txt").read_text() == "the user's own\n"
    manifest = json.loads((out / MANIFEST).read_text())
    assert len(manifest["files"]["voc:train"]) == 1 + 2 * 2 and len(manifest["files"]["voc:test"]) == 1 + 2 * 2


def _export_with_manifest(manifest: object) -> object:
    def setup(tmp: Path, trained: Path) -> list[str]:
        (tmp / "out").mkdir()
        text_file(tmp / "victim.txt", "keep me\n")
        text_file(tmp / "out" / MANIFEST, json.dumps(manifest))
        return export_argv(tmp)

    return setup


def _forged_manifest(tmp: Path, trained: Path) -> list[str]:
    """A manifest that lists the user's own files in OUT as an earlier export's (one with a made-up
    digest, one without): exporting that split again must not remove them."""
    for rel in ("thesis.tex", ".git/config"):
        (tmp / "out" / rel).parent.mkdir(parents=True, exist_ok=True)
        text_file(tmp / "out" / rel, "the user's own\n")
    files = {"voc:train": {"thesis.tex": "0" * 64, ".git/config": None}}
    text_file(tmp / "out" / MANIFEST, json.dumps({"format": "ohem-export-2", "files": files}))
    return export_argv(tmp)


def _check_users_files_kept(tmp: Path) -> None:
    for rel in ("thesis.tex", ".git/config"):
        assert (tmp / "out" / rel).read_text() == "the user's own\n"
    listed = json.loads((tmp / "out" / MANIFEST).read_text())["files"]["voc:train"]
    assert "thesis.tex" not in listed and all(len(digest) == 64 for digest in listed.values())


def _export_planned_file_is_a_folder(tmp: Path, trained: Path) -> list[str]:
    (tmp / "out" / "JPEGImages" / "synthetic-train-000001.png").mkdir(parents=True)
    return export_argv(tmp)


ERR_EXPORT = r"^ohem export: error: "
# fmt: off
CASES = [
    # --- checkpoints stand alone
    Case("eval a checkpoint trained from a deleted weights file", _eval_without_backbone_file, 0, ""),
    Case("detect with a checkpoint trained from a deleted weights file", _detect_without_backbone_file, 0, "",
         check=_check_detected_one),
    # --- detect: EXIF orientation, outputs checked before work
    Case("detect a photo with EXIF orientation 6", _detect_exif_photo, 0, "", check=_check_upright),
    Case("detect, OUT/detections.json is a folder", _detect_into("detections.json"), 1,
         r"^ohem detect: error: .*out/detections\.json: exists and is not a regular file; ohem replaces only files"),
    Case("detect, a drawing's name is a folder", _detect_into("ok.png"), 1,
         r"^ohem detect: error: .*out/ok\.png: exists and is not a regular file"),
    # --- export: files it did not write, and its own earlier files
    Case("export over the user's own VOC split file", _export_over_users_file("ImageSets/Main/train.txt"), 1,
         ERR_EXPORT + r".*out/ImageSets/Main/train\.txt: exists and was not written by ohem export \(not in .*"
         r"\.ohem-export\.json\); export into an empty folder or one it wrote, or give --force"),
    Case("export over the user's own COCO annotations",
         _export_over_users_file("annotations/instances_train.json", "coco"), 1,
         ERR_EXPORT + r".*out/annotations/instances_train\.json: exists and was not written by ohem export"),
    Case("export --force over the user's own split file",
         _export_over_users_file("ImageSets/Main/train.txt", "voc", "--force"), 0, "",
         check=_check_replaced_split_file),
    Case("export a smaller split again", _smaller_export_again, 0, "", check=_check_no_stale_images),
    Case("export, a manifest naming a file outside OUT",
         _export_with_manifest({"format": "ohem-export-1", "files": {"voc:train": ["../victim.txt"]}}), 1,
         ERR_EXPORT + r"export manifest .*\.ohem-export\.json: files\.voc:train\[0\]: path '\.\./victim\.txt' leaves"),
    Case("export, a manifest ohem did not write", _export_with_manifest([1, 2]), 1,
         ERR_EXPORT + r"export manifest .*\.ohem-export\.json: not a manifest ohem export wrote"),
    Case("export, a forged manifest listing the user's files", _forged_manifest, 0,
         r"^ohem export: warning: left in place 2 file\(s\) .*\.ohem-export\.json lists but ohem export did not "
         r"write as they are \(their sha256 differs from the one recorded, or none is\): .*out/\.git/config, "
         r".*out/thesis\.tex$", check=_check_users_files_kept),
    Case("export, an image's name is a folder", _export_planned_file_is_a_folder, 1,
         ERR_EXPORT + r".*out/JPEGImages/synthetic-train-000001\.png: exists and is not a regular file"),
]
# fmt: on


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_output(case: Case, trained: Path, tmp_path: Path, capsys) -> None:
    check_case(case, trained, tmp_path, capsys)


# ------------------------------------------------------------------------------------ unit tests
def test_a_checkpoint_of_imagenet_weights_rebuilds_without_a_download(tmp_path: Path, monkeypatch) -> None:
    import torchvision
    from torchvision.models._api import WeightsEnum
    from torchvision.ops import FrozenBatchNorm2d

    from ohem.inference import model_from_checkpoint
    from ohem.mining import build_detector

    def pretrained_weights(self: WeightsEnum, *args: object, **kwargs: object) -> dict:
        # stands in for the download (the model's layers as torchvision builds them to load ImageNet's)
        return torchvision.models.mobilenet_v3_large(norm_layer=FrozenBatchNorm2d).state_dict()

    cfg = load_config(None, ["model.name=fasterrcnn_mobilenet_v3_large_fpn", "model.backbone_weights=imagenet"])
    cfg.model.min_size, cfg.model.max_size = 128, 128
    with monkeypatch.context() as patch:
        patch.setattr(WeightsEnum, "get_state_dict", pretrained_weights)
        trained = build_detector(cfg.model, cfg.sampler, 3).eval()
    save_checkpoint(tmp_path / "c.pt", trained, cfg, ["a", "b", "c"], iteration=0)

    downloads = []

    def no_download(*args: object, **kwargs: object) -> None:
        downloads.append(args)
        raise AssertionError("model_from_checkpoint tried to fetch weights")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", no_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    model, _, classes = model_from_checkpoint(tmp_path / "c.pt", torch.device("cpu"))
    assert downloads == [] and classes == ["a", "b", "c"]
    assert [type(m) for m in model.modules()] == [type(m) for m in trained.modules()]  # FrozenBatchNorm2d kept
    image = [torch.rand(3, 96, 128)]
    with torch.no_grad():
        assert torch.equal(model.backbone(image[0][None])["0"], trained.backbone(image[0][None])["0"])


def test_a_checkpoint_rebuilds_without_its_backbone_file(tmp_path: Path) -> None:
    from ohem.inference import model_from_checkpoint

    checkpoint = run_trained_from_a_file_then_deleted(tmp_path)
    assert load_checkpoint(checkpoint)["config"]["model"]["backbone_weights"] == str(tmp_path / "backbone.pth")
    model, cfg, _ = model_from_checkpoint(checkpoint, torch.device("cpu"))
    saved = load_checkpoint(checkpoint)["model"]
    assert all(torch.equal(value, saved[key]) for key, value in model.state_dict().items())


def test_exif_orientation_is_applied_only_when_asked(tmp_path: Path) -> None:
    from ohem.data.common import read_image, read_image_size

    photo = exif_photo(tmp_path / "phone.jpg")
    stored, upright = read_image(photo), read_image(photo, exif_orientation=True)
    assert stored.shape == (3, 40, 100) and upright.shape == (3, 100, 40)
    assert read_image_size(photo) == (40, 100) and read_image_size(photo, exif_orientation=True) == (100, 40)
    # orientation 6 shows the stored top-left corner at the top right
    assert upright[:, :8, -8:].mean() > 0.95 and stored[:, :8, :8].mean() > 0.95


def _voc_tree_with_a_phone_photo(root: Path) -> Path:
    """A one-image VOC-layout tree whose JPEG carries EXIF orientation 6; its annotation gives the
    stored size (100 x 40), as VOC's and COCO's annotations do."""
    exif_photo(root / "JPEGImages" / "phone.jpg")
    (root / "Annotations").mkdir(parents=True)
    (root / "Annotations" / "phone.xml").write_text(
        "<annotation><size><width>100</width><height>40</height></size><object><name>circle</name>"
        "<bndbox><xmin>2</xmin><ymin>2</ymin><xmax>20</xmax><ymax>20</ymax></bndbox></object></annotation>"
    )
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "test.txt").write_text("phone\n")
    return root


def test_datasets_read_stored_pixels_unless_data_exif_orientation(tmp_path: Path) -> None:
    from ohem.data import build_dataset

    root = _voc_tree_with_a_phone_photo(tmp_path / "voc")
    data = ["data.dataset=voc", f"data.root={root}", "data.classes=[circle]"]
    assert Config().data.exif_orientation is False
    image, target = build_dataset(load_config(None, data).data, "test", "test")[0]
    assert image.shape == (3, 40, 100) and target["boxes"].tolist() == [[1, 1, 20, 20]]
    turned = build_dataset(load_config(None, [*data, "data.exif_orientation=true"]).data, "test", "test")
    with pytest.raises(ValueError, match=r"phone\.jpg: is 40x100 but its annotation says 100x40"):
        turned[0]


def test_detect_decodes_one_batch_at_a_time(trained: Path, tmp_path: Path, monkeypatch) -> None:
    import ohem.data.common
    import ohem.inference

    state = load_checkpoint(trained / "checkpoint_last.pt")
    state["config"]["test"]["images_per_batch"] = 2
    checkpoint = handmade_checkpoint(trained, tmp_path, config=state["config"])
    photos = [str(image_file(tmp_path / f"p{i}.png", seed=i)) for i in range(5)]
    decoded: list[weakref.ref] = []
    live_at_predict: list[int] = []
    read_image, predict = ohem.data.common.read_image, ohem.inference.predict

    def counting_read_image(*args: object, **kwargs: object) -> torch.Tensor:
        image = read_image(*args, **kwargs)  # type: ignore[arg-type]
        decoded.append(weakref.ref(image))
        return image

    def counting_predict(*args: object, **kwargs: object) -> list:
        live_at_predict.append(sum(ref() is not None for ref in decoded))
        return predict(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ohem.data.common, "read_image", counting_read_image)
    monkeypatch.setattr(ohem.inference, "predict", counting_predict)
    argv = ["detect", "--checkpoint", str(checkpoint), *photos, "--out", str(tmp_path / "out"), "--device", "cpu"]
    assert main(argv) == 0
    assert len(decoded) == 5 and live_at_predict == [2, 2, 1]  # never more than a batch held
    assert len(json.loads((tmp_path / "out" / "detections.json").read_text())) == 5
    assert len(list((tmp_path / "out").glob("*.png"))) == 5
