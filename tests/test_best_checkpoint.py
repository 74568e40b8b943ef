"""checkpoint_best.pt by the evaluation metric, kept across --resume; train.keep_checkpoints."""

import json
import math

import pytest
import torch

from ohem.checkpoint import load_checkpoint
from ohem.config import ConfigError, apply_overrides
from ohem.engine import hooks
from ohem.engine import trainer as training


def scripted_map(monkeypatch, values):
    """Evaluations return ``values[iteration]`` as their mAP (the model is not run), so which
    evaluation is the best is known in advance."""
    evaluating = {}

    def fake(run):
        value = values[evaluating["iteration"]]
        return {"mAP": value, "AP": {name: value for name in run.classes}}

    original = hooks.evaluate_during_training

    def evaluate(run, iteration):
        evaluating["iteration"] = iteration
        return original(run, iteration)

    monkeypatch.setattr(hooks, "test_metrics", fake)
    monkeypatch.setattr(hooks, "evaluate_during_training", evaluate)


def metrics(folder):
    return json.loads((folder / "metrics.json").read_text())


def test_best_checkpoint_is_the_best_evaluation_and_metrics_json_names_it(tiny_cfg, tmp_path, monkeypatch):
    scripted_map(monkeypatch, {1: math.nan, 2: 0.5, 3: 0.4, 4: 0.3})
    cfg = apply_overrides(tiny_cfg, ["train.eval_every=1", "train.checkpoint_every=2", "train.keep_checkpoints=3"])
    returned = training.train(cfg, tmp_path)
    best = load_checkpoint(tmp_path / "checkpoint_best.pt")
    assert best["iteration"] == 2
    assert best["best"] == {"iteration": 2, "metric": "voc", "mAP": 0.5}
    # the weights of iteration 2: those of the periodic checkpoint written at the same step
    at_2 = load_checkpoint(tmp_path / "checkpoint_iter000002.pt")["model"]
    assert all(torch.equal(value, at_2[key]) for key, value in best["model"].items())
    last = load_checkpoint(tmp_path / "checkpoint_last.pt")
    assert last["iteration"] == 4 and last["best"] == best["best"]
    written = metrics(tmp_path)
    assert written["mAP"] == 0.3  # metrics.json: the final evaluation, and the best one beside it
    assert written["best"] == {"iteration": 2, "metric": "voc", "mAP": 0.5}
    assert "best" not in returned


def test_no_best_checkpoint_while_nothing_was_measured(tiny_cfg, tmp_path, monkeypatch):
    scripted_map(monkeypatch, {2: math.nan, 4: math.nan})
    training.train(apply_overrides(tiny_cfg, ["train.eval_every=2"]), tmp_path)
    assert not (tmp_path / "checkpoint_best.pt").exists()
    assert "best" not in metrics(tmp_path)
    assert load_checkpoint(tmp_path / "checkpoint_last.pt")["best"] is None


def test_resume_keeps_a_better_best_and_replaces_a_worse_one(tiny_cfg, tmp_path, monkeypatch):
    scripted_map(monkeypatch, {2: 0.5, 4: 0.3, 6: 0.4, 8: 0.6})
    cfg = apply_overrides(tiny_cfg, ["train.eval_every=2", "train.checkpoint_every=2"])
    training.train(cfg, tmp_path)
    before = (tmp_path / "checkpoint_best.pt").stat().st_mtime_ns
    training.train(apply_overrides(cfg, ["solver.iterations=6"]), tmp_path, resume=True)
    # 0.4 at iteration 6 beats the last evaluation before the resume (0.3), not the best (0.5)
    assert (tmp_path / "checkpoint_best.pt").stat().st_mtime_ns == before
    assert load_checkpoint(tmp_path / "checkpoint_best.pt")["iteration"] == 2
    assert metrics(tmp_path)["best"] == {"iteration": 2, "metric": "voc", "mAP": 0.5}
    training.train(apply_overrides(cfg, ["solver.iterations=8"]), tmp_path, resume=True)
    assert load_checkpoint(tmp_path / "checkpoint_best.pt")["iteration"] == 8
    assert metrics(tmp_path)["best"] == {"iteration": 8, "metric": "voc", "mAP": 0.6}


def test_keep_checkpoints_keeps_the_most_recent_periodic_ones(tiny_cfg, tmp_path):
    cfg = apply_overrides(
        tiny_cfg, ["solver.iterations=5", "train.checkpoint_every=1", "train.keep_checkpoints=3", "train.vis_images=0"]
    )
    training.train(cfg, tmp_path)
    kept = sorted(p.name for p in tmp_path.glob("checkpoint_iter*.pt"))
    assert kept == ["checkpoint_iter000004.pt", "checkpoint_iter000005.pt"]
    assert load_checkpoint(tmp_path / "checkpoint_iter000004.pt")["iteration"] == 4
    last = load_checkpoint(tmp_path / "checkpoint_last.pt")["model"]
    newest = load_checkpoint(tmp_path / "checkpoint_iter000005.pt")["model"]
    assert all(torch.equal(value, newest[key]) for key, value in last.items())
    # --force moves every checkpoint of the old run aside, the kept ones and the best one too
    training.train(apply_overrides(cfg, ["solver.iterations=2"]), tmp_path, force=True)
    moved = sorted(p.name for p in (tmp_path / "previous-1").glob("checkpoint_*.pt"))
    assert moved == [
        "checkpoint_best.pt",
        "checkpoint_iter000004.pt",
        "checkpoint_iter000005.pt",
        "checkpoint_last.pt",
    ]
    assert sorted(p.name for p in tmp_path.glob("checkpoint_iter*.pt")) == [
        "checkpoint_iter000001.pt",
        "checkpoint_iter000002.pt",
    ]


def test_by_default_only_the_last_checkpoint_is_kept(tiny_cfg, tmp_path):
    training.train(apply_overrides(tiny_cfg, ["train.vis_images=0"]), tmp_path)
    assert not list(tmp_path.glob("checkpoint_iter*.pt"))


def test_keep_checkpoints_below_1_is_refused_naming_the_key(tiny_cfg):
    with pytest.raises(ConfigError, match=r"train\.keep_checkpoints"):
        apply_overrides(tiny_cfg, ["train.keep_checkpoints=0"])


@pytest.mark.parametrize("name", ["checkpoint_best.pt", "checkpoint_iter000002.pt"])
def test_a_checkpoint_that_is_a_symbolic_link_is_refused_before_training(tiny_cfg, tmp_path, name):
    (tmp_path / "elsewhere.pt").write_bytes(b"not mine")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / name).symlink_to(tmp_path / "elsewhere.pt")
    with pytest.raises(ValueError, match=rf"run/{name}: is a symbolic link"):
        training.train(apply_overrides(tiny_cfg, ["train.keep_checkpoints=3"]), tmp_path / "run")
    assert (tmp_path / "elsewhere.pt").read_bytes() == b"not mine"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [name]
