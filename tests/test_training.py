"""Training behaviour: learning on a handful of images, exact resume, the non-finite-loss stop."""

import json
import math
import os

import pytest
import torch

from ohem.checkpoint import load_checkpoint, load_state_dict_file
from ohem.config import apply_overrides, load_config
from ohem.data import batch_indices, build_dataset
from ohem.engine import hooks
from ohem.engine import trainer as training
from ohem.evaluation.score import evaluate
from ohem.inference import model_from_checkpoint
from ohem.util import strict_json


def test_small_model_overfits_a_few_images_with_ohem(tiny_cfg, tmp_path):
    # 4 training images, evaluated on themselves: a detector that learns must fit them.
    cfg = apply_overrides(
        tiny_cfg,
        [
            "data.num_train=4",
            "data.num_test=4",
            "data.seed=0",
            "solver.iterations=250",
            "solver.lr=0.02",
            "solver.warmup_iterations=20",
            "solver.steps=[200]",
            "train.checkpoint_every=0",
            "sampler.method=ohem",
            "sampler.batch_size_per_image=32",
            "train.eval_every=125",
            "train.roi_loss_images=4",
            # Pinned: the float sums (so the 250-step outcome) depend on the thread count; with 1
            # thread this run ends at 0.68 on its train images, with 2 (CI's count) above 0.7.
            "train.num_threads=2",
        ],
    )
    metrics = training.train(cfg, tmp_path)
    train_set = build_dataset(cfg.data, "train")
    model, _, _ = model_from_checkpoint(tmp_path / "checkpoint_last.pt", torch.device("cpu"))
    on_train = evaluate(model, train_set, torch.device("cpu"))
    assert on_train["mAP"] > 0.7, on_train
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines() if '"eval"' not in x]
    first, last = log[:20], log[-20:]
    mean = lambda rows, k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    assert mean(last, "ohem_all_roi_loss") < 0.5 * mean(first, "ohem_all_roi_loss")
    # The sampler-independent measure (all RoIs of the train images, eval mode) falls too.
    evals = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines() if '"eval"' in x]
    assert [e["iteration"] for e in evals] == [125, 250]
    assert evals[1]["train_roi_loss"] < evals[0]["train_roi_loss"]
    # train returns the final evaluation; the log holds it as strict JSON (a NaN AP: null)
    assert evals[1]["eval"] == json.loads(strict_json(metrics))


@pytest.mark.parametrize("method", ["ohem", "heuristic"])
def test_resume_continues_exactly(tiny_cfg, tmp_path, method):
    cfg = apply_overrides(tiny_cfg, [f"sampler.method={method}", "solver.iterations=4", "train.checkpoint_every=2"])
    training.train(cfg, tmp_path / "straight")
    stopped = apply_overrides(cfg, ["solver.iterations=2"])
    training.train(stopped, tmp_path / "resumed")
    training.train(cfg, tmp_path / "resumed", resume=True)
    a = load_checkpoint(tmp_path / "straight" / "checkpoint_last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint_last.pt")
    assert a["iteration"] == b["iteration"] == 4
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    logged = [
        json.loads(x)["iteration"]
        for x in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()
        if '"eval"' not in x
    ]
    assert logged == [1, 2, 3, 4]


def test_resume_after_a_crash_drops_log_lines_past_the_checkpoint(tiny_cfg, tmp_path, monkeypatch):
    cfg = apply_overrides(tiny_cfg, ["solver.iterations=4", "train.checkpoint_every=1", "train.mining_log_every=1"])
    training.train(cfg, tmp_path / "straight")
    save = hooks.save_checkpoint

    def crash_at_third(path, model, cfg_, classes, iteration, *args, **kwargs):
        if iteration == 3:
            raise KeyboardInterrupt  # killed after logging iteration 3, before its checkpoint
        save(path, model, cfg_, classes, iteration, *args, **kwargs)

    monkeypatch.setattr(hooks, "save_checkpoint", crash_at_third)
    with pytest.raises(KeyboardInterrupt):
        training.train(cfg, tmp_path / "crashed")
    monkeypatch.setattr(hooks, "save_checkpoint", save)
    training.train(cfg, tmp_path / "crashed", resume=True)
    for name in ("log.jsonl", "mining.jsonl"):
        lines = (tmp_path / "crashed" / name).read_text().splitlines()
        iterations = [json.loads(x)["iteration"] for x in lines if '"eval"' not in x]
        assert iterations == [1, 2, 3, 4], name
    a = load_checkpoint(tmp_path / "straight" / "checkpoint_last.pt")["model"]
    b = load_checkpoint(tmp_path / "crashed" / "checkpoint_last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_stops_with_iteration_and_images(tiny_cfg, tmp_path, monkeypatch):
    build = training.build_detector

    def build_with_nan_at_third_step(*args):
        model = build(*args)
        forward, calls = model.forward, []

        def poisoned(images, targets=None):
            out = forward(images, targets)
            if model.training:
                calls.append(1)
                if len(calls) == 3:
                    out["loss_classifier"] = out["loss_classifier"] * float("nan")
            return out

        model.forward = poisoned
        return model

    monkeypatch.setattr(training, "build_detector", build_with_nan_at_third_step)
    cfg = apply_overrides(tiny_cfg, ["solver.iterations=6", "train.checkpoint_every=1"])
    images = batch_indices(2, cfg.data.num_train, cfg.solver.images_per_batch, cfg.train.seed)
    with pytest.raises(training.NonFiniteLossError, match=rf"at iteration 3 on train images \{images}"):
        training.train(cfg, tmp_path)
    # The last good checkpoint (iteration 2) is intact; nothing of iteration 3 was applied or logged.
    assert load_checkpoint(tmp_path / "checkpoint_last.pt")["iteration"] == 2
    logged = [json.loads(x)["iteration"] for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert logged == [1, 2]


def test_float_config_accepts_exponent_strings(tiny_cfg):
    assert apply_overrides(tiny_cfg, ["solver.lr=1e-3"]).solver.lr == 1e-3


def test_init_weights_from_a_checkpoint_or_state_dict(tiny_cfg, tmp_path):
    training.train(tiny_cfg, tmp_path / "a")
    trained = load_checkpoint(tmp_path / "a" / "checkpoint_last.pt")["model"]
    torch.save(trained, tmp_path / "plain.pth")
    for i, source in enumerate((tmp_path / "a" / "checkpoint_last.pt", tmp_path / "plain.pth")):
        # lr 0: the weights after one step are the initial ones.
        one_step = ["solver.lr=0", "solver.iterations=1", "solver.warmup_iterations=0"]
        cfg = apply_overrides(tiny_cfg, [f"model.init_weights={source}", *one_step])
        training.train(cfg, tmp_path / f"b{i}")  # a folder per run: one that holds a run is not trained into
        started = load_checkpoint(tmp_path / f"b{i}" / "checkpoint_last.pt")["model"]
        assert all(torch.equal(trained[k], started[k]) for k in trained if trained[k].is_floating_point())
    torch.save({"not": "weights"}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth: neither an ohem checkpoint nor a state dict"):
        load_state_dict_file(tmp_path / "bad.pth")


def test_resume_after_sigkill_matches_an_uninterrupted_run(tiny_overrides, tmp_path):
    import random
    import signal
    import subprocess
    import sys
    import time

    overrides = tiny_overrides + ["solver.iterations=12", "train.checkpoint_every=1", "solver.steps=[8]"]
    cmd = [sys.executable, "-m", "ohem", "train", "--config", "demo", "--out", str(tmp_path / "killed")]
    for item in overrides:
        cmd += ["--set", item]
    kill_after = random.Random().randint(2, 9)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "TQDM_DISABLE": "1"}
    )
    log = tmp_path / "killed" / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= kill_after:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(tmp_path / "killed" / "checkpoint_last.pt")["iteration"] < 12
    assert (
        subprocess.run(cmd + ["--resume"], capture_output=True, env={**os.environ, "TQDM_DISABLE": "1"}).returncode == 0
    )

    training.train(load_config("demo", overrides), tmp_path / "straight")
    a = load_checkpoint(tmp_path / "straight" / "checkpoint_last.pt")
    b = load_checkpoint(tmp_path / "killed" / "checkpoint_last.pt")
    assert a["iteration"] == b["iteration"] == 12
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), f"{key} differs after a kill at ~{kill_after}"
    logged = [json.loads(x)["iteration"] for x in log.read_text().splitlines() if '"eval"' not in x]
    assert logged == list(range(1, 13))


def test_bf16_autocast_training_on_cpu(tiny_cfg, tmp_path):
    cfg = apply_overrides(tiny_cfg, ["train.amp=bf16"])
    training.train(cfg, tmp_path)
    steps = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines() if '"eval"' not in x]
    assert len(steps) == 4 and all(math.isfinite(r["loss"]) for r in steps)
    state = load_checkpoint(tmp_path / "checkpoint_last.pt")
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        training.train(apply_overrides(tiny_cfg, ["train.amp=fp16", "train.device=cpu"]), tmp_path / "fp16")


def test_torchrun_with_two_cpu_processes_matches_one_process(tiny_overrides, tmp_path):
    import subprocess
    import sys

    # Every anchor sampled for the RPN loss: no random sampling, so 2 processes x 1 image must
    # give the gradients of 1 process x 2 images (OHEM and the RoI losses are per image).
    overrides = tiny_overrides + [
        "solver.iterations=3",
        "train.checkpoint_every=3",
        "train.check_sync_every=1",
        "model.rpn_batch_size_per_image=100000",
        "train.device=cpu",
    ]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ohem"]
    cmd += ["train", "--config", "demo", "--out", str(tmp_path / "ddp")]
    for item in overrides:
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # Weights were compared across the processes after every step (check_sync_every=1), and the
    # files were written once.
    logged = [json.loads(x)["iteration"] for x in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 3]  # 3 steps, then the final evaluation
    ddp = load_checkpoint(tmp_path / "ddp" / "checkpoint_last.pt")
    assert len(ddp["rng"]["torch"]) == 2
    training.train(load_config("demo", overrides), tmp_path / "single")
    single = load_checkpoint(tmp_path / "single" / "checkpoint_last.pt")
    cfg = load_config("demo", overrides)
    torch.manual_seed(cfg.train.seed)
    initial = training.build_detector(cfg.model, cfg.sampler, 5).state_dict()
    update = sum((single["model"][k] - initial[k]).abs().sum() for k in initial)
    gap = sum((single["model"][k] - ddp["model"][k]).abs().sum() for k in initial)
    assert update > 0 and gap < 1e-3 * update, (float(gap), float(update))
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["num_images"] == 4


def test_no_drawing_with_vis_images_0(tiny_cfg, tmp_path):
    one_step = ["train.vis_images=0", "solver.iterations=1", "solver.warmup_iterations=1"]
    metrics = training.train(apply_overrides(tiny_cfg, one_step), tmp_path)
    assert not (tmp_path / "detections.png").exists()
    assert json.loads((tmp_path / "metrics.json").read_text())["mAP"] == metrics["mAP"]
