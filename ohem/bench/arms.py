"""The benchmark's arms: named sampler settings, defined here and nowhere else.

Each arm is a list of ``section.key=value`` overrides applied over the config and the user's
``--set``, so an arm fixes only what defines it (the sampler, and for ``ohem-1img`` the batch);
everything else (model, data, schedule, ``sampler.nms_per_label`` ...) is the config's.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Arm:
    description: str  # one line, shown by ``ohem bench --list-arms``
    overrides: tuple[str, ...]
    # OHEM mines from this fraction of the run on (``sampler.ohem_start``), a random sample before:
    # a fraction, not an iteration, so that the arm means the same under any schedule or budget.
    warm_fraction: float = 0.0


def _sets(*groups: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Overrides merged by key, a later value replacing an earlier one: a variant is its base arm's
    settings plus what it changes."""
    merged: dict[str, str] = {}
    for item in (item for group in groups for item in group):
        merged[item.partition("=")[0]] = item
    return tuple(merged.values())


HEURISTIC = (
    "sampler.method=heuristic",
    "sampler.fg_fraction=0.25",
    "sampler.batch_size_per_image=64",
    "sampler.bg_iou_low=0.1",
)
OHEM = (
    "sampler.method=ohem",
    "sampler.batch_size_per_image=64",
    "sampler.nms_iou=0.7",
    "sampler.mining_loss=cls+box",
    "sampler.bg_iou_low=0.0",
)
# More RoIs than any image has (proposals + gt boxes): torchvision's sampler then takes every one.
EVERY_ROI = 1_000_000

ARMS: dict[str, Arm] = {
    "heuristic": Arm(
        "Fast R-CNN's sampler: 64 RoIs/image at random, 25 % foreground, background from IoU [0.1, 0.5)", HEURISTIC
    ),
    "heuristic-bg0": Arm(
        "the heuristic with background from IoU [0, 0.5) (the paper's bg_lo ablation)",
        _sets(HEURISTIC, ["sampler.bg_iou_low=0.0"]),
    ),
    "tv-default": Arm(
        "torchvision's default: 512 RoIs/image at random, 25 % foreground, background from IoU 0",
        _sets(HEURISTIC, ["sampler.batch_size_per_image=512", "sampler.bg_iou_low=0.0"]),
    ),
    "all-rois": Arm(
        "every RoI of every image (heuristic sampler, no cap, background from IoU 0), at the "
        "config's solver.lr (the paper raised the lr for this row; this arm does not)",
        _sets(HEURISTIC, [f"sampler.batch_size_per_image={EVERY_ROI}", "sampler.bg_iou_low=0.0"]),
    ),
    "ohem": Arm("OHEM: the 64 RoIs/image of highest cls+box loss after NMS 0.7 among all RoIs (IoU from 0)", OHEM),
    "ohem-warm": Arm(
        "OHEM from a third of the run on; before it the heuristic's random sample with background "
        "from IoU 0 (our remedy for a from-scratch head collapsing on dense proposals; not in the paper)",
        OHEM,
        warm_fraction=1 / 3,
    ),
    "ohem-no-nms": Arm("OHEM without the NMS among RoIs before ranking", _sets(OHEM, ["sampler.nms_iou=null"])),
    "ohem-cls": Arm(
        "OHEM ranking RoIs by classification loss only (as mmdetection)", _sets(OHEM, ["sampler.mining_loss=cls"])
    ),
    "ohem-1img": Arm(
        "OHEM with 1 image x 128 RoIs per step instead of 2 x 64 (the paper's N = 1 ablation)",
        _sets(OHEM, ["solver.images_per_batch=1", "sampler.batch_size_per_image=128"]),
    ),
    "ohem-512": Arm(
        "OHEM with 512 RoIs/image: tv-default's RoI count, the hardest instead of random ones",
        _sets(OHEM, ["sampler.batch_size_per_image=512"]),
    ),
    "libra": Arm(
        "Libra R-CNN's IoU-balanced sampling: 512 RoIs/image, 25 % foreground equally per gt box, "
        "background equally from 3 IoU bins over [0, 0.5)",
        (
            "sampler.method=libra",
            "sampler.batch_size_per_image=512",
            "sampler.fg_fraction=0.25",
            "sampler.bg_iou_low=0.0",
            "sampler.libra_bins=3",
            "sampler.libra_floor_thr=null",
        ),
    ),
    "ohem-presample": Arm(
        "OHEM among 4 x 64 random RoIs/image: the read-only pass on those only, then OHEM's top 64 after NMS 0.7",
        _sets(OHEM, ["sampler.method=ohem-presample", "sampler.presample_factor=4"]),
    ),
    "ohem-stratified": Arm(
        "mmdetection's OHEM: 512 RoIs/image of highest cls loss within a 25 % foreground quota, no NMS",
        (
            "sampler.method=ohem-stratified",
            "sampler.batch_size_per_image=512",
            "sampler.fg_fraction=0.25",
            "sampler.bg_iou_low=0.0",
        ),
    ),
    "pisa": Arm(
        "PISA (Cao et al. 2020): tv-default's random 512 RoIs/image, classification loss reweighted by "
        "IoU/score hierarchical rank (ISR), plus CARL",
        (
            "sampler.method=pisa",
            "sampler.batch_size_per_image=512",
            "sampler.fg_fraction=0.25",
            "sampler.bg_iou_low=0.0",
            "sampler.carl=true",
        ),
    ),
    "is-mix": Arm(
        "ours: 64 draws/image with probability 0.5 x loss share + 0.5 x uniform over all RoIs (no NMS), "
        "weighted to an unbiased estimate of the all-RoI mean loss",
        (
            "sampler.method=is-mix",
            "sampler.batch_size_per_image=64",
            "sampler.is_lambda=0.5",
            "sampler.is_lambda_schedule=constant",
            "sampler.is_weights=unbiased",
            "sampler.nms_iou=null",
            "sampler.mining_loss=cls+box",
            "sampler.bg_iou_low=0.0",
        ),
    ),
    "ohem-prior": Arm(
        "OHEM from the first step with the classifier's bias set to P(background) = 0.99 at initialisation",
        _sets(OHEM, ["sampler.method=ohem-prior", "sampler.prior_bg=0.99", "sampler.ohem_start=0"]),
    ),
}


def parse_arms(text: str) -> list[str]:
    """``--arms a,b,c`` as a list of known arm names (duplicates dropped, order kept)."""
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in ARMS]
    if unknown or not names:
        what = f"unknown arm {unknown[0]!r}" if unknown else "no arm given"
        raise ValueError(f"--arms: {what}; the arms are: {', '.join(ARMS)}")
    return names


def format_arms() -> str:
    """``--list-arms``: each arm's name and description, the keys it sets on the line below."""
    width = max(map(len, ARMS)) + 2
    lines = []
    for name, arm in ARMS.items():
        lines.append(f"{name:<{width}}{arm.description}")
        warm = f" sampler.ohem_start={arm.warm_fraction:.3g} x solver.iterations" if arm.warm_fraction else ""
        lines.append(f"{'':<{width}}sets {' '.join(arm.overrides)}{warm}")
    return "\n".join(lines) + "\n"
