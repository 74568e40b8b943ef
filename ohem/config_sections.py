"""The config's sections: typed (pydantic dataclasses), checked when made (types, ranges, no unknown key;
NaN and infinity refused), so a YAML file, a ``--set`` override and ``DataConfig(...)`` in code meet one
rule. Every default is written here, once, with its range and whether ``ohem train --resume`` may change it
(``RESUMABLE``); the text under each field is its documentation (docs/CONFIG.md is generated from it). The
``sampler`` section is the chosen sampler itself: each sampler is a dataclass of its own settings
(``ohem.mining.sampler``). Loading: ``ohem.config``.
"""

from __future__ import annotations

import contextvars
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic.dataclasses import dataclass as section
from pydantic_core import PydanticCustomError

from ohem.config_files import ConfigError, shown

if TYPE_CHECKING:
    from ohem.mining.sampler import SamplerBase

# Strict: 64.5 is not an int, 'false' not a bool; NaN and infinity refused; an unknown key is an error.
STRICT = ConfigDict(
    extra="forbid", strict=True, allow_inf_nan=False, validate_assignment=True, use_attribute_docstrings=True
)
RESUMABLE: dict[str, Any] = {"resume": True}  # ``ohem train --resume`` may give another value (ohem.engine.run_folder)


def between(low: float, high: float, resumable: bool = False) -> Any:
    """Field constraint: from ``low`` to ``high``, both included."""
    return Field(ge=low, le=high, json_schema_extra=RESUMABLE if resumable else None)


def count(low: int = 1, high: int = 10**9, resumable: bool = False) -> Any:
    """A count from ``low`` to ``high`` (default 10^9: far beyond any run, and within the 64-bit
    integers torch computes with)."""
    return between(low, high, resumable)


Fraction = Annotated[float, between(0, 1)]
Count = Annotated[int, count()]
Seed = Annotated[int, between(0, 2**64 - 1)]  # torch's generators take 64 bits
Size = Annotated[int, count(1, 100_000)]  # pixels

# The model builders (ohem.models.build.BUILDERS, which a test keeps equal to this list).
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


# Off while a checkpoint's config is read: the run happened, and a rule added since must not lock it out.
_JOINT_RULES = contextvars.ContextVar("joint_rules", default=True)


def joint_rule(message: str, *keys: str) -> PydanticCustomError:
    """A broken rule between fields; ``keys`` name them, so that the error names who set them last."""
    return PydanticCustomError("joint", message, {"keys": keys})


def joint_rules_on() -> bool:
    return _JOINT_RULES.get()


@section(config=STRICT)
class DataConfig:
    dataset: Literal["synthetic", "voc", "coco"] = "synthetic"
    """synthetic (the built-in benchmark) | voc | coco"""
    root: str | None = None
    """voc: the VOCdevkit folder (or one VOC-layout tree); coco: the folder of annotations/"""
    train_split: str | None = None
    """voc: "[YEAR:]NAME" parts joined by "+" (2007:trainval+2012:trainval); coco: a name
    (annotations/instances_NAME.json, images in NAME/) or a JSON path. null: train | 2007:trainval | train2017"""
    test_split: str | None = None
    """as train_split; null: test | 2007:test | val2017"""
    classes: list[str] | None = None
    """voc: your own class list for a VOC-layout tree (default: the 20 VOC classes)"""
    image_dir: str | None = None
    """coco: image folder when a split is a JSON path (default: its folder)"""
    use_difficult: bool = False
    """voc: train on "difficult" objects too (evaluation always ignores them)"""
    empty_images: EmptyImages = "skip"
    """training images without objects: skip | keep | error (evaluation keeps all)"""
    invalid_boxes: InvalidBoxes = "fix"
    """boxes outside the image or empty: fix (clip or drop, counted, warned) | error"""
    max_image_pixels: Annotated[int | None, count(1, 10**12)] = 50_000_000
    """images with more pixels are refused, read from the file's header before decoding (50 M: 600 MB as
    float RGB, far above any VOC/COCO image); null: no limit"""
    exif_orientation: bool = False
    """voc/coco: turn each image as its EXIF orientation tag says; off: the pixels as stored, which VOC's
    and COCO's boxes refer to (ohem detect always turns its photos upright)"""
    proposals: str | None = None
    """Fast R-CNN: proposal file (.npz, docs/PROPOSALS.md) of the train split"""
    test_proposals: str | None = None
    """... and of the test split"""
    max_proposals: Annotated[int | None, count()] = 2000
    """first boxes of each image's proposals (file order = rank); null: all"""
    max_proposal_boxes_per_image: Annotated[int | None, count(1, 10**12)] = 100_000
    """proposal files with more boxes in an image are refused, read from the .npz headers (50x selective
    search's ~2000); null: no limit"""
    max_proposal_boxes: Annotated[int | None, count(1, 10**15)] = 1_000_000_000
    """... or with more boxes in all (1e9: 16 GB of float32, twice COCO train2017 at 4000 per image)"""
    hflip: bool = False
    """training: mirror each image with probability 0.5"""
    aspect_grouping: bool = False
    """training: batches of images of one orientation (wide or tall)"""
    workers: Annotated[int | None, count(0, 64, resumable=True)] = None
    """loader processes (0: in the training process); null: one per 4 cores, at most 4"""
    num_train: Annotated[int, count(1, 10**15)] = 1000
    """synthetic: training images (at most max_synthetic_images)"""
    num_test: Annotated[int, count(1, 10**15)] = 200
    """synthetic: test images"""
    max_synthetic_images: Annotated[int | None, count()] = 1_000_000
    """synthetic: more images in a split are refused when the config is read (a split's order and names
    take ~70 bytes an image); null: no limit"""
    image_size: Annotated[int, count(128)] = 160
    """synthetic: image side in pixels"""
    seed: Seed = 0
    """synthetic: the data's seed, separate from the training seed"""
    synthetic_task: Literal["target", "source"] = "target"
    """synthetic: target (the benchmark) | source (the look-alikes are the classes: a related task to
    pretrain on)"""

    @model_validator(mode="after")
    def _sizes(self) -> DataConfig:
        limit = self.max_synthetic_images
        for key, images in (("num_train", self.num_train), ("num_test", self.num_test)):
            if joint_rules_on() and limit is not None and images > limit:
                raise joint_rule(
                    f"data.{key} = {images:,} images, more than data.max_synthetic_images = {limit:,} allows "
                    "(raise it, or null for no limit)",
                    f"data.{key}",
                    "data.max_synthetic_images",
                )
        pixels = self.image_size**2  # a synthetic image is drawn whole, image_size x image_size x 3 floats
        if joint_rules_on() and self.max_image_pixels is not None and pixels > self.max_image_pixels:
            raise joint_rule(
                f"data.image_size = {self.image_size:,} is {pixels:,} pixels per synthetic image, more than "
                f"data.max_image_pixels = {self.max_image_pixels:,} allows (raise it, or null for no limit)",
                "data.image_size",
                "data.max_image_pixels",
            )
        return self


@section(config=STRICT)
class ModelConfig:
    name: ModelName = "small"
    """with an RPN: small, fasterrcnn_resnet50_fpn[_v2], fasterrcnn_mobilenet_v3_large_fpn,
    maskrcnn_resnet50_fpn, faster_rcnn_vgg16, faster_rcnn_vgg_cnn_m_1024; on proposal files (data.proposals):
    fast_rcnn_vgg16, fast_rcnn_vgg_cnn_m_1024, fast_rcnn_small, fast_rcnn_small_wide"""
    backbone_weights: str | None = None
    """null (random init) | imagenet (torchvision's weights API) | path to a local state-dict file"""
    trainable_backbone_layers: Annotated[int | None, between(0, 5)] = None
    """torchvision models only"""
    init_weights: str | None = None
    """train: start from this ohem checkpoint's (or state dict's) weights"""
    init_weights_skip: list[str] = field(default_factory=list)
    """init_weights: state-dict key prefixes left at their fresh initialisation, e.g.
    [roi_heads.box_predictor] for a fresh predictor"""
    min_size: Size | Annotated[list[Size], Field(min_length=1)] = 160
    """shorter side; a list: one drawn per training image (multi-scale, +M)"""
    max_size: Size = 160
    """longer side's limit"""
    test_min_size: Size | Annotated[list[Size], Field(min_length=1)] | None = None
    """null: min_size (its last); a list: image pyramid (+M)"""
    box_nms_thresh: Fraction | None = None
    """test NMS; null: the model's (torchvision 0.5, Fast R-CNN's VGG 0.3)"""
    box_voting: bool = False
    """+B: iterative box regression with weighted voting at test time"""
    box_loss_beta: Annotated[float, between(0, 100)] = 1 / 9
    """smooth-L1 beta of the box loss in every RoI head pass: torchvision's 1/9; Fast R-CNN's sigma 1 is 1"""
    box_target_norm: Literal["fixed", "empirical"] = "fixed"
    """fixed (the box coder's weights 10, 10, 5, 5) | empirical (Fast R-CNN: per-class mean/std of the
    training set's fg RoI targets, measured at the start of a run; proposal-file models)"""
    image_mean: Annotated[list[Annotated[float, between(-65535, 65535)]], Field(min_length=3, max_length=3)] | None = (
        None
    )
    """input pixels: x * pixel_scale, channels in channel_order, then (x - image_mean) / image_std (R, G, B);
    null: the model's own (torchvision's ImageNet RGB for VGG)"""
    image_std: Annotated[list[Annotated[float, Field(gt=0, le=65535)]], Field(min_length=3, max_length=3)] | None = None
    """as image_mean"""
    pixel_scale: Annotated[float, Field(gt=0, le=65535)] = 1.0
    """1: pixels in [0, 1]; 255: Caffe's 0-255"""
    channel_order: Literal["RGB", "BGR"] = "RGB"
    """RGB | BGR (Caffe)"""
    rpn_batch_size_per_image: Count = 256
    """anchors sampled per image for the RPN loss"""
    rpn_pre_nms_top_n_train: Count = 1000
    """RPN: boxes per level before NMS, training"""
    rpn_post_nms_top_n_train: Count = 400
    """RoIs per image handed to the RoI heads (what OHEM mines)"""
    rpn_pre_nms_top_n_test: Count = 600
    """RPN: boxes per level before NMS, test"""
    rpn_post_nms_top_n_test: Count = 300
    """RoIs per image at test time"""
    rpn_ohem: bool = False
    """OHEM for the RPN too: loss-ranked anchors with NMS instead of 256 random 1:1 (beyond the paper)"""
    rpn_nms_iou: Fraction | None = 0.7
    """rpn_ohem: NMS among anchors by loss; null: off"""
    box_score_thresh: Fraction = 0.01
    """detections below this score are dropped (low: AP sees the whole P/R curve)"""
    box_detections_per_img: Count = 100
    """detections kept per image"""

    @model_validator(mode="after")
    def _sizes(self) -> ModelConfig:
        # The resize fits the shorter side to min_size unless the longer one would pass max_size: a
        # min_size above max_size is never reached, so it is a mistake (e.g. a max_size left at 160).
        sizes = self.min_size if isinstance(self.min_size, list) else [self.min_size]
        for i, size in enumerate(sizes):
            if joint_rules_on() and size > self.max_size:
                key = f"model.min_size[{i}]" if isinstance(self.min_size, list) else "model.min_size"
                raise joint_rule(
                    f"{key} = {size} must be <= model.max_size = {self.max_size} (the longer side's limit)",
                    "model.min_size",
                    "model.max_size",
                )
        return self


@section(config=STRICT)
class SolverConfig:
    iterations: Annotated[int, count(resumable=True)] = 1500
    """SGD steps"""
    images_per_batch: Annotated[int, count(1, 4096)] = 2
    """N: images per forward pass"""
    accumulate_steps: Annotated[int, count(1, 1024)] = 1
    """forward/backward passes per SGD step (the authors' 1 image x 2 = N 2)"""
    lr: Annotated[float, between(0, 10)] = 0.02
    """learning rate after the warm-up"""
    momentum: Fraction = 0.9
    """SGD momentum"""
    weight_decay: Fraction = 5e-4
    """L2 weight decay"""
    bias_lr_factor: Annotated[float, between(0, 100)] = 1.0
    """biases train at lr x this (Caffe's Fast R-CNN: 2)"""
    bias_weight_decay: Fraction | None = None
    """null: weight_decay (the authors' OHEM nets: 0 on fc biases)"""
    bias_weight_decay_on: Literal["all", "roi_heads"] = "all"
    """which biases bias_weight_decay applies to: all | roi_heads (fc6, fc7, cls, bbox: the OHEM prototxts;
    conv biases keep weight_decay)"""
    warmup_iterations: Annotated[int, count(0)] = 100
    """linear warm-up from lr x warmup_factor"""
    warmup_factor: Fraction = 0.001
    """the warm-up's first lr, as a share of lr"""
    steps: list[Annotated[int, count(0)]] = field(default_factory=lambda: [1000, 1300])
    """lr x gamma at each (in increasing order; a step may repeat); [] is no step"""
    gamma: Fraction = 0.1
    """lr factor at each step"""

    @field_validator("steps")
    @classmethod
    def _in_order(cls, steps: list[int]) -> list[int]:
        # A repeated step is allowed (gamma twice there): ohem bench's schedule scaling can merge two.
        if any(later < earlier for earlier, later in zip(steps, steps[1:])):
            raise PydanticCustomError(
                "joint", "solver.steps must be in increasing order, got {steps}", {"steps": steps}
            )
        return steps

    @model_validator(mode="after")
    def _warmup(self) -> SolverConfig:
        # Equal is allowed: a run may stop where its warm-up ends (and be resumed further with --resume).
        if joint_rules_on() and self.warmup_iterations > self.iterations:
            raise joint_rule(
                f"solver.warmup_iterations = {self.warmup_iterations} must be <= solver.iterations = "
                f"{self.iterations} (a longer warm-up never reaches solver.lr)",
                "solver.warmup_iterations",
                "solver.iterations",
            )
        return self


@section(config=STRICT)
class TrainConfig:
    seed: Seed = 0
    """the training seed (weights, sampling, data order)"""
    device: Annotated[str, Field(json_schema_extra=RESUMABLE)] = "auto"
    """auto | cpu | cuda | cuda:N"""
    amp: Literal["none", "bf16", "fp16"] = "none"
    """mixed precision for the whole step: none | bf16 | fp16 (CUDA, with a grad scaler)"""
    eval_every: Annotated[int, count(0, resumable=True)] = 500
    """iterations between evaluations; 0: only at the end"""
    eval_metric: Metric = "voc"
    """voc (area AP@0.5) | voc07 (11-point, the paper's) | coco (pycocotools); also what
    checkpoint_best.pt is the best by"""
    checkpoint_every: Annotated[int, count(0, resumable=True)] = 500
    """iterations between checkpoints (checkpoint_last.pt); 0: only at the end"""
    keep_checkpoints: Annotated[int, count(1, resumable=True)] = 1
    """1: checkpoint_last.pt only; N > 1 also keeps the N - 1 most recent periodic ones as
    checkpoint_iterNNNNNN.pt (older ones are deleted)"""
    num_threads: Annotated[int | None, count(1, 1024, resumable=True)] = None
    """torch CPU threads; null: torch's default"""
    roi_loss_images: Annotated[int, count(0, resumable=True)] = 0
    """at each evaluation: mean loss over all RoIs of this many train images"""
    mining_log_every: Annotated[int, count(resumable=True)] = 50
    """iterations per record of what was mined (mining.jsonl)"""
    check_sync_every: Annotated[int, count(0, resumable=True)] = 0
    """torchrun: compare the processes' weights every N steps (0: never)"""
    vis_images: Annotated[int, count(0, 100, resumable=True)] = 4
    """test images drawn in detections.png"""
    vis_score_thresh: Annotated[float, between(0, 1, resumable=True)] = 0.5
    """detections drawn in detections.png score at least this"""
    timing_every: Annotated[int, count(resumable=True)] = 10
    """CUDA: synchronize to time the mining every N iterations (a sync stalls the queue)"""


@section(config=STRICT)
class TestConfig:
    """Evaluation, ``ohem eval``, ``ohem detect`` and the all-RoI loss measure."""

    __test__ = False  # a class named Test* that pytest must not collect
    images_per_batch: Annotated[int, count(1, 4096, resumable=True)] = 4
    """images per forward pass at test time"""


HEAD_BG_IOU = 0.5  # the RoI heads' background/foreground IoU threshold (ohem.models; enable_sampler checks yours)


def bg_floor_message(bg_iou_low: float, head_bg_iou: float) -> str:
    return (
        f"sampler.bg_iou_low = {bg_iou_low} must be below the RoI head's background/foreground IoU threshold "
        f"{head_bg_iou} (background is IoU in [bg_iou_low, {head_bg_iou}): none would be left to train on)"
    )


def default_sampler() -> SamplerBase:
    from ohem.mining.sampler import sampler_class  # the mining package imports this module

    return sampler_class("ohem")()


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampler: SamplerBase = field(default_factory=default_sampler)
    solver: SolverConfig = field(default_factory=SolverConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    test: TestConfig = field(default_factory=TestConfig)
    imports: list[str] = field(default_factory=list)  # modules imported first (your own samplers)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self)[:-1]}
        out["sampler"] = self.sampler.to_dict()
        return {**out, "imports": list(self.imports)} if self.imports else out


SECTIONS: dict[str, Any] = {
    "data": DataConfig,
    "model": ModelConfig,
    "sampler": None,  # the class sampler.method names
    "solver": SolverConfig,
    "train": TrainConfig,
    "test": TestConfig,
}
# Keys of the flat sampler section before each sampler owned its settings (0.1): where they went.
RENAMED = {
    "ohem_start": "sampler.start",
    "presample_factor": "sampler.factor",
    "prior_bg": "sampler.background_prior",
    "libra_bins": "sampler.bins",
    "libra_floor_thr": "sampler.floor_thr",
    "libra_floor_fraction": "sampler.floor_fraction",
    "is_lambda": "sampler.lambda_uniform",
    "is_lambda_schedule": "sampler.lambda_schedule",
    "is_lambda_decay_iterations": "sampler.lambda_decay_iterations",
    "is_weights": "sampler.weights",
    "rpn_ohem": "model.rpn_ohem",
    "rpn_nms_iou": "model.rpn_nms_iou",
}
