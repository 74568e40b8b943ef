"""What a sampler is: ``SamplerBase``, the settings every sampler shares and every hook a sampler may
override, and ``register_sampler``, which names it for configs (``sampler: {method: NAME, ...}``).

A sampler is a pydantic dataclass whose fields are its settings (checked when it is made, in code or
from YAML: types, ranges, no unknown key). Per training step the RoI head (``SamplingRoIHeads``) calls:

1. ``presample(rois)``: rows the rest of the step is restricted to, or None for all (bounds the
   read-only pass's cost: ``ohem-presample``);
2. when ``readonly`` is not None, the read-only pass: one loss per RoI, under ``no_grad``;
3. ``sample(rois, per_roi, iteration) -> Sample``: the rows to train on and a weight per row;
4. ``roi_loss(trained)``: the trainable pass's loss (default: the weighted mean ``weighted_roi_loss``).

and once, when installed, ``initialise(heads)``. The head enforces the contract in one place
(``ohem.mining.contract``). The contract (docs/SAMPLERS.md, "Write your own
sampler"): rows may come in any order (the head groups them by image); a weight multiplies its row's
loss terms and the sum is divided by the number of rows, not by the sum of weights; every random draw
comes from torch's generator (so ``--resume`` and seeds are exact); a sampler that keeps state across
steps returns it from ``state_dict`` (saved in checkpoints). ``stretched(factor)`` rescales settings
counted in iterations, so ``ohem bench`` can stretch a schedule without knowing the sampler.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Self, TypeVar, cast, dataclass_transform

import torch
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass as pydantic_dataclass
from torch import Tensor
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler

from ohem.mining.pooling import split_by_image
from ohem.mining.readonly import PerRoILoss, ReadOnlySettings
from ohem.mining.rois import LabelledRoIs, weighted_roi_loss
from ohem.models.box_targets import raw_box_deltas

if TYPE_CHECKING:
    from torchvision.models.detection.roi_heads import RoIHeads

# Strict: 64.5 is not an int, 'false' not a bool; NaN and infinity are refused; an unknown key is an error.
# Each field's docstring is its description (docs/CONFIG.md is generated from them). No validate_assignment:
# a sampler with state keeps it in plain attributes (set in __post_init__), which that would refuse.
SETTINGS = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, use_attribute_docstrings=True)

Fraction = Annotated[float, Field(ge=0, le=1)]
Count = Annotated[int, Field(ge=1, le=10**9)]
T = TypeVar("T")


@dataclass_transform(field_specifiers=(dataclasses.field, Field))
def settings(cls: type[T]) -> type[T]:
    """``cls`` as a pydantic dataclass with the samplers' ``SETTINGS`` (typed so that mypy keeps the class)."""
    return cast("type[T]", pydantic_dataclass(config=SETTINGS)(cls))


@dataclass
class Sample:
    """Rows of the ``LabelledRoIs`` to train on (any order) and a weight per row; ``weights=None`` is
    weight 1 each."""

    rows: Tensor
    weights: Tensor | None = None


@settings
class SamplerBase:
    """The keys every sampler has, and every hook as a no-op. Subclass it with fields of your own (each
    with a default and a docstring) and ``sample``; register it with ``@register_sampler("name")``."""

    method: ClassVar[str] = ""  # set by register_sampler
    batch_size_per_image: Annotated[int, Field(ge=1, le=100_000)] = 64
    """B / N: RoIs trained on per image."""
    fg_fraction: Fraction = 0.25
    """The most foreground per image (samplers that draw a foreground quota; ohem before its start)."""
    bg_iou_low: Fraction = 0.0
    """RoIs whose best IoU is below this are not candidates (never sampled); below the head's
    background threshold (0.5)."""

    @property
    def readonly(self) -> ReadOnlySettings | None:
        """The read-only pass's settings when ``sample`` needs per-RoI losses; None: no such pass."""
        return None

    def presample(self, rois: LabelledRoIs) -> Tensor | None:
        """Rows (in image order) the rest of the step is restricted to; None: every RoI."""
        return None

    @property
    def mining_start(self) -> int:
        """The first iteration whose sample is chosen by loss (the collapse watch starts there)."""
        return 0

    def sample(self, rois: LabelledRoIs, per_roi: PerRoILoss | None, iteration: int | None) -> Sample:
        """``per_roi``: the read-only pass's result (None when ``readonly`` is None); ``iteration``: the
        0-based training step (from ``ohem.events``), None outside a trainer."""
        raise NotImplementedError(f"sampler {self.method or type(self).__name__}: no sample() method")

    def roi_loss(self, trained: TrainedRows) -> dict[str, Tensor]:
        """The trainable pass's ``loss_classifier`` and ``loss_box_reg`` (and any ``loss_*`` of its own)."""
        logits, deltas, weights = trained.class_logits, trained.box_regression, trained.sample.weights
        cls, box = weighted_roi_loss(logits, deltas, trained.labels, trained.box_targets, trained.beta, weights)
        return {"loss_classifier": cls, "loss_box_reg": box}

    def initialise(self, heads: RoIHeads) -> None:
        """Called once when installed (``enable_sampler``), e.g. to set the classifier's initial bias."""

    def stretched(self, factor: float) -> Self:
        """This sampler for a schedule ``factor`` times as long (settings counted in iterations scaled)."""
        return dataclasses.replace(self)

    def state_dict(self) -> dict[str, Any]:
        """State kept across steps (saved in checkpoints; tensors, numbers, strings, lists, dicts), held
        in attributes set in ``__post_init__`` (a fresh copy then starts afresh); settings are not state."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (``--resume``)."""
        if state:
            raise ValueError(f"sampler {self.method}: keeps no state, got a state with {', '.join(state)}")

    def to_dict(self) -> dict[str, Any]:
        """The YAML section: ``method`` and every setting."""
        return {"method": self.method, **dataclasses.asdict(self)}


S = TypeVar("S", bound=SamplerBase)
SAMPLERS: dict[str, type[SamplerBase]] = {}  # sampler.method -> class, filled by register_sampler
BUILTIN_PACKAGE = "ohem.mining.samplers"  # every module in it is imported: one file per built-in sampler


@dataclass_transform(field_specifiers=(dataclasses.field, Field))
def register_sampler(name: str) -> Callable[[type[S]], type[S]]:
    """Class decorator: ``sampler.method: name`` builds this class, made a pydantic dataclass of its
    fields (the settings: strict, checked when made). A name registered twice is an error."""

    def register(cls: type[S]) -> type[S]:
        if not (isinstance(cls, type) and issubclass(cls, SamplerBase)):
            raise TypeError(f"register_sampler({name!r}): {cls!r} is not a subclass of ohem.SamplerBase")
        if "__pydantic_fields__" not in cls.__dict__:  # not yet a dataclass of its own fields
            cls = settings(cls)
        if name in SAMPLERS and SAMPLERS[name].__qualname__ != cls.__qualname__:
            raise ValueError(
                f"register_sampler: {name!r} is already {SAMPLERS[name].__module__}.{SAMPLERS[name].__qualname__}"
            )
        cls.method = name
        inherit_descriptions(cls)
        SAMPLERS[name] = cls
        return cls

    return register


def inherit_descriptions(cls: type[SamplerBase]) -> None:
    """Give an inherited field its base's docstring: pydantic reads attribute docstrings from the class
    being defined only, so a subclass's copy of a base field has none."""
    fields: dict[str, Any] = cls.__dict__["__pydantic_fields__"]
    for name, info in fields.items():
        if info.description is None:
            for base in cls.__mro__[1:]:
                inherited = getattr(base, "__pydantic_fields__", {}).get(name)
                if inherited is not None and inherited.description:
                    info.description = inherited.description
                    break


@functools.cache  # the package's files do not change while ohem runs: scanned once
def load_builtin_samplers() -> None:
    """Import every module of ``ohem.mining.samplers`` (each registers its sampler)."""
    package = importlib.import_module(BUILTIN_PACKAGE)
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{BUILTIN_PACKAGE}.{module.name}")


def sampler_class(method: object) -> type[SamplerBase]:
    """The class ``sampler.method`` names (one-line error listing the names otherwise)."""
    load_builtin_samplers()
    if not isinstance(method, str) or method not in SAMPLERS:
        raise ValueError(f"sampler.method: unknown sampler {method!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[method]


@settings
class ReadOnlyPassSampler(SamplerBase):
    """A sampler that chooses by loss: the read-only pass's settings, and that pass on."""

    max_rois_per_chunk: Count = 1024
    """RoIs per forward of the read-only pass: bounds its memory."""
    readonly_dropout: bool = True
    """Dropout stays on in the read-only pass (the authors' code)."""
    readonly_precision: Literal["fp32", "tf32", "bf16", "fp16"] = "tf32"
    """The read-only pass's numerics: tf32 (float32 with TF32 matmuls/convolutions on CUDA; the CPU: fp32)
    | fp32 | bf16 / fp16 (autocast). The trainable pass keeps train.amp's precision."""

    @property
    def readonly(self) -> ReadOnlySettings | None:
        return ReadOnlySettings(self.max_rois_per_chunk, self.readonly_dropout, self.readonly_precision)


@dataclass
class TrainedRows:
    """The trainable pass over a sample's rows, for a sampler's ``roi_loss``: row ``j`` of the logits
    and deltas is the RoI ``sample.rows[j]`` of ``rois``."""

    rois: LabelledRoIs
    sample: Sample
    class_logits: Tensor  # (S, C), with gradient
    box_regression: Tensor  # (S, 4 C), with gradient (normalised deltas when the head has a norm)
    heads: RoIHeads  # the SamplingRoIHeads: its box_loss_beta, box coder and box-target norm

    @property
    def labels(self) -> Tensor:
        return self.rois.labels[self.sample.rows]

    @property
    def box_targets(self) -> Tensor:
        """(S, 4), as ``box_regression`` is trained towards."""
        return self.rois.box_targets[self.sample.rows]

    @property
    def beta(self) -> float:
        """The head's smooth-L1 beta."""
        return self.heads.box_loss_beta

    def predicted_boxes(self, classes: Tensor) -> Tensor:
        """(S, 4) the boxes the pass predicts for class ``classes[j]`` of row ``j`` (detached)."""
        deltas = raw_box_deltas(self.heads, self.box_regression.detach().float())
        rows = torch.arange(deltas.shape[0], device=deltas.device)
        own = deltas.reshape(deltas.shape[0], -1, 4)[rows, classes]
        return self.heads.box_coder.decode_single(own, self.rois.boxes[self.sample.rows])


def rows_per_image(rois: LabelledRoIs) -> list[Tensor]:
    """The rows of each image (ascending), one tensor per image."""
    rows = torch.arange(rois.labels.numel(), device=rois.labels.device)
    return split_by_image(rows, rois.image_ids, rois.num_images)


def each_image(rois: LabelledRoIs, pick: Callable[[Tensor], Tensor]) -> Tensor:
    """The rows ``pick`` returns for each image's rows (``rows_per_image``), concatenated."""
    picked = [pick(rows) for rows in rows_per_image(rois)]
    return torch.cat(picked) if picked else rois.labels.new_zeros(0)


def random_subset(rows: Tensor, count: int) -> Tensor:
    """``count`` of ``rows`` at random (all of them, shuffled, when there are fewer), from torch's RNG."""
    return rows[torch.randperm(rows.numel(), device=rows.device)[:count]]


def random_fg_bg(rois: LabelledRoIs, per_image: int, fg_fraction: float) -> Tensor:
    """Rows of a random sample per image, as torchvision's sampler draws it: at most ``fg_fraction``
    x ``per_image`` foreground, background for the rest (rows ascending within each image)."""
    sampler = BalancedPositiveNegativeSampler(per_image, fg_fraction)
    labels = split_by_image(rois.labels, rois.image_ids, rois.num_images)
    rows, offset = [], 0
    for image_labels, pos, neg in zip(labels, *sampler(labels)):
        rows.append(torch.nonzero(pos | neg).squeeze(1) + offset)
        offset += image_labels.numel()
    return torch.cat(rows)
