"""The paper's recipes (configs/paper/*.yaml) smoke-tested on tiny images, and the Fast R-CNN path
(proposal files, gradient accumulation, +M / +B at test time) through the engine and the CLI."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from ohem import engine
from ohem.cli import main
from ohem.config import load_config
from ohem.data import SyntheticShapes, build_dataset
from ohem.data.export import export_synthetic
from ohem.data.proposals import write_proposals
from ohem.mining import OHEMRoIHeads
from ohem.models import build_detector

PAPER_CONFIGS = sorted(Path(__file__).parent.parent.joinpath("configs", "paper").glob("*.yaml"))
CLASSES = list(SyntheticShapes.classes)


def _proposals_for(dataset, path, per_image=200, seed=0):
    """Random boxes plus jittered ground truth, like a proposal method's output (fast to make)."""
    g = torch.Generator().manual_seed(seed)
    boxes = {}
    for i in range(len(dataset)):
        h, w = dataset.image_size(i)
        gt = dataset.annotations(i)["boxes"]
        xy = torch.rand(per_image, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = 8 + torch.rand(per_image, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3])
        jitter = gt.repeat(3, 1) + torch.randn(3 * len(gt), 4, generator=g) * 2
        boxes[dataset.image_name(i)] = torch.cat([jitter, torch.cat([xy, xy + wh], 1)]).numpy()
    return write_proposals(path, boxes)


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """A VOCdevkit (VOC2007: trainval/test; VOC2012: train/val/trainval) and a COCO folder, with proposals."""
    root = tmp_path_factory.mktemp("data")
    devkit = root / "VOCdevkit"
    export_synthetic(SyntheticShapes("train", num_images=4, image_size=128), devkit / "VOC2007", "voc")
    export_synthetic(SyntheticShapes("test", num_images=4, image_size=128), devkit / "VOC2012", "voc")
    main07, main12 = devkit / "VOC2007" / "ImageSets" / "Main", devkit / "VOC2012" / "ImageSets" / "Main"
    names07, names12 = (main07 / "train.txt").read_text().split(), (main12 / "test.txt").read_text().split()
    (main07 / "trainval.txt").write_text("\n".join(names07[:2]))
    (main07 / "test.txt").write_text("\n".join(names07[2:]))
    (main12 / "train.txt").write_text("\n".join(names12[:2]))
    (main12 / "val.txt").write_text("\n".join(names12[2:]))
    (main12 / "trainval.txt").write_text("\n".join(names12))
    coco = root / "coco"
    (coco / "annotations").mkdir(parents=True)
    for split, name in (("train", "train2017"), ("test", "val2017")):
        export_synthetic(SyntheticShapes(split, num_images=2, image_size=128), root / "export", "coco")
        shutil.copytree(root / "export" / split, coco / name)
        exported = root / "export" / "annotations" / f"instances_{split}.json"
        shutil.copy(exported, coco / "annotations" / f"instances_{name}.json")
    return {"voc": devkit, "coco": coco, "root": root}


def _tiny(cfg_path, trees):
    """The config with tiny images, random init, the test trees and a proposal file per split."""
    cfg = load_config(cfg_path)
    kind = cfg.data.dataset
    overrides = [f"data.root={trees[kind]}", "model.backbone_weights=null", "model.max_size=96", "train.device=cpu"]
    overrides.append("model.min_size=[64, 80]" if isinstance(cfg.model.min_size, list) else "model.min_size=64")
    if cfg.model.test_min_size is not None:
        overrides.append("model.test_min_size=[64, 80]")
    if kind == "voc":
        overrides.append(f"data.classes=[{', '.join(CLASSES)}]")
    plain = load_config(cfg_path, [*overrides, "data.proposals=null", "data.test_proposals=null"])
    for role, key in (("train", "proposals"), ("test", "test_proposals")):
        path = trees["root"] / f"{cfg_path.stem}_{role}.npz"
        _proposals_for(build_dataset(plain.data, role), path)
        overrides.append(f"data.{key}={path}")
    return load_config(cfg_path, overrides)


def test_there_is_a_config_for_every_row_of_the_paper_table():
    names = {p.stem for p in PAPER_CONFIGS}
    for row in ("voc07_vgg16", "voc0712_vgg16", "voc12_vgg16", "voc07pp12_vgg16", "voc07_vgg_cnn_m_1024", "coco_vgg16"):
        assert {f"{row}_fast_rcnn", f"{row}_ohem"} <= names
    assert {"voc07_vgg16_fast_rcnn_mb", "voc07_vgg16_ohem_mb", "voc0712_vgg16_ohem_mb", "coco_vgg16_ohem_m"} <= names
    for path in PAPER_CONFIGS:
        assert "PAPER.md row" in path.read_text().splitlines()[0]  # each names the number it targets


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=[p.stem for p in PAPER_CONFIGS])
def test_paper_config_trains_a_step_and_detects(path, trees):
    torch.manual_seed(0)
    cfg = _tiny(path, trees)
    train_set = build_dataset(cfg.data, "train")
    model = build_detector(cfg.model, cfg.sampler, len(train_set.classes))
    model.train()
    images, targets = engine.load_batch(train_set, list(range(cfg.solver.images_per_batch)), torch.device("cpu"))
    losses = model(images, targets)
    loss = sum(v for k, v in losses.items() if k.startswith("loss_"))
    assert math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    heads = model.roi_heads
    if cfg.sampler.method == "ohem":
        assert isinstance(heads, OHEMRoIHeads)
        counts = torch.bincount(heads.last_mining["image_ids"], minlength=len(images))
        assert counts.tolist() == [cfg.sampler.batch_size_per_image] * len(images)  # B/N per image, no fg quota
    # conv1 stays frozen as in Fast R-CNN; the heads get gradients
    first_conv = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert not first_conv.weight.requires_grad
    assert model.roi_heads.box_predictor.cls_score.weight.grad.abs().sum() > 0
    test_set = build_dataset(cfg.data, "test")
    detections = engine.predict(model, test_set, torch.device("cpu"), batch_size=1, indices=[0])
    h, w = test_set.image_size(0)
    boxes = detections[0].boxes
    assert boxes.shape[1] == 4 and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all() and (boxes >= 0).all()
    assert model.box_voting == cfg.model.box_voting


def _small_fast_rcnn_overrides(trees, tmp_path):
    overrides = [
        "data.dataset=voc", f"data.root={trees['voc']}", "data.train_split=2007:trainval", "data.test_split=2007:test",
        f"data.classes=[{', '.join(CLASSES)}]", "model.name=fast_rcnn_small", "model.min_size=128",
        "model.max_size=128", "sampler.batch_size_per_image=16", "solver.warmup_iterations=0", "solver.lr=0.01",
        "solver.steps=[100]", "train.eval_every=0", "train.checkpoint_every=0", "train.device=cpu",
        "train.vis_images=1",
    ]  # fmt: skip
    for role, split in (("train", "2007:trainval"), ("test", "2007:test")):
        cfg = load_config(None, overrides[:5])
        path = tmp_path / f"{role}.npz"
        _proposals_for(build_dataset(cfg.data, "test", split), path)
        overrides.append(f"data.{'proposals' if role == 'train' else 'test_proposals'}={path}")
    return overrides


def test_gradient_accumulation_equals_a_bigger_batch(trees, tmp_path):
    base = _small_fast_rcnn_overrides(trees, tmp_path) + ["solver.iterations=2"]
    one_pass = engine.train(load_config(None, base + ["solver.images_per_batch=2"]), tmp_path / "a")
    two_passes = engine.train(
        load_config(None, base + ["solver.images_per_batch=1", "solver.accumulate_steps=2"]), tmp_path / "b"
    )
    a = engine.load_checkpoint(tmp_path / "a" / "checkpoint_last.pt")["model"]
    b = engine.load_checkpoint(tmp_path / "b" / "checkpoint_last.pt")["model"]
    start = build_detector(load_config(None, base).model, load_config(None, base).sampler, 5).state_dict()
    floats = [k for k in a if a[k].is_floating_point()]
    update = max((a[k] - start[k]).abs().max().item() for k in floats)
    difference = max((a[k] - b[k]).abs().max().item() for k in floats)
    # two passes of one image change the weights as one pass of two images (up to float summation order)
    assert update > 1e-3 and difference < update * 1e-2, (update, difference)
    assert math.isfinite(one_pass["mAP"]) and math.isfinite(two_passes["mAP"])
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log if "loss" in r] == [1, 2]


def test_eval_writes_results_that_rescore_to_the_same_metrics(trees, tmp_path, capsys):
    overrides = _small_fast_rcnn_overrides(trees, tmp_path) + ["solver.iterations=3", "data.hflip=true",
                                                                "data.aspect_grouping=true"]  # fmt: skip
    run = tmp_path / "run"
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text("")
    sets = [arg for o in overrides for arg in ("--set", o)]
    assert main(["train", "--config", str(cfg_path), "--out", str(run), *sets]) == 0
    ckpt = str(run / "checkpoint_last.pt")
    for metric in ("voc07", "coco"):
        out = tmp_path / f"eval_{metric}"
        assert main(["eval", "--checkpoint", ckpt, "--out", str(out), "--metric", metric, "--device", "cpu"]) == 0
        results = json.loads((out / "results.json").read_text())
        assert results and {"image_id", "category_id", "bbox", "score"} <= set(results[0])
        assert {r["image_id"] for r in results} <= {"synthetic-train-000002", "synthetic-train-000003"}
        metrics = json.loads((out / "metrics.json").read_text())
        rescored = tmp_path / f"rescore_{metric}"
        args = ["eval", "--detections", str(out / "results.json"), "--data", f"voc:{trees['voc']}", "--split",
                "2007:test", "--classes", ",".join(CLASSES), "--metric", metric, "--out", str(rescored)]  # fmt: skip
        assert main(args) == 0
        again = json.loads((rescored / "metrics.json").read_text())
        assert again["mAP"] == pytest.approx(metrics["mAP"], abs=1e-4)  # results.json rounds boxes to 0.01 px
        if metric == "coco":
            assert {"AP50", "AP75", "AP_small", "AP_medium", "AP_large"} <= set(again)
    printed = capsys.readouterr().out
    assert "AP50" in printed and "mAP" in printed


def test_mean_roi_loss_reads_the_proposal_file_for_fast_rcnn(trees, tmp_path):
    from ohem.evaluation import mean_roi_loss

    cfg = load_config(None, _small_fast_rcnn_overrides(trees, tmp_path))
    train_set = build_dataset(cfg.data, "train")
    model = build_detector(cfg.model, cfg.sampler, 5)
    loss = mean_roi_loss(model, train_set, [0], torch.device("cpu"))
    # by hand: every proposal of the file plus the gt boxes, labelled with bg from IoU 0, mean loss
    model.eval()
    heads = model.roi_heads
    images, targets = engine.load_batch(train_set, [0], torch.device("cpu"))  # 128 px: no resizing
    with torch.no_grad():
        features = {"0": model.backbone(model.transform(images)[0].tensors)}
        rois, _, labels, regression, _ = heads.label_rois([targets[0]["proposals"]], targets, bg_iou_low=0.0)
        by_hand = heads.readonly_losses(features, rois, [(128, 128)], labels, regression)
    assert len(rois[0]) == len(targets[0]["proposals"]) + len(targets[0]["boxes"])
    assert math.isfinite(loss) and loss == pytest.approx(by_hand.mean().item(), rel=1e-5)
