"""Pictures that read at a glance: titles that fit and name files, labels that do not cover each other,
a note on an image without detections, legends beside the data, y-axes from 0, one point drawn as a
value; ``ohem report`` on a run without mining records draws what it can and says so."""

import json

import torch

from ohem import visualize
from ohem.bench.summary import curves_figure
from ohem.cli import main
from ohem.report import plot_map, plot_mined_classes
from ohem.structures import ImageDetections
from tests.conftest import TINY

CLASSES = ["cat", "dog"]


def test_long_titles_are_cut_in_the_middle_and_keep_the_extension():
    name = "a_very_long_photo_file_name_from_a_phone_IMG_20240101_123456789.jpg"
    short = visualize.short_title(name)
    assert len(short) == 36 and short.startswith("a_very_long_photo") and short.endswith("123456789.jpg")
    assert "…" in short
    assert visualize.short_title("photo.jpg") == "photo.jpg"


def test_images_are_titled_by_file_name_where_the_dataset_has_files():
    class Coco:
        def image_path(self, index):
            return f"/data/coco/val2017/{index:012d}.jpg"

        def image_name(self, index):
            return str(index)  # a COCO id: what the drawing must not show

    class Synthetic:
        def image_name(self, index):
            return f"synthetic-test-{index:06d}"

    assert visualize.image_title(Coco(), 42) == "000000000042.jpg"
    assert visualize.image_title(Synthetic(), 3) == "synthetic-test-000003"


def detections(boxes, scores, labels):
    return ImageDetections(
        torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(scores), torch.tensor(labels)
    )


def test_an_image_without_detections_says_so_on_it():
    image = torch.rand(3, 64, 80)
    dets = [detections([[5, 5, 30, 30]], [0.31], [2]), detections([], [], [])]
    fig = visualize.detections_figure([image, image], dets, CLASSES, 0.5, titles=["a.jpg", "b.jpg"])
    first, second = fig.axes[:2]
    assert [t.get_text() for t in first.texts] == ["no detection scoring >= 0.5\n(best 0.31, dog)"]
    assert [t.get_text() for t in second.texts] == ["no detections"]
    assert (first.get_title(), second.get_title()) == ("a.jpg", "b.jpg")


def test_labels_on_a_small_image_do_not_overlap_and_the_left_out_are_counted():
    image = torch.rand(3, 48, 48)
    boxes = [[10 + i / 5, 10 + i / 5, 30, 30] for i in range(16)]  # 16 nearly equal boxes: 6 spots each
    dets = detections(boxes, [0.9 - 0.01 * i for i in range(16)], [1 + i % 2 for i in range(16)])
    fig = visualize.detections_figure([image], [dets], CLASSES, 0.5, titles=["small.png"])
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    extents = [t.get_window_extent(renderer) for t in ax.texts]
    frame = ax.get_window_extent(renderer)
    assert 1 <= len(extents) < 16
    assert ax.texts[0].get_text() == "cat 0.90"  # the best detection's label is placed first
    for i, a in enumerate(extents):
        assert frame.x0 <= a.x0 and a.x1 <= frame.x1 and frame.y0 <= a.y0 and a.y1 <= frame.y1
        assert not any(a.overlaps(b) for b in extents[i + 1 :])
    assert ax.get_title() == f"small.png\n{16 - len(extents)} of 16 labels left out (no room)"


def test_one_evaluation_is_a_value_on_an_axis_from_zero():
    fig = plot_map([{"iteration": 400, "eval": {"mAP": 0.5934}}])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["59.3"]
    assert list(ax.get_xticks()) == [400] and ax.get_ylim() == (0, 100)
    assert [line.get_linestyle() for line in ax.lines] == ["None"]  # a marker, no line


def test_mined_classes_legend_is_beside_the_data():
    records = [{"iteration": i, "label_counts": [10, 3, 2]} for i in (50, 100, 150)]
    fig = plot_mined_classes(records, ["background", *CLASSES])
    fig.draw_without_rendering()
    ax = fig.axes[0]
    legend = ax.get_legend()
    assert legend.get_window_extent().x0 >= ax.get_window_extent().x1
    assert [t.get_text() for t in legend.get_texts()] == ["dog", "cat", "background"]  # as stacked, top first


def test_bench_curves_start_at_zero_and_single_points_are_values_that_do_not_overlap():
    series = {"heuristic": {"0": [(2000, 70.5)]}, "ohem": {"0": [(2000, 76.5)], "1": [(2000, 76.5)]}}
    series["tv-default"] = {"0": [(2000, 75.5)]}
    fig = curves_figure(series, "iteration", "test mAP (%)", top=100)
    ax = fig.axes[0]
    assert ax.get_ylim() == (0, 100) and list(ax.get_xticks()) == [2000]
    assert sorted(t.get_text() for t in ax.texts) == ["70.5", "75.5", "76.5"]
    fig.draw_without_rendering()
    extents = [t.get_window_extent() for t in ax.texts]
    assert not any(a.overlaps(b) for i, a in enumerate(extents) for b in extents[i + 1 :])
    assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1
    curve = curves_figure({"ohem": {"0": [(0, 0.9), (10, 0.5)]}}, "iteration", "loss")
    assert curve.axes[0].get_ylim()[0] == 0 and len(curve.axes[0].texts) == 0


def test_report_on_a_run_without_mining_records_draws_losses_and_map(tmp_path, capsys):
    overrides = [*TINY, "sampler.method=heuristic", "solver.iterations=2", "solver.steps=[]", "train.eval_every=1"]
    overrides += ["train.vis_images=0"]
    run = tmp_path / "run"
    assert main(["train", "--config", "demo", "--out", str(run), *(x for o in overrides for x in ("--set", o))]) == 0
    assert not (run / "mining.jsonl").exists()
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    out, err = capsys.readouterr()
    assert {p.name for p in (run / "report").iterdir()} == {"losses.png", "map.png"}
    assert out.splitlines() == [f"wrote {run / 'report' / 'losses.png'}", f"wrote {run / 'report' / 'map.png'}"]
    assert err == (
        f"ohem report: note: {run}: no mining.jsonl (sampler.method heuristic records no mined RoIs); drawing "
        "losses.png and map.png (mined_fg_fraction.png, mined_iou.png, mined_classes.png, hardest_rois.png "
        "need mining records)\n"
    )
    evals = [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "eval" in r]
    assert len(evals) == 2
