"""Hostile input, round 3 (issue 30): numbers without a range, a training step with no RoI, bounds where
memory follows, the plug-in surface (samplers and ``enable_ohem`` in your own code). The command cases run
through tests/test_hostile.py's ``check_case`` (exit code, one stderr line, nothing written on a failure:
not even ``--out``); the plug-in cases call the library as your own code would.

The next bad input is one ``Case(...)`` line in ``CASES``."""

from __future__ import annotations

import json
import math
import struct
import typing
from pathlib import Path

import numpy as np
import pytest
import torch

from ohem import enable_ohem
from ohem.config import Config, ConfigError
from ohem.events import EventStorage
from ohem.mining import SAMPLERS, Sample, SamplerBase, enable_sampler, register_sampler
from tests.conftest import builtin_methods
from tests.test_hostile import Case, check_case, image_file, text_file
from tests.test_hostile_files import _import, mat_extra, v5
from tests.test_roi_heads import heads_inputs, small_model

Setup = typing.Callable[[Path, Path], list[str]]


def _train(*sets: str) -> Setup:
    args = [a for item in sets for a in ("--set", item)]
    return lambda tmp, _: ["train", "--config", "demo", "--out", str(tmp / "out"), *args]


# ---- hostile .mat files (pattern 1: files libraries open for us)
def _h5_cells(path: Path, make_cell: typing.Callable) -> Path:
    """A v7.3 file whose two ``boxes`` cells ``make_cell(file, i)`` makes."""
    h5py = mat_extra("h5py")
    with h5py.File(path, "w") as f:
        refs = [make_cell(f, i).ref for i in range(2)]
        f.create_dataset("boxes", data=np.array(refs, dtype=h5py.ref_dtype)[:, None])
    return path


def _external_storage(path: Path) -> Path:
    secret = path.parent / "secret.bin"  # any file on the machine: HDF5 would read its bytes as the cell's
    secret.write_bytes(np.arange(8, dtype="<f8").tobytes())
    return _h5_cells(path, lambda f, i: f.create_dataset(f"b{i}", (4, 2), "<f8", external=[(str(secret), 0, 64)]))


def _virtual(path: Path) -> Path:
    h5py = mat_extra("h5py")
    other = path.parent / "other.h5"
    with h5py.File(other, "w") as o:
        o.create_dataset("x", data=np.ones((4, 2)))

    def cell(f, i):
        layout = h5py.VirtualLayout(shape=(4, 2), dtype="f8")
        layout[:] = h5py.VirtualSource(str(other), "x", shape=(4, 2))
        return f.create_virtual_dataset(f"b{i}", layout)

    return _h5_cells(path, cell)


def _array_element(path: Path) -> Path:  # a (1, 1) cell whose one element is 11000 x 11000 doubles (968 MB)
    return _h5_cells(path, lambda f, i: f.create_dataset(f"b{i}", (1, 1), np.dtype(("f8", (11000, 11000)))))


def _links(kind: str) -> typing.Callable[[Path], Path]:
    def make(path: Path) -> Path:
        h5py = mat_extra("h5py")
        with h5py.File(path, "w") as f:
            if kind == "external":
                f["boxes"] = h5py.ExternalLink("/etc/hostname", "/x")
            else:
                f["boxes"], f["loop"] = h5py.SoftLink("/loop"), h5py.SoftLink("/boxes")
        return path

    return make


def _v5_type(where: str) -> typing.Callable[[Path], Path]:
    """A v5 file with data type 99 (no MATLAB type) in the first cell's data tag (scipy: a segmentation
    fault) or as the top-level element's type."""

    def make(path: Path) -> Path:
        raw = bytearray(v5(path, [np.ones((2, 4)), np.ones((1, 4))]).read_bytes())
        at = raw.index(struct.pack("<II", 9, 64)) if where == "cell" else 128  # 9: miDOUBLE, 2 x 4 of them
        raw[at : at + 4] = struct.pack("<I", 99)
        path.write_bytes(bytes(raw))
        return path

    return make


def _bench(*args: str) -> Setup:
    return lambda tmp, _: ["bench", "--config", "demo", "--out", str(tmp / "out"), *args]


def _coco_without_objects(tmp: Path) -> Path:
    """A COCO-format folder whose training images have no objects (the test split has one)."""
    folder = tmp / "coco"
    images = [{"id": i + 1, "file_name": f"{n}.png", "width": 128, "height": 128} for i, n in enumerate("ab")]
    for i, image in enumerate(images):
        image_file(folder / image["file_name"], (128, 128), seed=i)
    cats = [{"id": 1, "name": "thing"}]
    box = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "iscrowd": 0, "area": 1600}
    (folder / "train.json").write_text(json.dumps({"images": images, "annotations": [], "categories": cats}))
    (folder / "test.json").write_text(json.dumps({"images": images, "annotations": [box], "categories": cats}))
    return folder


def _train_without_objects(method: str) -> Setup:
    def setup(tmp: Path, _: Path) -> list[str]:
        folder = _coco_without_objects(tmp)
        sets = [
            *("data.dataset=coco", f"data.root={folder}", f"data.train_split={folder / 'train.json'}"),
            *(f"data.test_split={folder / 'test.json'}", "data.empty_images=keep", f"sampler.method={method}"),
            *("solver.iterations=2", "solver.warmup_iterations=1", "solver.steps=[]", "train.eval_every=0"),
            *("train.vis_images=0", "model.min_size=128", "model.max_size=128", "train.device=cpu"),
        ]
        return _train(*sets)(tmp, _)

    return setup


def _roi_loss_zero_and_rpn_trained(tmp: Path) -> None:
    steps = [json.loads(line) for line in (tmp / "out" / "log.jsonl").read_text().splitlines()][:2]
    assert [s["loss_classifier"] for s in steps] == [0.0, 0.0] and [s["loss_box_reg"] for s in steps] == [0.0, 0.0]
    assert all(s["loss_objectness"] > 0 for s in steps)


def _base_chain(tmp: Path, files: int, fan_out: int) -> Path:
    """``f0.yaml`` .. ``fN.yaml``, each naming the next ``fan_out`` times in its ``base:`` list."""
    for i in range(files):
        (tmp / f"f{i}.yaml").write_text(f"base: [{', '.join([f'f{i + 1}.yaml'] * fan_out)}]\n")
    (tmp / f"f{files}.yaml").write_text("solver:\n  lr: 0.01\n")
    return tmp / "f0.yaml"


def _train_config(make: typing.Callable[[Path], Path]) -> Setup:
    return lambda tmp, _: ["train", "--config", str(make(tmp)), "--out", str(tmp / "out")]


def _base_link_loop(tmp: Path) -> Path:
    (tmp / "loop.yaml").symlink_to("loop.yaml")
    return text_file(tmp / "c.yaml", "base: loop.yaml\n")


MAT = r"^ohem proposals: error: .*in\.mat: "
TRAIN = r"^ohem train: error: override '"
# fmt: off
CASES = [
    # --- pattern 5: every number has a range; NaN and infinity nowhere, lists included
    Case("model.box_score_thresh nan", _train("model.box_score_thresh=.nan"), 1,
         TRAIN + r"model\.box_score_thresh=\.nan': model\.box_score_thresh must be a finite number in \[0, 1\], "
         r"got nan$"),
    Case("model.box_score_thresh 1.5", _train("model.box_score_thresh=1.5"), 1,
         r"model\.box_score_thresh must be a finite number in \[0, 1\], got 1\.5$"),
    Case("model.box_detections_per_img -1", _train("model.box_detections_per_img=-1"), 1,
         TRAIN + r"model\.box_detections_per_img=-1': model\.box_detections_per_img must be "
         r"an integer in \[1, 1000000000\], "
         r"got -1$"),
    Case("model.rpn_post_nms_top_n_train 0", _train("model.rpn_post_nms_top_n_train=0"), 1,
         r"model\.rpn_post_nms_top_n_train must be an integer in \[1, 1000000000\], got 0$"),
    Case("model.rpn_pre_nms_top_n_test 0", _train("model.rpn_pre_nms_top_n_test=0"), 1,
         r"model\.rpn_pre_nms_top_n_test must be an integer in \[1, 1000000000\], got 0$"),
    Case("model.rpn_batch_size_per_image 0", _train("model.rpn_batch_size_per_image=0"), 1,
         r"model\.rpn_batch_size_per_image must be an integer in \[1, 1000000000\], got 0$"),
    Case("model.pixel_scale nan", _train("model.pixel_scale=.nan"), 1,
         r"model\.pixel_scale must be a finite number > 0 and <= 65535, got nan$"),
    Case("model.pixel_scale 0", _train("model.pixel_scale=0"), 1,
         r"model\.pixel_scale must be a finite number > 0 and <= 65535, got 0$"),
    Case("model.image_mean with a NaN", _train("model.image_mean=[0.4, .nan, 0.4]"), 1,
         r"model\.image_mean\[1\] must be a finite number in \[-65535, 65535\], got nan$"),
    Case("model.image_std with a 0", _train("model.image_std=[0.2, 0.2, 0]"), 1,
         r"model\.image_std\[2\] must be a finite number > 0 and <= 65535, got 0$"),
    Case("model.image_mean of 2 numbers", _train("model.image_mean=[0.4, 0.4]"), 1,
         r"model\.image_mean must be a list of 3 \(each a finite number in \[-65535, 65535\]\) or null, "
         r"got \[0\.4, 0\.4\]$"),
    Case("model.trainable_backbone_layers 9", _train("model.trainable_backbone_layers=9"), 1,
         r"model\.trainable_backbone_layers must be an integer in \[0, 5\] or null, got 9$"),
    Case("sampler.bg_iou_low above the head's threshold", _train("sampler.bg_iou_low=0.6"), 1,
         TRAIN + r"sampler\.bg_iou_low=0\.6': sampler\.bg_iou_low = 0\.6 must be below the RoI head's background/"
         r"foreground IoU threshold 0\.5 \(background is IoU in \[bg_iou_low, 0\.5\): none would be left"),
    Case("sampler.bins (libra) 1e20", _train("sampler.method=libra", "sampler.bins=100000000000000000000"), 1,
         r"sampler\.bins must be an integer in \[1, 100\], got 100000000000000000000$"),
    Case("sampler.factor (ohem-presample) 1e6", _train("sampler.method=ohem-presample", "sampler.factor=1000000"), 1,
         r"sampler\.factor must be an integer in \[1, 1000\], got 1000000$"),
    Case("sampler.isr_p_k 1e300", _train("sampler.method=pisa", "sampler.isr_p_k=1e300"), 1,
         r"sampler\.isr_p_k must be a finite number in \[0, 100\], got 1e\+300$"),
    Case("solver.accumulate_steps 1e20", _train("solver.accumulate_steps=100000000000000000000"), 1,
         r"solver\.accumulate_steps must be an integer in \[1, 1024\], got 100000000000000000000$"),
    Case("solver.lr 1e300", _train("solver.lr=1e300"), 1, r"solver\.lr must be "
         r"a finite number in \[0, 10\], got 1e\+300$"),
    Case("solver.gamma 1e308", _train("solver.gamma=1e308"), 1, r"solver\.gamma must be "
         r"a finite number in \[0, 1\], got 1e\+308$"),
    Case("solver.momentum 5", _train("solver.momentum=5"), 1, r"solver\.momentum must be "
         r"a finite number in \[0, 1\], got 5$"),
    Case("data.seed -1 (no --out left behind)", _train("data.seed=-1"), 1,
         TRAIN + r"data\.seed=-1': data\.seed must be an integer in \[0, 18446744073709551615\], got -1$"),
    Case("train.seed 2^64", _train(f"train.seed={2**64}"), 1,
         r"train\.seed must be an integer in \[0, 18446744073709551615\], got 18446744073709551616$"),
    Case("data.seed 2^64", _train(f"data.seed={2**64}"), 1, r"data\.seed must be "
         r"an integer in \[0, 18446744073709551615\]"),
    Case("bench --seeds 2^64", _bench("--seeds", "0", str(2**64)), 1,
         r"^ohem bench: error: --seeds must be in \[0, 18446744073709551615\], got 18446744073709551616$"),
    Case("bench --seeds -1", _bench("--seeds", "-1"), 1,
         r"^ohem bench: error: --seeds must be in \[0, 18446744073709551615\], got -1$"),
    # --- pattern 6: a step with no RoI trains the RPN and skips the RoI loss
    Case("data.empty_images keep, heuristic, images without objects", _train_without_objects("heuristic"), 0, "",
         check=_roi_loss_zero_and_rpn_trained),
    # --- pattern 2: upper bounds where memory follows
    Case("base: 24 files, each base: [next, next] (2^24 reads)", _train_config(lambda t: _base_chain(t, 24, 2)), 1,
         r"^ohem train: error: config .*f15\.yaml: 'base' chain more than 16 files deep \(from .*f0\.yaml\)$"),
    Case("base: 4 files, each naming the next 6 times (6^3 reads)", _train_config(lambda t: _base_chain(t, 3, 6)), 1,
         r"^ohem train: error: config .*f0\.yaml: its 'base' chain reads more than 64 files \(at .*\); a chain "),
    Case("base: a list of 100 files", _train_config(lambda t: text_file(t / "c.yaml", f"base: {['x.yaml'] * 100}\n")),
         1, r"^ohem train: error: config .*c\.yaml: 'base' lists 100 files, at most 16$"),
    Case("base: a symbolic link loop", _train_config(_base_link_loop), 1,
         r"^ohem train: error: config .*c\.yaml: 'base' 'loop\.yaml': cannot resolve \(Symlink loop from .*\)$"),
    # --- pattern 1: files libraries open for us (h5py, scipy)
    Case(".mat v7.3 cell with external storage", _import(_external_storage), 1,
         MAT + r"'boxes' cell 1 keeps its data in other files \(HDF5 external storage\); refused, not read$"),
    Case(".mat v7.3 cell a virtual dataset", _import(_virtual), 1,
         MAT + r"'boxes' cell 1 is an HDF5 virtual dataset \(its data maps other files\); refused, not read$"),
    Case(".mat v7.3 'boxes' an external link", _import(_links("external")), 1,
         MAT + r"'boxes' is an HDF5 external link to /etc/hostname; refused, not followed$"),
    Case(".mat v7.3 'boxes' a soft-link loop", _import(_links("loop")), 1,
         MAT + r"'boxes' cannot be opened \(an HDF5 link loop or a dangling link\?\): "),
    Case(".mat v7.3 (1, 1) cell of 11000 x 11000 array elements", _import(_array_element), 1,
         MAT + r"'boxes' cell 1 holds HDF5 elements of type \('<f8', \(11000, 11000\)\), not single numbers$"),
    Case(".mat v5 cell data of type 99 (scipy: SIGSEGV)", _import(_v5_type("cell")), 1,
         MAT + r"'boxes' cell 1 holds data of type 99, not a MATLAB data type \(forged\)$"),
    Case(".mat v5 top-level element of type 99", _import(_v5_type("top")), 1,
         MAT + r"not a MATLAB \.mat file: a variable of data type 99 \(not an array\)$"),
    # --- single bugs
    Case("proposals --out naming its --import-mat input", lambda tmp, _: ["proposals", "--import-mat",
         str(v5(tmp / "in.mat", [np.ones((2, 4))] * 2)), "--data", "synthetic", "--split", "test", "--set",
         "data.num_test=2", "--out", str(tmp / "in.mat")], 1,
         r"^ohem proposals: error: --out .*in\.mat: is this command's input \(--import-mat .*in\.mat\); give another "),
    Case("bench --pretrain ''", _bench("--pretrain", ""), 1,
         r"^ohem bench: error: --pretrain '': empty; give the config \(or recipe\) to pretrain with$"),
    Case("a config name of 5000 characters", lambda tmp, _: ["train", "--config", "x" * 5000, "--out",
         str(tmp / "out")], 1, r"^ohem train: error: x{200}\.\.\. \(5,000 characters\): File name too long$"),
    Case("a config path of 5000 characters", _train_config(lambda t: t / ("y" * 5000 + ".yaml")), 1,
         r"^ohem train: error: /.{150,}\.\.\. \(\d,\d{3} characters\): File name too long$"),
    Case("data.workers 1000", _train("data.workers=1000"), 1, r"data\.workers must be "
         r"an integer in \[0, 64\] or null, got 1000$"),
    Case("train.num_threads 100000", _train("train.num_threads=100000"), 1,
         r"train\.num_threads must be an integer in \[1, 1024\] or null, got 100000$"),
]
# fmt: on


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_round3(case: Case, tmp_path: Path, capsys) -> None:
    check_case(case, tmp_path / "no-run", tmp_path, capsys)  # no trained run: the cases fail before training


# every number has a range: test_config.py's test_every_numeric_field_has_a_range_and_refuses_...


# ------------------------------------------------------------------- a sampler built in Python
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"batch_size_per_image": 64.5}, r"^sampler\.batch_size_per_image: .*integer.*, got 64\.5$"),
        ({"nms_iou": [0.5, 0.7]}, r"^sampler\.nms_iou: .*, got \[0\.5, 0\.7\]$"),
        ({"nms_per_label": "false"}, r"^sampler\.nms_per_label: .*boolean.*, got 'false'$"),
        ({"fg_fraction": math.nan}, r"^sampler\.fg_fraction: .*finite.*, got nan$"),
        ({"bg_iou_low": 0.5}, r"^sampler\.bg_iou_low = 0\.5 must be below the RoI head's background/foreground "),
    ],
)
def test_a_sampler_in_python_is_held_to_the_yaml_rules(settings: dict, message: str) -> None:
    from ohem import enable_ohem
    from ohem.models import build_model

    model = build_model(Config().model, 3, load_weights=False)
    before = type(model.roi_heads)
    with pytest.raises(ConfigError, match=message):
        enable_ohem(model, **settings)  # the plug-in path: the same line, the model left as it was
    assert type(model.roi_heads) is before


def test_python_numbers_are_stored_as_yaml_would_give_them() -> None:
    sampler = SAMPLERS["ohem"](fg_fraction=1, bg_iou_low=0)
    assert type(sampler.fg_fraction) is float and type(sampler.bg_iou_low) is float


def test_bg_iou_low_is_checked_against_your_own_heads_threshold() -> None:
    from ohem import enable_heuristic_sampling
    from ohem.models import build_model

    model = build_model(Config().model, 3, load_weights=False)
    model.roi_heads.proposal_matcher.low_threshold = 0.3  # a head of your own: background below IoU 0.3
    with pytest.raises(ConfigError, match=r"^sampler\.bg_iou_low = 0\.4 must be below .* threshold 0\.3 "):
        enable_heuristic_sampling(model, bg_iou_low=0.4)
    enable_heuristic_sampling(model, bg_iou_low=0.2)


# ------------------------------------------------------------------------------------ a step with no RoI
def _no_gt(n: int = 2) -> list[dict]:
    return [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)} for _ in range(n)]


@register_sampler("test-picks-nothing")
class PicksNothing(SamplerBase):
    """A sampler of your own that picks no row."""

    def sample(self, rois, losses, iteration) -> Sample:
        return Sample(rois.labels.new_zeros(0))


def _assert_no_roi_step(model: torch.nn.Module, losses: dict[str, torch.Tensor], rpn: bool) -> None:
    assert losses["loss_classifier"].item() == 0.0 and losses["loss_box_reg"].item() == 0.0
    assert losses["loss_classifier"].requires_grad  # connected to the graph: backward reaches the head
    sum(losses.values()).backward()
    head_grads = [p.grad for p in model.roi_heads.box_predictor.parameters()]
    assert all(g is not None and not g.any() for g in head_grads)  # a zero gradient, not a missing one
    if rpn:  # the RPN learns from the step
        assert any(p.grad is not None and p.grad.any() for p in model.rpn.parameters())
    assert all(not v.isnan().any() for v in losses.values())


@pytest.mark.parametrize("method", builtin_methods())
def test_a_batch_with_no_gt_and_no_proposals_skips_the_roi_loss(method: str) -> None:
    model = small_model()
    heads = enable_sampler(model, SAMPLERS[method](batch_size_per_image=8)).roi_heads.train()
    features, proposals, shapes, _ = heads_inputs()
    with EventStorage(3) as storage:
        _, losses = heads(features, [torch.zeros(0, 4)] * 2, shapes, _no_gt())
    _assert_no_roi_step(model, losses, rpn=False)
    if heads.sampler.readonly is not None:  # the mining statistics are zeros, the record an empty one
        assert float(heads.last_statistics["ohem_all_roi_loss"]) == 0.0
        assert storage.records["roi_mining"][0]["boxes"].shape == (0, 4)


@pytest.mark.parametrize("method", builtin_methods())
def test_a_training_step_on_images_without_objects_trains_the_rpn(method: str) -> None:
    model = small_model()
    enable_sampler(model, SAMPLERS[method](batch_size_per_image=8, bg_iou_low=0.1)).train()
    with EventStorage(3):  # bg_iou_low 0.1: no RPN proposal is a candidate without gt
        losses = model([torch.rand(3, 128, 128), torch.rand(3, 128, 128)], _no_gt())
    _assert_no_roi_step(model, losses, rpn=True)


def test_a_sampler_that_picks_nothing_skips_the_roi_loss() -> None:
    model = small_model()
    enable_sampler(model, PicksNothing()).train()
    images = [torch.rand(3, 128, 128)]
    losses = model(images, [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 60.0]]), "labels": torch.tensor([1])}])
    _assert_no_roi_step(model, losses, rpn=True)


# ------------------------------------------------------------------------------------ the plug-in surface
def test_installing_a_sampler_again_keeps_the_box_loss_and_the_box_target_normalisation() -> None:
    model = small_model()
    enable_sampler(model, SAMPLERS["heuristic"](), box_loss_beta=1.0)
    model.roi_heads.use_empirical_box_targets()
    norm = model.roi_heads.box_target_norm
    norm.mean.fill_(0.5)
    norm.std.fill_(0.2)
    enable_ohem(model)  # e.g. OHEM after a heuristic start
    heads = model.roi_heads
    assert heads.box_loss_beta == 1.0 and heads.box_target_norm is norm
    assert float(norm.mean[0, 0]) == 0.5 and float(norm.std[0, 0]) == pytest.approx(0.2)
    assert heads.box_coder.weights == (1.0, 1.0, 1.0, 1.0)  # raw deltas, as the norm expects
    assert "box_target_norm.mean" in heads.state_dict()  # saved in checkpoints as before
    enable_ohem(model, box_loss_beta=0.5)
    assert model.roi_heads.box_loss_beta == 0.5  # given: taken
    with pytest.raises(ConfigError, match=r"^box_loss_beta must be a finite number in \[0, 100\], got nan$"):
        enable_ohem(model, box_loss_beta=math.nan)


@register_sampler("test-rows")
class Rows(SamplerBase):
    """A sampler of yours returning ``rows`` (and ``weights``) whatever the RoIs; ``presample`` rows too
    (set on the installed copy: ``outputs``)."""

    def __post_init__(self) -> None:
        self.rows = self.weights = self.presample_rows = self.loss = None

    def presample(self, rois):
        return self.presample_rows(rois) if callable(self.presample_rows) else self.presample_rows

    def sample(self, rois, per_roi, iteration) -> Sample:
        rows = torch.tensor([0, 1, 2]) if self.rows is None else self.rows
        return Sample(rows, self.weights)

    def roi_loss(self, trained):
        return super().roi_loss(trained) if self.loss is None else self.loss(trained)


def _class_loss(trained):
    return {"loss_classifier": trained.class_logits.sum() * 0}


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        (
            dict(rows=torch.tensor([0, 1, -1])),
            r"the sample's rows must be in \[0, \d+\) \(the RoIs' rows\), got -1\.\.1",
        ),
        (dict(rows=torch.tensor([0, 10**6])), r"the sample's rows must be in \[0, \d+\) .*, got 0\.\.1000000$"),
        (dict(rows=torch.tensor([[0], [1]])), r"the sample's rows must be a 1-D tensor of integer row indices, got "),
        (
            dict(rows=torch.tensor([0.0, 1.0])),
            r"the sample's rows must be a 1-D tensor of integer row indices, got torch\.float32",
        ),
        (dict(weights=torch.ones(3, 1)), r"the sample's weights must be one per row, shape \(3,\), got \(3, 1\)$"),
        (
            dict(weights=torch.tensor([1.0, math.nan, 1.0])),
            r"the sample's weights must be finite numbers >= 0, got nan \(row 1\)$",
        ),
        (
            dict(weights=torch.tensor([1.0, 1.0, -2.0])),
            r"the sample's weights must be finite numbers >= 0, got -2\.0 \(row 2\)$",
        ),
        (dict(presample_rows=torch.tensor([-1])), r"the presample's rows must be in \[0, \d+\) .*, got -1\.\.-1$"),
        (
            dict(loss=_class_loss),
            r"roi_loss must return a dict with loss_classifier and loss_box_reg .*missing loss_box_",
        ),
    ],
    ids=[
        "row -1",
        "row beyond",
        "2-D rows",
        "float rows",
        "(K,1) weights",
        "NaN weight",
        "negative weight",
        "presample -1",
        "roi_loss without loss_box_reg",
    ],
)
def test_a_samplers_bad_output_is_one_line_naming_it(outputs: dict, message: str) -> None:
    model = small_model()
    heads = enable_sampler(model, Rows()).roi_heads.train()
    for name, value in outputs.items():
        setattr(heads.sampler, name, value)
    features, proposals, shapes, targets = heads_inputs()
    with pytest.raises(ValueError, match=r"^sampler test-rows: " + message) as caught:
        heads(features, proposals, shapes, targets)
    assert "\n" not in str(caught.value)


@register_sampler("test-failing-initialise")
class FailingInitialise(SamplerBase):
    def initialise(self, heads) -> None:
        with torch.no_grad():
            heads.box_predictor.cls_score.bias.fill_(7.0)  # changes a weight, then fails
        raise RuntimeError("initialise failed half-way")

    def sample(self, rois, losses, iteration) -> Sample:
        return Sample(torch.arange(3))


def test_a_failing_initialise_leaves_the_model_as_it_was() -> None:
    model = small_model()
    enable_sampler(model, SAMPLERS["heuristic"](), box_loss_beta=1.0)
    heads, before = model.roi_heads, {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="^initialise failed half-way$"):
        enable_sampler(model, FailingInitialise())
    assert model.roi_heads is heads and heads.box_loss_beta == 1.0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
