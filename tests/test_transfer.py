"""The transfer regime: a source task of the built-in data, weights taken with some keys left fresh,
and ``ohem bench --pretrain`` training the source once and starting every run from it."""

import csv

import pytest
import torch
import yaml

from ohem.bench import Bench, run_bench
from ohem.config import load_config
from ohem.data import SyntheticShapes
from ohem.data.synthetic import CLASSES, DISTRACTORS
from ohem.inference import load_weights_into
from ohem.mining import build_detector
from tests.conftest import TINY


def test_the_source_task_labels_the_look_alikes_and_leaves_the_target_as_it_was():
    target, source = SyntheticShapes("train", 4), SyntheticShapes("train", 4, task="source")
    assert target.classes == CLASSES == SyntheticShapes.classes and source.classes == DISTRACTORS
    again = SyntheticShapes("train", 4, task="source")
    for i in range(4):
        (image_t, _), (image_s, s) = target[i], source[i]
        assert not torch.equal(image_t, image_s)  # other shapes drawn from the same stream
        assert torch.equal(again[i][0], image_s) and torch.equal(again[i][1]["boxes"], s["boxes"])  # reproducible
        assert 1 <= len(s["boxes"]) <= 4 and 1 <= int(s["labels"].min()) and int(s["labels"].max()) <= 5
    with pytest.raises(ValueError, match="^synthetic task must be one of target, source, got 'other'$"):
        SyntheticShapes("train", 4, task="other")
    assert load_config(None, ["data.synthetic_task=source"]).data.synthetic_task == "source"


def test_skipped_keys_keep_their_fresh_values_and_the_rest_is_loaded():
    cfg = load_config(None, TINY)
    torch.manual_seed(1)
    source = build_detector(cfg.model, cfg.sampler, 5).state_dict()
    torch.manual_seed(2)
    model = build_detector(cfg.model, cfg.sampler, 5)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    load_weights_into(model, source, "init_weights", skip=["roi_heads.box_predictor"])
    for key, value in model.state_dict().items():
        want = fresh[key] if key.startswith("roi_heads.box_predictor.") else source[key]
        assert torch.equal(value, want), key
    assert not torch.equal(fresh["backbone.stem.0.weight"], source["backbone.stem.0.weight"])  # not 0 == 0
    # a Faster R-CNN's weights into a Fast R-CNN: its RPN's keys are left out, the backbone and box head loaded
    fast_cfg = load_config(None, [*TINY, "model.name=fast_rcnn_small"])
    fast = build_detector(fast_cfg.model, fast_cfg.sampler, 5)
    load_weights_into(fast, source, "init_weights", skip=["rpn", "roi_heads.box_predictor"])
    assert torch.equal(fast.state_dict()["roi_heads.box_head.fc6.weight"], source["roi_heads.box_head.fc6.weight"])
    with pytest.raises(ValueError, match=r"^init_weights: weights of another model or class count \(Unexpected"):
        load_weights_into(fast, source, "init_weights", skip=["roi_heads.box_predictor"])


def test_bench_pretrain_trains_the_source_once_and_every_run_starts_from_it(tmp_path):
    source = tmp_path / "source.yaml"
    overrides = dict(item.split("=", 1) for item in TINY)
    sections: dict = {}
    for key, value in {**overrides, "data.synthetic_task": "source", "data.seed": "1", "train.vis_images": "0"}.items():
        section, name = key.split(".")
        sections.setdefault(section, {})[name] = yaml.safe_load(value)
    source.write_text(yaml.safe_dump(sections))
    out = tmp_path / "b"
    bench = dict(config="demo", out=out, arms=["heuristic"], seeds=[0], cost_iters=0, error_score=None)
    sets = [*TINY, "model.init_weights_skip=[roi_heads.box_predictor]", "train.vis_images=0"]
    assert run_bench(Bench(**bench, overrides=sets, pretrain=str(source))) == 0
    pretrained = out / "pretrain" / "checkpoint_last.pt"
    state = torch.load(pretrained, weights_only=False)
    assert state["config"]["data"]["synthetic_task"] == "source" and state["iteration"] == 4
    run = out / "runs" / "accuracy-heuristic-seed0"
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["init_weights"] == str(pretrained)
    first = pretrained.stat().st_mtime_ns
    [row] = list(csv.DictReader((out / "accuracy.csv").open()))
    assert row["arm"] == "heuristic"
    assert run_bench(Bench(**bench, overrides=sets, pretrain=str(source))) == 0
    assert pretrained.stat().st_mtime_ns == first  # trained once, kept
    with pytest.raises(ValueError, match="model.init_weights_skip without weights to start from; give --pretrain"):
        run_bench(Bench(**{**bench, "out": tmp_path / "c"}, overrides=sets))
