"""The paper's recipes (ohem/configs/paper/*.yaml, deltas over ohem/configs/paper/base/): their settings checked
against docs/PAPER.md, each smoke-tested on tiny images, and the Fast R-CNN path (proposal files,
gradient accumulation, +M / +B at test time) through the engine and the CLI."""

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from ohem.checkpoint import load_checkpoint
from ohem.cli import main
from ohem.config import load_config
from ohem.data import SyntheticShapes, build_dataset
from ohem.data.export import export_synthetic
from ohem.data.loader import eval_batches
from ohem.data.proposals import write_proposals
from ohem.engine import trainer as training
from ohem.events import EventStorage
from ohem.inference import TestTime, predict
from ohem.mining import OHEMSampler, build_detector, label_rois, readonly_pass
from ohem.recipes import PAPER_DIR

ROOT = Path(__file__).parent.parent
PAPER_CONFIGS = sorted(PAPER_DIR.glob("*.yaml"))  # the recipes; not base/
BASES = sorted(PAPER_DIR.joinpath("base").glob("*.yaml"))
# The dataset part of each recipe name: (data.dataset, train split, test split, iterations, lr steps, metric)
DATASETS = {
    "voc07": ("voc", "2007:trainval", "2007:test", 40000, [30000], "voc07"),
    # Caffe's step policy, stepsize 30k: 80k iterations step at 30k and 60k
    "voc0712": ("voc", "2007:trainval+2012:trainval", "2007:test", 80000, [30000, 60000], "voc07"),
    "voc07pp12": ("voc", "2007:trainval+2007:test+2012:trainval", "2007:test", 80000, [30000, 60000], "voc"),
    "voc12": ("voc", "2012:train", "2012:val", 40000, [30000], "voc"),
    "coco": ("coco", "train2014", "minival2014", 280000, [200000], "coco"),  # the authors' script: 280k
}
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
    for split, name in (("train", "train2014"), ("test", "minival2014")):
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


def _paper_table() -> dict[str, list[str]]:
    """docs/PAPER.md's table of numbers to reach: row name -> cells (Fast R-CNN, + OHEM, recipes)."""
    rows = {}
    for line in ROOT.joinpath("docs", "PAPER.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 4 and cells[0] not in ("setting", "---"):
            rows[cells[0]] = cells[1:]
    return rows


def test_there_is_a_config_for_every_row_of_the_paper_table():
    names = {p.stem for p in PAPER_CONFIGS}
    for row in ("voc07_vgg16", "voc0712_vgg16", "voc12_vgg16", "voc07pp12_vgg16", "voc07_vgg_cnn_m_1024", "coco_vgg16"):
        assert {f"{row}_fast_rcnn", f"{row}_ohem"} <= names
    assert {"voc07_vgg16_fast_rcnn_mb", "voc07_vgg16_ohem_mb", "voc0712_vgg16_ohem_mb", "coco_vgg16_ohem_m"} <= names
    table = _paper_table()
    assert len(table) == 9
    for path in PAPER_CONFIGS:
        first = path.read_text().splitlines()[0]
        match = re.search(r"docs/PAPER\.md row '([^']+)'(.*)", first)
        assert match, path.name  # each names the number it targets ...
        row, claim = match.groups()
        assert row in table, (path.name, row)  # ... a row of docs/PAPER.md's table ...
        fast_rcnn, ohem, recipes = table[row]
        numbers = re.findall(r"\d+\.\d", claim)
        assert numbers and all(n in (ohem if "OHEM" in claim else fast_rcnn) for n in numbers), (path.name, numbers)
        assert f"`{path.stem}`" in recipes  # ... which lists the recipe


def _bases(path):
    raw = yaml.safe_load(path.read_text()).get("base")
    return [(path.parent / b).resolve() for b in ([raw] if isinstance(raw, str) else raw or [])]


def test_bases_are_shared_and_recipes_are_deltas(tmp_path):
    used = set()
    for path in PAPER_CONFIGS:
        raw = yaml.safe_load(path.read_text())
        raw.pop("base")
        pending = _bases(path)
        assert pending and all(b in {b.resolve() for b in BASES} for b in pending), path.name
        while pending:  # the base chains
            base = pending.pop()
            used.add(base)
            pending += _bases(base)
        cfg = load_config(path)
        base_cfg = _load_bases_only(path, tmp_path)
        for section, keys in raw.items():  # every key a recipe sets changes what its bases say
            for key in keys:
                assert getattr(getattr(cfg, section), key) != getattr(getattr(base_cfg, section), key), (path, key)
    assert used == {b.resolve() for b in BASES}  # no base is left unused
    for base in BASES:
        assert "PAPER.md row" not in base.read_text()  # a base is not a recipe
        loaded = load_config(base)  # each loads on its own; ohem.yaml is the OHEM layer over a dataset base
        assert loaded.model.name == "fast_rcnn_vgg16" if base.name != "ohem.yaml" else loaded.sampler.nms_per_label


def _load_bases_only(path, tmp_path):
    """The config of ``path``'s bases without the recipe's own keys."""
    stub = tmp_path / f"bases_of_{path.stem}.yaml"
    stub.write_text(yaml.safe_dump({"base": [str(b) for b in _bases(path)]}))
    return load_config(stub)


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=[p.stem for p in PAPER_CONFIGS])
def test_paper_config_has_the_papers_settings(path):
    """Each recipe's values, from its name and docs/PAPER.md (the idea, one training step, defaults, +M +B)."""
    cfg, name = load_config(path), path.stem
    dataset, train_split, test_split, iterations, steps, metric = DATASETS[name.split("_")[0]]
    ohem, multiscale, voting = "_ohem" in name, name.endswith(("_m", "_mb")), name.endswith("_mb")
    d, m, s, o, t = cfg.data, cfg.model, cfg.sampler, cfg.solver, cfg.train
    assert (d.dataset, d.train_split, d.test_split, o.iterations, o.steps, t.eval_metric) == (
        dataset,
        train_split,
        test_split,
        iterations,
        steps,
        metric,
    )
    # the released selective-search boxes (VOC: all of them) and flipped copies of every training image
    assert d.proposals and d.test_proposals and d.hflip
    assert d.max_proposals == (2000 if dataset == "coco" else None)  # coco.py: top_k 2000; VOC: every box
    assert d.aspect_grouping == (not ohem)  # the OHEM yml: aspect grouping "wasn't used in the paper"
    # Fast R-CNN on VGG16 (or VGG_CNN_M_1024 from converted weights); no RPN, so no RPN mining
    assert m.name == ("fast_rcnn_vgg_cnn_m_1024" if "vgg_cnn_m_1024" in name else "fast_rcnn_vgg16")
    assert m.backbone_weights == ("weights/vgg_cnn_m_1024.pt" if "vgg_cnn_m_1024" in name else "imagenet")
    assert not m.rpn_ohem
    # the sampler: OHEM mines B/N = 64 per image from every RoI (bg_lo = 0), loss cls + box, NMS 0.7;
    # the heuristic samples 64 per image, 25 % fg, bg from IoU [0.1, 0.5)
    assert s.method == ("ohem" if ohem else "heuristic") and s.batch_size_per_image == 64
    if ohem:
        assert isinstance(s, OHEMSampler)
        assert (s.bg_iou_low, s.nms_iou, s.mining_loss, s.readonly_dropout) == (0.0, 0.7, "cls+box", True)
        assert s.nms_per_label  # NMS per image and per label
    else:
        assert (s.bg_iou_low, s.fg_fraction) == (0.1, 0.25)
    # N = 2 images per SGD step (1 x 2 passes in the authors' code); SGD 0.001, momentum 0.9, wd 5e-4
    assert (o.images_per_batch, o.accumulate_steps) == ((1, 2) if "accum2" in name else (2, 1))
    assert (o.lr, o.momentum, o.weight_decay, o.gamma, o.warmup_iterations) == (0.001, 0.9, 5e-4, 0.1, 0)
    # biases at 2x lr; the OHEM prototxts: fc/cls/bbox biases without decay; Fast R-CNN's: all decay
    assert o.bias_lr_factor == 2.0
    assert (o.bias_weight_decay, o.bias_weight_decay_on) == ((0.0, "roi_heads") if ohem else (None, "all"))
    # sigma = 1 smooth-L1 in both passes; targets normalised by the training RoIs' per-class mean/std
    assert (m.box_loss_beta, m.box_target_norm) == (1.0, "empirical")
    caffe = "vgg_cnn_m_1024" in name  # converted Caffe weights: BGR, 0-255, Caffe's pixel means
    assert (m.channel_order, m.pixel_scale) == (("BGR", 255) if caffe else ("RGB", 1))
    assert m.image_mean == ([102.9801, 115.9465, 122.7717] if caffe else None)
    # scale 600 (max 1000) or +M's scales; test NMS 0.3; +B box voting
    if multiscale:
        assert (m.min_size, m.test_min_size) == ([480, 576, 688, 864, 900], [480, 576, 688, 864, 1000])
    else:
        assert (m.min_size, m.test_min_size) == (600, None)
    assert m.max_size == 1000 and m.box_nms_thresh == 0.3 and m.box_voting == voting
    # test output: the OHEM scripts keep 2000 detections above 1e-5; Fast R-CNN 100 above 0.05
    assert (m.box_detections_per_img, m.box_score_thresh) == ((2000, 0.00001) if ohem else (100, 0.05))


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=[p.stem for p in PAPER_CONFIGS])
def test_paper_config_trains_a_step_and_detects(path, trees):
    torch.manual_seed(0)
    cfg = _tiny(path, trees)
    train_set = build_dataset(cfg.data, "train")
    model = build_detector(cfg.model, cfg.sampler, len(train_set.classes))
    model.train()
    first = list(range(cfg.solver.images_per_batch))
    _, images, targets = next(eval_batches(train_set, first, len(first), 0, torch.device("cpu")))
    with EventStorage() as storage:
        losses = model(images, targets)
    loss = sum(v for k, v in losses.items() if k.startswith("loss_"))
    assert math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    heads = model.roi_heads
    if cfg.sampler.method == "ohem":
        assert isinstance(heads.sampler, OHEMSampler)
        counts = torch.bincount(storage.latest("roi_mining")["image_ids"], minlength=len(images))
        assert counts.tolist() == [cfg.sampler.batch_size_per_image] * len(images)  # B/N per image, no fg quota
    # conv1 stays frozen as in Fast R-CNN; the heads get gradients
    first_conv = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert not first_conv.weight.requires_grad
    assert model.roi_heads.box_predictor.cls_score.weight.grad.abs().sum() > 0
    test_set = build_dataset(cfg.data, "test")
    test_time = TestTime.from_config(cfg.model)
    detections = predict(model, test_set, torch.device("cpu"), batch_size=1, indices=[0], test_time=test_time)
    h, w = test_set.image_size(0)
    boxes = detections[0].boxes
    assert boxes.shape[1] == 4 and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all() and (boxes >= 0).all()
    assert test_time.box_voting == cfg.model.box_voting


def _small_fast_rcnn_overrides(trees, tmp_path):
    overrides = [
        "data.dataset=voc",
        f"data.root={trees['voc']}",
        "data.train_split=2007:trainval",
        "data.test_split=2007:test",
        f"data.classes=[{', '.join(CLASSES)}]",
        "model.name=fast_rcnn_small",
        "model.min_size=128",
        "model.max_size=128",
        "sampler.batch_size_per_image=16",
        "solver.warmup_iterations=0",
        "solver.lr=0.01",
        "solver.steps=[100]",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        "train.device=cpu",
        "train.vis_images=1",
    ]
    for role, split in (("train", "2007:trainval"), ("test", "2007:test")):
        cfg = load_config(None, overrides[:5])
        path = tmp_path / f"{role}.npz"
        _proposals_for(build_dataset(cfg.data, "test", split), path)
        overrides.append(f"data.{'proposals' if role == 'train' else 'test_proposals'}={path}")
    return overrides


def test_gradient_accumulation_equals_a_bigger_batch(trees, tmp_path):
    base = _small_fast_rcnn_overrides(trees, tmp_path) + ["solver.iterations=2"]
    one_pass = training.train(load_config(None, base + ["solver.images_per_batch=2"]), tmp_path / "a")
    two_passes = training.train(
        load_config(None, base + ["solver.images_per_batch=1", "solver.accumulate_steps=2"]), tmp_path / "b"
    )
    a = load_checkpoint(tmp_path / "a" / "checkpoint_last.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "checkpoint_last.pt")["model"]
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
    overrides = _small_fast_rcnn_overrides(trees, tmp_path) + [
        "solver.iterations=3",
        "data.hflip=true",
        "data.aspect_grouping=true",
    ]
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
        args = [
            "eval",
            "--detections",
            str(out / "results.json"),
            "--data",
            f"voc:{trees['voc']}",
            "--split",
            "2007:test",
            "--classes",
            ",".join(CLASSES),
            "--metric",
            metric,
            "--out",
            str(rescored),
        ]
        assert main(args) == 0
        again = json.loads((rescored / "metrics.json").read_text())
        assert again["mAP"] == pytest.approx(metrics["mAP"], abs=1e-4)  # results.json rounds boxes to 0.01 px
        if metric == "coco":
            assert {"AP50", "AP75", "AP_small", "AP_medium", "AP_large"} <= set(again)
    printed = capsys.readouterr().out
    assert "AP50" in printed and "mAP" in printed


def test_mean_roi_loss_reads_the_proposal_file_for_fast_rcnn(trees, tmp_path):
    from ohem.evaluation import all_roi_mean_loss

    cfg = load_config(None, _small_fast_rcnn_overrides(trees, tmp_path))
    train_set = build_dataset(cfg.data, "train")
    model = build_detector(cfg.model, cfg.sampler, 5)
    loss = all_roi_mean_loss(model, train_set, [0], torch.device("cpu"))
    # by hand: every proposal of the file plus the gt boxes, labelled with bg from IoU 0, mean loss
    model.eval()
    heads = model.roi_heads
    _, images, targets = next(eval_batches(train_set, [0], 1, 0, torch.device("cpu")))  # 128 px: no resizing
    with torch.no_grad():
        features = {"0": model.backbone(model.transform(images)[0].tensors)}
        rois = label_rois(heads, [targets[0]["proposals"]], targets, bg_iou_low=0.0)
        readonly = OHEMSampler().readonly
        assert readonly is not None
        terms = readonly_pass(heads, features, rois, [(128, 128)], readonly, heads.box_loss_beta)
    by_hand = terms.cls + terms.box
    assert len(rois.boxes) == len(targets[0]["proposals"]) + len(targets[0]["boxes"])
    assert math.isfinite(loss) and loss == pytest.approx(by_hand.mean().item(), rel=1e-5)
