"""Each CLI command on a tiny config writes what it promises; bad input gives one-line errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ohem.checkpoint import load_checkpoint
from ohem.cli import main


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from tests.conftest import TINY

    out = tmp_path_factory.mktemp("run")
    args = ["train", "--config", "demo", "--out", str(out)]
    for item in TINY:
        args += ["--set", item]
    assert main(args) == 0
    return out


def test_train_writes_run_directory(trained_run):
    for name in ("checkpoint_last.pt", "metrics.json", "detections.png", "log.jsonl", "config.yaml"):
        assert (trained_run / name).is_file(), name
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert set(metrics["AP"]) == {"circle", "square", "triangle", "plus", "ring"}
    measured = [ap for ap in metrics["AP"].values() if ap is not None]  # null: a class without test objects
    assert metrics["mAP"] == pytest.approx(sum(measured) / len(measured))  # mean over the measured classes
    assert (metrics["metric"], metrics["num_images"]) == ("voc", 4)
    lines = [json.loads(line) for line in (trained_run / "log.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "eval" not in r]
    assert [r["iteration"] for r in steps] == [1, 2, 3, 4]
    assert {"loss_classifier", "loss_box_reg", "ohem_all_roi_loss", "ohem_mined_fg_fraction"} <= set(steps[0])
    assert lines[-1]["eval"]["mAP"] == metrics["mAP"]
    assert load_checkpoint(trained_run / "checkpoint_last.pt")["iteration"] == 4
    for r in steps:  # on the CPU every step is timed; the mining is a part of the step
        assert r["time_data"] >= 0 and 0 < r["time_mining"] < r["time_step"]


def test_train_records_what_ohem_mined(trained_run):
    records = [json.loads(line) for line in (trained_run / "mining.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [4]  # mining_log_every 50 > 4 iterations: one at the end
    r = records[0]
    assert r["steps"] == 4 and r["num_mined"] == 4 * 2 * 16
    assert sum(r["iou_hist"]) == sum(r["label_counts"]) == r["num_mined"]
    assert r["mined_fg_fraction"] == pytest.approx(sum(r["label_counts"][1:]) / r["num_mined"])
    assert r["mined_loss_mean"] > r["all_roi_loss_mean"]
    losses = [h["loss"] for h in r["hardest"]]
    assert len(losses) == 8 and losses == sorted(losses, reverse=True)
    for h in r["hardest"]:
        x1, y1, x2, y2 = h["box"]
        assert 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 128 and 0 <= h["image_index"] < 8
    with Image.open(trained_run / "detections.png") as im:
        assert im.size == (800, 400)  # train.vis_images=2: two 4-inch panels at 100 dpi


def test_eval_writes_metrics_for_the_checkpoints_test_split(trained_run, tmp_path, capsys):
    out = tmp_path / "eval"
    assert (
        main(["eval", "--checkpoint", str(trained_run / "checkpoint_last.pt"), "--out", str(out), "--device", "cpu"])
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    trained = json.loads((trained_run / "metrics.json").read_text())
    assert trained.pop("best") == {"iteration": 4, "metric": "voc", "mAP": trained["mAP"]}  # one evaluation
    assert metrics == trained
    assert "mAP" in capsys.readouterr().out
    ckpt = str(trained_run / "checkpoint_last.pt")
    args = ["eval", "--checkpoint", ckpt, "--out", str(out), "--data", "synthetic", "--split", "train"]
    assert main([*args, "--set", "data.num_train=3", "--device", "cpu"]) == 0
    on_train = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 4 and on_train["num_images"] == 3
    assert set(on_train["AP"]) == set(metrics["AP"])
    assert main(["eval", "--checkpoint", ckpt, "--out", str(out), "--data", "coco"]) == 1
    assert "--data: expected synthetic, voc:ROOT or coco:ROOT, got 'coco'" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", ckpt, "--out", str(out), "--set", "solver.lr=1"]) == 1
    assert "only data.key=value" in capsys.readouterr().err


def test_detect_draws_each_image(trained_run, tmp_path):
    paths = []
    for i in range(2):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (100, 120, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    out = tmp_path / "det"
    assert (
        main(
            [
                "detect",
                "--checkpoint",
                str(trained_run / "checkpoint_last.pt"),
                *paths,
                "--out",
                str(out),
                "--score-thresh",
                "0.0",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert (out / "img0.png").is_file() and (out / "img1.png").is_file()
    results = json.loads((out / "detections.json").read_text())
    assert [r["image"] for r in results] == paths
    assert all(len(r["boxes"]) == len(r["scores"]) == len(r["labels"]) for r in results)


def test_detect_rejects_a_corrupt_image_before_writing(trained_run, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "det"
    assert main(["detect", "--checkpoint", str(trained_run / "checkpoint_last.pt"), str(bad), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ohem detect: error: image ") and "broken.jpg" in err and "\n" not in err
    assert not out.exists()


def test_bad_checkpoint_and_config_errors_are_one_line(tmp_path, capsys):
    truncated = tmp_path / "ckpt.pt"
    truncated.write_bytes(b"PK\x03\x04garbage")
    assert main(["eval", "--checkpoint", str(truncated), "--out", str(tmp_path / "e")]) == 1
    err = capsys.readouterr().err.strip()
    assert "ckpt.pt" in err and "cannot be loaded safely" in err and "\n" not in err
    assert main(["train", "--config", "demo", "--out", str(tmp_path / "t"), "--set", "solver.lrr=1"]) == 1
    assert "unknown key 'solver.lrr'" in capsys.readouterr().err


def test_checkpoint_with_pickled_code_is_refused(tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (print, ("this ran",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "ohem-checkpoint-1", "model": Payload()}, path)
    assert main(["eval", "--checkpoint", str(path), "--out", str(tmp_path / "e")]) == 1
    captured = capsys.readouterr()
    assert "this ran" not in captured.out
    assert "evil.pt" in captured.err and "not tensors-only" in captured.err


def test_report_writes_plots_and_gallery(trained_run, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(trained_run), "--out", str(out)]) == 0
    names = {"losses.png", "mined_fg_fraction.png", "mined_iou.png", "mined_classes.png", "map.png", "hardest_rois.png"}
    assert {p.name for p in out.iterdir()} == names
    for name in names - {"hardest_rois.png"}:
        with Image.open(out / name) as im:
            assert im.size == (700, 400), name


def test_report_on_a_non_run_directory_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert "log.jsonl: no such file" in err and "\n" not in err


def test_export_then_proposals_then_scoring_a_detections_file(tmp_path, capsys):
    tree = tmp_path / "voc"
    assert main(["export", "--layout", "voc", "--split", "test", "--out", str(tree), "--set", "data.num_test=3"]) == 0
    hint = capsys.readouterr().out
    assert "--classes circle,square,triangle,plus,ring" in hint
    data = ["--data", f"voc:{tree}", "--split", "test", "--classes", "circle,square,triangle,plus,ring"]
    npz = tmp_path / "ss.npz"
    assert main(["proposals", *data, "--mode", "fast", "--max-boxes", "50", "--processes", "1", "--out", str(npz)]) == 0
    from ohem.data.proposals import ProposalFile

    proposals = ProposalFile(npz)
    names = [f"synthetic-test-{i:06d}" for i in range(3)]
    assert sorted(proposals.names()) == names
    assert all(0 < len(proposals.boxes(n)[0]) <= 50 for n in names)
    # a detections file: every gt box of image 0 found, nothing else -> AP 1 where image 0 has objects
    from ohem.data import VOCDetection

    ds = VOCDetection(tree, "test", classes="circle,square,triangle,plus,ring".split(","), keep_difficult=True)
    results = [
        {"image_id": names[0], "category_id": label, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": 0.9}
        for (x1, y1, x2, y2), label in zip(ds.annotations(0)["boxes"].tolist(), ds.annotations(0)["labels"].tolist())
    ]
    (tmp_path / "results.json").write_text(json.dumps(results))
    out = tmp_path / "scored"
    scored = ["eval", "--detections", str(tmp_path / "results.json"), *data, "--out", str(out)]
    assert main([*scored, "--metric", "voc07"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metric"] == "voc07" and metrics["num_images"] == 3
    labels = [ds.annotations(i)["labels"].tolist() for i in range(3)]
    for label in set(labels[0]):  # precision 1 up to recall = found / all objects of the class
        recall = labels[0].count(label) / sum(image.count(label) for image in labels)
        eleven_point = sum(1 for t in range(11) if t / 10 <= recall + 1e-9) / 11
        assert metrics["AP"][ds.classes[label - 1]] == pytest.approx(eleven_point, abs=1e-6)
    results.append({"image_id": "000999", "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5})
    (tmp_path / "results.json").write_text(json.dumps(results))
    capsys.readouterr()
    assert main(scored) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "results.json" in err and "'000999'" in err


@pytest.mark.parametrize("bad", [["--workers", "-1"], ["--set", "test.images_per_batch=0"]])
def test_eval_refuses_bad_loader_settings_in_one_line(trained_run, tmp_path, capsys, bad):
    args = ["eval", "--checkpoint", str(trained_run / "checkpoint_last.pt"), "--out", str(tmp_path / "e"), *bad]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    key = bad[1].split("=")[0] if bad[0] == "--set" else "data.workers"
    assert err.startswith(f"ohem eval: error: override '{key}=")
    assert f"': {key} must be an integer in [" in err or f"': {key} must be a finite number in [" in err  # its range
    assert "\n" not in err and not (tmp_path / "e").exists()
