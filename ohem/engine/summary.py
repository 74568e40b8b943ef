"""What a run is about to do, in a few lines: printed when ``ohem train`` starts and written to the
run folder's ``summary.txt``, so that a wrong dataset, class list, device or schedule shows before
hours go into it rather than after."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ohem.data.build import DEFAULT_SPLITS

if TYPE_CHECKING:
    from ohem.engine.trainer import Run

SUMMARY = "summary.txt"
MAX_CLASSES_SHOWN = 30  # COCO's 80 names would fill the screen


def run_summary(run: Run) -> list[str]:
    """The summary's lines: run folder, data, classes, model and device, sampler, schedule."""
    cfg = run.cfg
    s, t = cfg.solver, cfg.train
    state = f"resumed at iteration {run.start} of {s.iterations}" if run.start else "new run"
    names = ", ".join(run.classes[:MAX_CLASSES_SHOWN])
    more = f", ... and {len(run.classes) - MAX_CLASSES_SHOWN} more" if len(run.classes) > MAX_CLASSES_SHOWN else ""
    processes = f" x {run.d.world} processes" if run.d.active else ""
    weights = cfg.model.backbone_weights or "none (random)"
    evaluation = f"every {t.eval_every} and at the end" if t.eval_every else "at the end"
    checkpoints = f"every {t.checkpoint_every} and at the end" if t.checkpoint_every else "at the end"
    steps = f"x{s.gamma} at steps {list(s.steps)}" if s.steps else "no lr steps"
    return [
        f"run folder: {run.out} ({state})",
        f"data: {_data(run)}",
        f"classes ({len(run.classes)}): {names}{more}",
        f"model: {cfg.model.name}, backbone weights {weights}, device {run.device}{processes}",
        f"sampler: {sampler_settings(run)}",
        f"schedule: {s.iterations} iterations of {s.images_per_batch * s.accumulate_steps} images, lr {s.lr} "
        f"(warm-up {s.warmup_iterations} iterations, {steps}); "
        f"evaluation ({t.eval_metric}) {evaluation}; checkpoints {checkpoints}",
    ]


def _data(run: Run) -> str:
    """The dataset, where it is, and its two splits' names and sizes."""
    data = run.cfg.data
    train_split = data.train_split or DEFAULT_SPLITS[data.dataset][0]
    test_split = data.test_split or DEFAULT_SPLITS[data.dataset][1]
    where = f" in {data.root}" if data.root else ""
    text = (
        f"{data.dataset}{where}, train split {train_split!r} {len(run.train_set)} images, "
        f"test split {test_split!r} {len(run.test_set)} images"
    )
    if data.proposals:
        text += f"; proposals {data.proposals} (test: {data.test_proposals})"
    return text


def sampler_settings(run: Run) -> str:
    """``sampler.method`` and the settings of the sampler the model trains with (its own fields: only
    those its method has), and the RPN's sampling."""
    from ohem.mining import OHEMRegionProposalNetwork, installed_sampler  # torch: only when a run starts

    sampler = installed_sampler(run.core)
    if sampler is None:
        return "torchvision's RoI sampler"
    fields = sampler.to_dict()
    method = fields.pop("method")
    settings = ", ".join(f"{key} {value}" for key, value in fields.items())
    mined = isinstance(getattr(run.core, "rpn", None), OHEMRegionProposalNetwork)
    rpn = "OHEM (model.rpn_ohem)" if mined else "torchvision's random anchors"
    return f"{method} ({settings}); RPN: {rpn}"


def write_summary(run: Run) -> None:
    """Print the summary and write it to ``RUN/summary.txt`` (main process only)."""
    if not run.d.main:
        return
    lines = run_summary(run)
    print("ohem train: " + "\n  ".join(lines), flush=True)
    with run.files.open(run.out / SUMMARY) as f:
        f.write("\n".join(lines) + "\n")
