"""One config system: dataclasses, loaded from YAML, changed by dotted ``key=value`` overrides.

    cfg = load_config("demo", ["solver.lr=0.01", "sampler.method=heuristic"])

Unknown keys, values of the wrong type, choices outside a ``Literal`` and numbers outside a field's
range are errors that name the file (or override) and the key. Every default is written here, once,
with its range (``metadata=ge(1)``: at least 1; ``between(0, 1)``; ``FINITE``) and whether
``ohem train --resume`` may change it (``RESUMABLE``). A section checks its fields when
it is made, so a YAML file, a ``--set`` override and ``SamplerConfig(...)`` in code meet one rule.
A YAML file may start from others with ``base: other.yaml`` or ``base: [a.yaml, b.yaml]`` (paths
relative to the file, later ones overriding earlier ones) and change only what differs.

Rules between two fields (``model.min_size`` <= ``model.max_size``, a warm-up no longer than the run,
synthetic sizes within their limits) are a section's ``check_joint``: run when code builds a section,
and once at the end when a file and its overrides are loaded (an override may fix what the file set).
YAML is read without anchors or aliases (an alias can expand without bound) and without repeated keys.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ohem.recipes import find_recipe, looks_like_a_path
from ohem.util import one_line, regular_file


class ConfigError(ValueError):
    pass


class JointRuleError(ConfigError):
    """A rule between fields broken; ``keys`` are the dotted keys involved (to name who set them)."""

    def __init__(self, message: str, keys: tuple[str, ...]) -> None:
        super().__init__(message)
        self.keys = keys


def shown(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: an error message never quotes a huge value whole."""
    try:
        text = repr(value)
    except ValueError:  # an int of more than 4300 digits: Python refuses to write it out
        return f"an integer of {int(value.bit_length() * 0.30103):,} digits"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def cut(text: str, limit: int = 200) -> str:
    """``text`` (a name, a path) cut to ``limit`` characters for a message."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


class RefusedYAML(yaml.YAMLError):
    """YAML that ohem does not read (an anchor or alias, a repeated key), with the line it is on."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(f"line {mark.line + 1}: {problem}")


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without anchors and aliases (a "billion laughs" file of a few hundred bytes
    expands to gigabytes through them; no config needs them: ``base:`` shares settings) and without
    repeated keys in a mapping (YAML would silently keep the last)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise RefusedYAML("anchors and aliases (&name, *name) are not allowed in a config", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                earlier = first_line.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: SafeLoader's own error says so
                break
            if earlier != key_node.start_mark.line + 1:
                raise RefusedYAML(f"key {shown(key)} repeats the one on line {earlier}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str) -> Any:
    """``text`` read as YAML by ``StrictLoader`` (raises ``yaml.YAMLError``)."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506  # StrictLoader is a SafeLoader
    except ValueError as e:  # an int of more than 4300 digits: Python refuses to read it
        raise yaml.YAMLError(one_line(str(e))) from None


# Set while a file and its overrides are merged: the joint rules wait for the last override.
_JOINT_CHECKS_DEFERRED = contextvars.ContextVar("joint_checks_deferred", default=False)


@contextlib.contextmanager
def _joint_checks_deferred() -> typing.Iterator[None]:
    token = _JOINT_CHECKS_DEFERRED.set(True)
    try:
        yield
    finally:
        _JOINT_CHECKS_DEFERRED.reset(token)


# The model builders (ohem.models.build.BUILDERS, which a test keeps equal to this list). With an RPN:
# small | fasterrcnn_resnet50_fpn | fasterrcnn_resnet50_fpn_v2 | fasterrcnn_mobilenet_v3_large_fpn |
# maskrcnn_resnet50_fpn | faster_rcnn_vgg16 | faster_rcnn_vgg_cnn_m_1024. On external proposals
# (data.proposals): fast_rcnn_vgg16 | fast_rcnn_vgg_cnn_m_1024 | fast_rcnn_small | fast_rcnn_small_wide.
ModelName = Literal[
    "small",
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "maskrcnn_resnet50_fpn",
    "faster_rcnn_vgg16",
    "faster_rcnn_vgg_cnn_m_1024",
    "fast_rcnn_vgg16",
    "fast_rcnn_vgg_cnn_m_1024",
    "fast_rcnn_small",
    "fast_rcnn_small_wide",
]
Metric = Literal["voc", "voc07", "coco"]  # voc: area AP@0.5; voc07: 11-point (the paper's); coco: AP@[.5:.95]
EmptyImages = Literal["skip", "keep", "error"]
InvalidBoxes = Literal["fix", "error"]


def check_choice(name: str, value: Any, choices: Any) -> None:
    """Raise unless ``value`` is one of the ``Literal`` type ``choices``."""
    allowed = typing.get_args(choices)
    if value not in allowed:
        raise ConfigError(f"{name}: expected one of {', '.join(map(str, allowed))}, got {shown(value)}")


@dataclass(frozen=True)
class Range:
    """A field's valid numbers: finite, and within ``low`` and ``high`` where given (both included).
    None is valid where the field's type allows it; a list's numbers are checked one by one."""

    low: float | None = None
    high: float | None = None
    open: bool = False  # both ends excluded (a probability whose logarithm is taken)
    low_open: bool = False  # ``low`` excluded (a scale or deviation that divides)
    empty: bool = False  # an empty list is valid (solver.steps: no step)

    def __str__(self) -> str:
        if self.open:
            return f"in ({self.low}, {self.high})"
        if self.low_open:
            return f"> {self.low}" + ("" if self.high is None else f" and <= {self.high}")
        if self.low is not None and self.high is not None:
            return f"in [{self.low}, {self.high}]"
        if self.low is not None:
            return f">= {self.low}"
        return f"<= {self.high}" if self.high is not None else "a finite number"

    def check(self, name: str, value: Any) -> None:
        """Raise a one-line ``ConfigError`` naming ``name`` and ``value`` unless it is in range."""
        if isinstance(value, list):
            if not value and not self.empty:
                raise ConfigError(f"{name} must be a number {self} or a non-empty list of them, got []")
            for i, v in enumerate(value):
                self.check(f"{name}[{i}]", v)
            return
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not _finite(value):
            finite = "a finite number" + ("" if self.low is None and self.high is None else f" {self}")
            raise ConfigError(f"{name} must be {finite}, got {shown(value)}")
        below = self.low is not None and (value <= self.low if self.open or self.low_open else value < self.low)
        above = self.high is not None and (value >= self.high if self.open else value > self.high)
        if below or above:
            raise ConfigError(f"{name} must be {self}, got {shown(value)}")


def _finite(value: float) -> bool:
    """Whether ``value`` is finite as a float (an int beyond float range, 10**400, is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def ge(low: float) -> dict[str, Range]:
    """Field metadata: at least ``low``."""
    return {"range": Range(low)}


def between(low: float, high: float) -> dict[str, Range]:
    """Field metadata: from ``low`` to ``high``, both included."""
    return {"range": Range(low, high)}


def inside(low: float, high: float) -> dict[str, Range]:
    """Field metadata: strictly between ``low`` and ``high``."""
    return {"range": Range(low, high, open=True)}


def count(low: int, high: int = 10**9) -> dict[str, Range]:
    """Field metadata: a count from ``low`` to ``high`` (default 10^9: far beyond any run, and no count
    overflows the 64-bit integers torch computes with)."""
    return {"range": Range(low, high)}


def above(low: float, high: float | None = None) -> dict[str, Range]:
    """Field metadata: more than ``low`` (excluded), at most ``high``."""
    return {"range": Range(low, high, low_open=True)}


FINITE = {"range": Range()}  # field metadata: any finite number
SEED = {"range": Range(0, 2**64 - 1)}  # field metadata: a seed (torch's generators take 64 bits)
# Field metadata: ``ohem train --resume`` may give another value (``ohem.engine.run_folder``). Only for what
# changes how long the run goes on, what it evaluates, logs and draws on the way, and where it runs:
# never the training the checkpoint holds.
RESUMABLE = {"resume": "may change"}


class _Section:
    """Checks its fields on construction (``Literal`` choices, ``Range`` metadata), so code that
    builds a config by hand is held to the same rules as a YAML file."""

    SECTION: typing.ClassVar[str]  # the section's name in a config file

    def __post_init__(self) -> None:
        hints = _hints(type(self))  # type: ignore[arg-type]  # a class is hashable
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            name, value = f"{type(self).SECTION}.{f.name}", getattr(self, f.name)
            for choices in _literals(hints[f.name]):
                if value is not None or type(None) not in typing.get_args(hints[f.name]):
                    check_choice(name, value, choices)
            coerced = _coerce(value, hints[f.name], "", name)  # 64.5 for an int, 'false' for a bool: refused
            if coerced is not value:  # an int for a float, a tuple for a list: stored as YAML would give it
                setattr(self, f.name, value := coerced)
            if "range" in f.metadata and value is not None:
                f.metadata["range"].check(name, value)
        if not _JOINT_CHECKS_DEFERRED.get():
            self.check_joint()

    def check_joint(self) -> None:
        """Raise ``JointRuleError`` (one line naming both keys and values) where fields disagree."""


@dataclass
class DataConfig(_Section):
    SECTION = "data"
    dataset: Literal["synthetic", "voc", "coco"] = "synthetic"  # synthetic (the built-in benchmark) | voc | coco
    root: str | None = None  # voc: the VOCdevkit folder (or one VOC-layout tree); coco: the folder of annotations/
    # Splits. voc: "[YEAR:]NAME" parts joined by "+", e.g. "2007:trainval+2012:trainval";
    # coco: a name (annotations/instances_NAME.json, images in NAME/) or a JSON path. null: the usual ones.
    train_split: str | None = None  # null: train | 2007:trainval | train2017
    test_split: str | None = None  # null: test | 2007:test | val2017
    classes: list[str] | None = None  # voc: your own class list for a VOC-layout tree (default: the 20 VOC classes)
    image_dir: str | None = None  # coco: image folder when a split is a JSON path (default: its folder)
    use_difficult: bool = False  # voc: train on "difficult" objects too (evaluation always ignores them)
    empty_images: EmptyImages = "skip"  # training images without objects: skip | keep | error (evaluation keeps all)
    invalid_boxes: InvalidBoxes = "fix"  # boxes outside the image / empty: fix (clip or drop, counted, warned) | error
    # Images with more pixels are refused (the size read from the file's header, before decoding); null: no limit.
    # 50 M pixels: 600 MB as float RGB, far above any VOC/COCO image (COCO's largest is 640x640).
    max_image_pixels: int | None = field(default=50_000_000, metadata=ge(1))
    # voc/coco: turn each image as its EXIF orientation tag says (photos from phones and cameras). Off: the pixels
    # as stored, which VOC's and COCO's boxes refer to. (ohem detect always turns its photos upright.)
    exif_orientation: bool = False
    proposals: str | None = None  # Fast R-CNN: proposal file (.npz, docs/PROPOSALS.md) of the train split
    test_proposals: str | None = None  # ... and of the test split
    # first boxes of each image's proposals (file order = rank); null: all
    max_proposals: int | None = field(default=2000, metadata=count(1))
    # Proposal files are refused when an image holds more boxes, or the file more boxes in all, than these (read
    # from the .npz headers before any array is loaded); null: no limit. Per image 100 000 boxes is 50x selective
    # search's ~2000 and 1.6 MB; in all 1e9 boxes (16 GB of float32) is twice COCO train2017 at 4000 per image.
    max_proposal_boxes_per_image: int | None = field(default=100_000, metadata=ge(1))
    max_proposal_boxes: int | None = field(default=1_000_000_000, metadata=ge(1))
    hflip: bool = False  # training: mirror each image with probability 0.5
    aspect_grouping: bool = False  # training: batches of images of one orientation (wide or tall)
    # loader processes (0: in the training process); None: one per 4 cores, at most 4
    workers: int | None = field(default=None, metadata=count(0, 64) | RESUMABLE)
    num_train: int = field(default=1000, metadata=ge(1))  # synthetic only
    num_test: int = field(default=200, metadata=ge(1))  # synthetic only
    # synthetic: more images in a split are refused when the config is read; null: no limit. A split's
    # shuffled order and image names take memory by the image (8 bytes and ~60 bytes); 1 000 000 is 1000x
    # the default and ~70 MB, where 10^12 would try to allocate terabytes.
    max_synthetic_images: int | None = field(default=1_000_000, metadata=ge(1))
    image_size: int = field(default=160, metadata=count(128))  # synthetic only
    seed: int = field(default=0, metadata=SEED)  # synthetic: the data's seed, separate from the training seed
    # synthetic: target (the benchmark) | source (the look-alikes are the classes: a related task to pretrain on)
    synthetic_task: Literal["target", "source"] = "target"

    def check_joint(self) -> None:
        limit = self.max_synthetic_images
        for key, count in (("num_train", self.num_train), ("num_test", self.num_test)):
            if limit is not None and count > limit:
                raise JointRuleError(
                    f"data.{key} = {count:,} images, more than data.max_synthetic_images = {limit:,} allows "
                    "(raise it, or null for no limit)",
                    (f"data.{key}", "data.max_synthetic_images"),
                )
        pixels = self.image_size**2  # a synthetic image is drawn whole, image_size x image_size x 3 floats
        if self.max_image_pixels is not None and pixels > self.max_image_pixels:
            raise JointRuleError(
                f"data.image_size = {self.image_size:,} is {pixels:,} pixels per synthetic image, more than "
                f"data.max_image_pixels = {self.max_image_pixels:,} allows (raise it, or null for no limit)",
                ("data.image_size", "data.max_image_pixels"),
            )


@dataclass
class ModelConfig(_Section):
    SECTION = "model"
    name: ModelName = "small"  # the list: ModelName, above
    backbone_weights: str | None = None  # None (random init) | "imagenet" (torchvision) | path to a file
    trainable_backbone_layers: int | None = field(default=None, metadata=between(0, 5))  # torchvision models only
    init_weights: str | None = None  # train: start from this ohem checkpoint's (or state dict's) weights
    # init_weights: state-dict key prefixes not taken from it (they keep their fresh initialisation, and keys of
    # the file under them that the model lacks are ignored), e.g. [roi_heads.box_predictor] for a fresh predictor
    init_weights_skip: list[str] = field(default_factory=list)
    # shorter side; a list: one drawn per training image (multi-scale, +M)
    min_size: int | list[int] = field(default=160, metadata=count(1, 100_000))
    max_size: int = field(default=160, metadata=count(1, 100_000))
    # None: min_size (its last); a list: image pyramid (+M)
    test_min_size: int | list[int] | None = field(default=None, metadata=count(1, 100_000))
    # test NMS; None: the model's (torchvision 0.5, Fast R-CNN's VGG 0.3)
    box_nms_thresh: float | None = field(default=None, metadata=between(0, 1))
    box_voting: bool = False  # +B: iterative box regression with weighted voting at test time
    # Smooth-L1 beta of the box loss in every RoI head's passes: torchvision's 1/9; Fast R-CNN's sigma = 1 is beta 1.
    box_loss_beta: float = field(default=1 / 9, metadata=between(0, 100))
    # Box regression targets: fixed (the box coder's weights 10, 10, 5, 5) | empirical (Fast R-CNN: per-class
    # mean/std of the training set's fg RoI targets, measured once at the start of a run; proposal-file models)
    box_target_norm: Literal["fixed", "empirical"] = "fixed"
    # Input pixels: x * pixel_scale (1: [0, 1]; 255: Caffe's 0-255), channels in channel_order, then
    # (x - image_mean) / image_std. None: the model's own mean/std (torchvision's ImageNet RGB for VGG).
    image_mean: list[float] | None = field(default=None, metadata=FINITE)
    image_std: list[float] | None = field(default=None, metadata=above(0))
    pixel_scale: float = field(default=1.0, metadata=above(0, 65535))
    channel_order: Literal["RGB", "BGR"] = "RGB"
    rpn_batch_size_per_image: int = field(default=256, metadata=count(1))  # anchors sampled per image for the RPN loss
    rpn_pre_nms_top_n_train: int = field(default=1000, metadata=count(1))
    # RoIs per image handed to the RoI heads (what OHEM mines)
    rpn_post_nms_top_n_train: int = field(default=400, metadata=count(1))
    rpn_pre_nms_top_n_test: int = field(default=600, metadata=count(1))
    rpn_post_nms_top_n_test: int = field(default=300, metadata=count(1))
    box_score_thresh: float = field(default=0.01, metadata=between(0, 1))  # low: AP sees the whole P/R curve
    box_detections_per_img: int = field(default=100, metadata=count(1))

    def check_joint(self) -> None:
        # The resize fits the shorter side to min_size unless the longer one would pass max_size: a
        # min_size above max_size is never reached, so it is a mistake (e.g. a max_size left at 160).
        sizes = self.min_size if isinstance(self.min_size, list) else [self.min_size]
        for i, size in enumerate(sizes):
            if size > self.max_size:
                key = f"model.min_size[{i}]" if isinstance(self.min_size, list) else "model.min_size"
                raise JointRuleError(
                    f"{key} = {size} must be <= model.max_size = {self.max_size} (the longer side's limit)",
                    ("model.min_size", "model.max_size"),
                )
        for key, values in (("image_mean", self.image_mean), ("image_std", self.image_std)):
            if values is not None and len(values) != 3:  # one per channel: torch would fail at the first step
                raise JointRuleError(
                    f"model.{key} must hold 3 numbers (R, G, B), got {shown(values)}", (f"model.{key}",)
                )


@dataclass
class SamplerConfig(_Section):
    """Which RoIs (and anchors) each training step learns from. ``enable_ohem`` and
    ``enable_heuristic_sampling`` take this object; their keyword arguments are its fields."""

    SECTION = "sampler"
    # a name in ohem.mining.SAMPLERS (docs/SAMPLERS.md): ohem | heuristic (Fast R-CNN's fg-fraction rule; with
    # 512 RoIs, fg 0.25, bg_iou_low 0: torchvision's) | libra | ohem-presample | ohem-stratified | pisa | is-mix
    # | ohem-prior
    method: Literal[
        "ohem", "heuristic", "libra", "ohem-presample", "ohem-stratified", "pisa", "is-mix", "ohem-prior"
    ] = "ohem"
    batch_size_per_image: int = field(default=64, metadata=count(1, 100_000))  # B / N: RoIs trained on per image
    # the most foreground per image: heuristic, libra, ohem-stratified, pisa (and ohem before ohem_start)
    fg_fraction: float = field(default=0.25, metadata=between(0, 1))
    # None: the sampler's own (heuristic 0.1; ohem and the others 0.0: docs/PAPER.md)
    bg_iou_low: float | None = field(default=None, metadata=between(0, 1))
    # "ohem:" keys below apply to ohem-presample and ohem-prior too; nms_*, mining_loss to is-mix too; the
    # read-only pass's (max_rois_per_chunk, readonly_*) to ohem-stratified and is-mix too
    nms_iou: float | None = field(default=0.7, metadata=between(0, 1))  # ohem: NMS among RoIs by loss; None = off
    mining_loss: Literal["cls+box", "cls"] = "cls+box"  # ohem: cls+box (paper) | cls (mmdetection)
    nms_per_label: bool = False  # ohem: NMS only among RoIs of one label (the authors' code)
    max_rois_per_chunk: int = field(default=1024, metadata=count(1))  # ohem: read-only pass memory bound
    readonly_dropout: bool = True  # ohem: dropout stays on in the read-only pass (authors' code)
    # ohem: the read-only pass's numerics: tf32 (float32 with TF32 matmuls/convolutions on CUDA; on the CPU
    # the same as fp32) | fp32 | bf16 / fp16 (autocast). The trainable pass keeps train.amp's precision.
    readonly_precision: Literal["fp32", "tf32", "bf16", "fp16"] = "tf32"
    # ohem: the first iteration that mines; before it, a random sample of fg_fraction foreground and
    # background from bg_iou_low. Not in the paper (which starts from ImageNet weights): a from-scratch
    # box head can collapse under mining from the first step (docs/BENCHMARKS.md, "When OHEM pays").
    ohem_start: int = field(default=0, metadata=count(0))
    # ohem-presample: the read-only pass runs on presample_factor x batch_size_per_image random RoIs per image
    presample_factor: int = field(default=4, metadata=count(1, 1000))
    libra_bins: int = field(default=3, metadata=count(1, 100))  # libra: IoU bins the background is drawn equally from
    # libra: background below this IoU is drawn at random, not by bin (0: IoU 0 exactly); None: no such floor
    libra_floor_thr: float | None = field(default=None, metadata=between(0, 1))
    # libra: the share of the background drawn from below libra_floor_thr
    libra_floor_fraction: float = field(default=0.0, metadata=between(0, 1))
    rpn_ohem: bool = False  # OHEM for the RPN too: loss-ranked anchors with NMS instead of 256 random 1:1
    # rpn_ohem: NMS among anchors by loss; None = off
    rpn_nms_iou: float | None = field(default=0.7, metadata=between(0, 1))
    # pisa (Cao et al. 2020; mmdetection's defaults): loss weight ((1 - bias) u + bias) ** k of a RoI of
    # hierarchical rank u in (0, 1], positives by IoU (ISR-P), negatives by score (ISR-N)
    isr_p_k: float = field(default=2.0, metadata=between(0, 100))
    isr_p_bias: float = field(default=0.0, metadata=between(0, 1))
    isr_n_k: float = field(default=0.5, metadata=between(0, 100))
    isr_n_bias: float = field(default=0.0, metadata=between(0, 1))
    isr_n_nms_iou: float = field(default=0.5, metadata=between(0, 1))  # pisa: negatives' groups for their ranks
    # pisa: loss (the paper: each part's weighted cls loss equals its unweighted one) | count (mean weight 1)
    isr_normalise: Literal["loss", "count"] = "loss"
    carl: bool = True  # pisa: add CARL, the box loss of positives weighted by their class score (the paper)
    carl_k: float = field(default=1.0, metadata=between(0, 100))  # pisa: CARL's weight ((1 - bias) score + bias) ** k
    carl_bias: float = field(default=0.2, metadata=between(0, 1))
    # is-mix: weight of the uniform part of p_i = (1 - lambda) loss_i / sum(loss) + lambda / N (1: random)
    is_lambda: float = field(default=0.5, metadata=between(0, 1))
    # is-mix: constant | decay (lambda from 1 at iteration 0 linearly to is_lambda at is_lambda_decay_iterations)
    is_lambda_schedule: Literal["constant", "decay"] = "constant"
    is_lambda_decay_iterations: int = field(default=1000, metadata=count(1))
    is_weights: Literal["unbiased", "none"] = "unbiased"  # is-mix: 1 / (N p_i) per draw | none (weight 1)
    prior_bg: float = field(default=0.99, metadata=inside(0, 1))  # ohem-prior: P(background) at initialisation

    def check_joint(self) -> None:
        # Every model's RoI head counts IoU >= 0.5 as foreground and below as background (torchvision's and Fast
        # R-CNN's box_bg_iou_thresh = box_fg_iou_thresh = 0.5); a floor at or above it leaves no background.
        if self.bg_iou_low is not None and self.bg_iou_low >= HEAD_BG_IOU:
            raise JointRuleError(bg_floor_message(self.bg_iou_low, HEAD_BG_IOU), ("sampler.bg_iou_low",))


HEAD_BG_IOU = 0.5  # the RoI heads' background/foreground IoU threshold (ohem.models; enable_sampler checks yours)


def bg_floor_message(bg_iou_low: float, head_bg_iou: float) -> str:
    return (
        f"sampler.bg_iou_low = {bg_iou_low} must be below the RoI head's background/foreground IoU threshold "
        f"{head_bg_iou} (background is IoU in [bg_iou_low, {head_bg_iou}): none would be left to train on)"
    )


@dataclass
class SolverConfig(_Section):
    SECTION = "solver"
    iterations: int = field(default=1500, metadata=count(1) | RESUMABLE)
    images_per_batch: int = field(default=2, metadata=count(1, 4096))  # N: images per forward pass
    # forward/backward passes per SGD step (the authors' 1 image x 2 = N 2)
    accumulate_steps: int = field(default=1, metadata=count(1, 1024))
    lr: float = field(default=0.02, metadata=between(0, 10))
    momentum: float = field(default=0.9, metadata=between(0, 1))
    weight_decay: float = field(default=5e-4, metadata=between(0, 1))
    bias_lr_factor: float = field(
        default=1.0, metadata=between(0, 100)
    )  # biases train at lr x this (Caffe's Fast R-CNN: 2)
    # None: weight_decay (the authors' OHEM nets: 0 on fc biases)
    bias_weight_decay: float | None = field(default=None, metadata=between(0, 1))
    # which biases bias_weight_decay applies to: all | roi_heads (fc6, fc7, cls, bbox: the OHEM prototxts;
    # conv biases keep weight_decay)
    bias_weight_decay_on: Literal["all", "roi_heads"] = "all"
    warmup_iterations: int = field(default=100, metadata=count(0))
    warmup_factor: float = field(default=0.001, metadata=between(0, 1))
    # lr x gamma at each (in order); [] is no step; a negative step is a typo (the lr drops before training starts)
    steps: list[int] = field(default_factory=lambda: [1000, 1300], metadata={"range": Range(0, empty=True)})
    gamma: float = field(default=0.1, metadata=between(0, 1))

    def __post_init__(self) -> None:
        super().__post_init__()
        # In order; a repeated step is allowed (gamma twice there): ohem bench's budget scaling can merge two.
        if any(later < earlier for earlier, later in zip(self.steps, self.steps[1:])):
            raise ConfigError(f"solver.steps must be in increasing order, got {shown(self.steps)}")

    def check_joint(self) -> None:
        # Equal is allowed: a run may stop where its warm-up ends (and be resumed further with --resume);
        # longer never reaches solver.lr. Scaled by ohem bench, a warm-up <= the run stays so.
        if self.warmup_iterations > self.iterations:
            raise JointRuleError(
                f"solver.warmup_iterations = {self.warmup_iterations} must be <= solver.iterations = "
                f"{self.iterations} (a longer warm-up never reaches solver.lr)",
                ("solver.warmup_iterations", "solver.iterations"),
            )


@dataclass
class TrainConfig(_Section):
    SECTION = "train"
    seed: int = field(default=0, metadata=SEED)
    device: str = field(default="auto", metadata=RESUMABLE)  # auto | cpu | cuda | cuda:N
    amp: Literal["none", "bf16", "fp16"] = (
        "none"  # none | bf16 | fp16 (CUDA, with a grad scaler): mixed precision for the whole step
    )
    eval_every: int = field(default=500, metadata=count(0) | RESUMABLE)  # 0: only at the end
    eval_metric: Metric = "voc"  # voc (area AP@0.5) | voc07 (11-point, the paper's) | coco (pycocotools)
    checkpoint_every: int = field(default=500, metadata=count(0) | RESUMABLE)
    # checkpoints kept: 1 = checkpoint_last.pt only; N > 1 also keeps the N - 1 most recent of those
    # written every checkpoint_every steps as checkpoint_iterNNNNNN.pt (older ones are deleted)
    keep_checkpoints: int = field(default=1, metadata=count(1) | RESUMABLE)
    # torch CPU threads; None = torch's default
    num_threads: int | None = field(default=None, metadata=count(1, 1024) | RESUMABLE)
    # at each evaluation: mean loss over all RoIs of this many train images
    roi_loss_images: int = field(default=0, metadata=count(0) | RESUMABLE)
    # ohem: iterations per record of what was mined (mining.jsonl)
    mining_log_every: int = field(default=50, metadata=count(1) | RESUMABLE)
    # torchrun: compare the processes' weights every N steps (0: never)
    check_sync_every: int = field(default=0, metadata=count(0) | RESUMABLE)
    vis_images: int = field(default=4, metadata=count(0, 100) | RESUMABLE)  # test images drawn in detections.png
    vis_score_thresh: float = field(default=0.5, metadata=between(0, 1) | RESUMABLE)
    # CUDA: synchronize to time the mining every N iterations (a sync stalls the queue)
    timing_every: int = field(default=10, metadata=count(1) | RESUMABLE)


@dataclass
class TestConfig(_Section):
    """Evaluation, ``ohem eval``, ``ohem detect`` and the all-RoI loss measure."""

    SECTION = "test"
    __test__ = False  # a class named Test* that pytest must not collect
    # images per forward pass at test time
    images_per_batch: int = field(default=4, metadata=count(1, 4096) | RESUMABLE)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    test: TestConfig = field(default_factory=TestConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file (and its ``base:`` chain), then each ``section.key=value``. ``path``
    may be a shipped recipe's name (``demo``, ``voc07_vgg16_ohem``: ``ohem.recipes``)."""
    cfg, set_by = Config(), SetBy()
    with _joint_checks_deferred():
        if path is not None:
            if not looks_like_a_path(path):
                found = find_recipe(path)
                if found is None:
                    raise ConfigError(
                        f"config {cut(str(path))}: no such file, nor a recipe of that name (ohem recipe --list)"
                    )
                path = found
            raw = read_yaml(Path(path))
            cfg = merge(cfg, raw, source=f"config {path}")
            set_by.record(raw, f"config {path}")
        cfg = _apply_each(cfg, overrides, set_by)
    check_joint(cfg, set_by)
    return cfg


class SetBy:
    """Which source (``config FILE``, ``override 'KEY=V'``) gave each dotted key last, so that a joint
    rule broken after all of them are merged names the one that broke it."""

    def __init__(self) -> None:
        self._source: dict[str, tuple[int, str]] = {}

    def record(self, raw: dict[str, Any], source: str, prefix: str = "") -> None:
        for key, value in raw.items():
            if isinstance(value, dict):
                self.record(value, source, f"{prefix}{key}.")
            else:
                self._source[f"{prefix}{key}"] = (len(self._source), source)

    def last_of(self, keys: tuple[str, ...], default: str) -> str:
        """The source that set one of ``keys`` last (a later setting is the likelier mistake)."""
        found = [self._source[k] for k in keys if k in self._source]
        return max(found)[1] if found else default


def check_joint(cfg: Config, set_by: SetBy | None = None, source: str = "config") -> None:
    """Every section's joint rules; a broken one is a ``ConfigError`` naming the source that set it."""
    for f in dataclasses.fields(cfg):
        try:
            getattr(cfg, f.name).check_joint()
        except JointRuleError as e:
            where = set_by.last_of(e.keys, source) if set_by else source
            raise ConfigError(f"{where}: {e}") from None


MAX_BASES, MAX_BASE_DEPTH, MAX_BASE_READS = 16, 16, 64  # base: files per file, chain depth, files per config


def read_yaml(path: Path, seen: tuple[Path, ...] = (), reads: list[Path] | None = None) -> dict[str, Any]:
    """The sections of a config file, with its ``base:`` file's sections under them. ``reads``: the files read
    so far for this config (at most ``MAX_BASE_READS``: a fan-out of bases repeats files exponentially)."""
    reads = [] if reads is None else reads
    where = f"config {cut(str(path))}"
    reads.append(path)
    if len(reads) > MAX_BASE_READS:
        raise ConfigError(
            f"config {cut(str(reads[0]))}: its 'base' chain reads more than {MAX_BASE_READS} files (at {path}); "
            "a chain whose files name several bases reads them again and again"
        )
    try:  # a FIFO or device would block and a folder cannot be read: refused before opening
        raw = parse_yaml(regular_file(path, "config").read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{where}: cannot read: no such file") from None
    except OSError as e:
        raise ConfigError(f"{where}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where}: not UTF-8 text: {e.reason} at byte {e.start}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to read") from None
    except RefusedYAML as e:
        raise ConfigError(f"{where}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {one_line(str(e))}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of sections, got {type(raw).__name__}")
    bases = raw.pop("base", None)
    if bases is None:
        return raw
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{where}: 'base' must be a file path or a list of them, got {shown(bases)}")
    if len(bases) > MAX_BASES:
        raise ConfigError(f"{where}: 'base' lists {len(bases):,} files, at most {MAX_BASES}")
    if len(seen) + 1 >= MAX_BASE_DEPTH:
        raise ConfigError(f"{where}: 'base' chain more than {MAX_BASE_DEPTH} files deep (from {seen[0]})")
    merged: dict[str, Any] = {}
    for base in bases:  # later bases override earlier ones; the file itself overrides them all
        try:
            base_path = (path.parent / base).resolve()
        except (RuntimeError, OSError) as e:  # a symbolic link loop
            raise ConfigError(f"{where}: 'base' {shown(base)}: cannot resolve ({one_line(str(e))})") from None
        if base_path in seen or base_path == path.resolve():
            raise ConfigError(f"{where}: 'base' chain loops back to {base_path}")
        merged = _deep_update(merged, read_yaml(base_path, (*seen, path.resolve()), reads))
    return _deep_update(merged, raw)


def _deep_update(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        both_maps = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _deep_update(out[key], value) if both_maps else value
    return out


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """``cfg`` with each dotted ``section.key=value`` (value parsed as YAML) applied in order; the
    joint rules are checked once all are applied."""
    set_by = SetBy()
    with _joint_checks_deferred():
        cfg = _apply_each(cfg, overrides, set_by)
    check_joint(cfg, set_by)
    return cfg


def _apply_each(cfg: Config, overrides: list[str] | tuple[str, ...], set_by: SetBy) -> Config:
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {shown(item)}: expected section.key=value")
        nested: dict[str, Any] = {}
        node = nested
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        try:
            node[leaf] = parse_yaml(value) if value.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {shown(item)}: value is not valid YAML ({one_line(str(e))})") from None
        cfg = merge(cfg, nested, source=f"override {shown(item)}")
        set_by.record(nested, f"override {shown(item)}")
    return cfg


def config_from_dict(raw: dict[str, Any], source: str = "checkpoint") -> Config:
    """The config a checkpoint or run folder records. Its fields are checked one by one; the joint rules
    are not: the run happened, and a rule added since must not lock its checkpoint out of eval."""
    with _joint_checks_deferred():
        return merge(Config(), raw, source=source)


def merge(obj: Any, raw: dict[str, Any], source: str, prefix: str = "") -> Any:
    """A copy of dataclass ``obj`` with the values of ``raw`` checked against its field types."""
    hints = _hints(type(obj))  # type: ignore[arg-type]  # a class is hashable
    changes = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if key not in hints:
            known = ", ".join(sorted(hints))
            raise ConfigError(f"{source}: unknown key {shown(name)} (known here: {known})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{_at(source)}{name!r} must be a mapping, got {shown(value)}")
            changes[key] = merge(current, value, source, prefix=f"{name}.")
        else:
            changes[key] = _coerce(value, hints[key], source, name)
    try:  # a section checks its fields' ranges when made: say which file or override gave the value
        return dataclasses.replace(obj, **changes)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return {f.name: typing.get_type_hints(cls)[f.name] for f in dataclasses.fields(cls)}


def _literals(hint: Any) -> list[Any]:
    """The ``Literal`` types in ``hint`` (itself, or a member of its union)."""
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    return [o for o in options if typing.get_origin(o) is Literal]


def _is_union(hint: Any) -> bool:
    return isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union


def _coerce(value: Any, hint: Any, source: str, name: str) -> Any:
    args = typing.get_args(hint)
    if _is_union(hint):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, source, name)
            except ConfigError:
                continue
        raise ConfigError(f"{_at(source)}{name!r} must be {_describe(hint)}, got {shown(value)}")
    if typing.get_origin(hint) is Literal:
        if value in args and isinstance(value, str):
            return value
        raise ConfigError(f"{_at(source)}{name!r} must be one of {', '.join(map(str, args))}, got {shown(value)}")
    if typing.get_origin(hint) is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{_at(source)}{name!r} must be a list, got {shown(value)}")
        return [_coerce(v, args[0], source, f"{name}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an int of more than ~309 digits
                raise ConfigError(f"{_at(source)}{name!r} must be a finite number, got {shown(value)}") from None
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{_at(source)}{name!r} must be {_describe(hint)}, got {shown(value)}")


def _at(source: str) -> str:
    """A message's ``SOURCE: `` prefix; none for a section built in code (its key names the value)."""
    return f"{source}: " if source else ""


def _describe(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")
