"""Where OHEM's extra step time goes: heuristic and OHEM training steps side by side, then the profiler.

    python benchmarks/profile_ohem.py [--init CKPT] [--steps 30] [--warmup 5] [--threads 2] [--profile 10]
                                      [--config configs/bench.yaml] [--set key=value ...]

Both samplers train the config's model (``configs/bench.yaml``: the cost phase of
``benchmarks/bench_samplers.py``) from the same weights (``--init``: a trained checkpoint, so that the
RPN passes its steady-state number of RoIs; default: random init) on the same batches, one step of
each in turn (which one goes first alternates), so both see the same machine load. A step is what
``train.time`` measures: forward, backward and the SGD update. A third arm, ``ohem-pool-before``, is
OHEM with ``ohem.mining.pooling`` switched off (the read-only pass pools on one thread and the
trainable pass pools its RoIs again, as before), so the change is measured in the same run.

Prints each arm's mean and median s/iter and its ratio to the heuristic's, in wall time and in CPU
time (all the process's threads: with ``--threads 1`` the step's work, less sensitive to other load
than wall time; with more threads it counts OpenMP's spin-waiting too), the RoIs per batch, the wall
time of OHEM's mining phases (labelling, read-only pass, selection), and with ``--profile N`` the top
ops of N more steps of each arm by self CPU time (``torch.profiler``).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ohem.checkpoint import load_state_dict_file  # noqa: E402
from ohem.config import load_config  # noqa: E402
from ohem.data import build_dataset  # noqa: E402
from ohem.mining import pooling  # noqa: E402
from ohem.mining import roi_heads as ohem_heads  # noqa: E402
from ohem.models import build_detector  # noqa: E402

SAMPLERS = {  # as benchmarks/bench_samplers.py's arms 1 and 3
    "heuristic": ["sampler.method=heuristic", "sampler.fg_fraction=0.25", "sampler.bg_iou_low=0.1"],
    "ohem": ["sampler.method=ohem", "sampler.nms_iou=0.7", "sampler.mining_loss=cls+box"],
}
PHASES = ("label_rois", "readonly_losses", "select_hard_examples")  # module-level names OHEMRoIHeads calls
ARMS = {  # name: (sampler, context of its steps)
    "heuristic": ("heuristic", contextlib.nullcontext),
    "ohem": ("ohem", contextlib.nullcontext),
    "ohem-pool-before": ("ohem", lambda: pooling_as_before()),
}


def build(args: argparse.Namespace, sampler: list[str]) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    cfg = load_config(args.config, args.set + sampler)
    torch.manual_seed(0)
    model = build_detector(cfg.model, cfg.sampler, args.num_classes)
    if args.init:
        model.load_state_dict(load_state_dict_file(args.init, "--init"))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    return model.train(), opt


def batches(args: argparse.Namespace, count: int) -> list[tuple[list, list]]:
    data = build_dataset(load_config(args.config, args.set).data, "train")
    args.num_classes = len(data.classes)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(1)).tolist()
    out = []
    for b in range(count):
        items = [data[order[(2 * b + j) % len(data)]] for j in range(2)]
        out.append(([image for image, _ in items], [target for _, target in items]))
    return out


def step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: tuple[list, list]) -> tuple[float, float]:
    """Wall and CPU seconds (all of the process's threads) of one training step."""
    tic, cpu = time.perf_counter(), time.process_time()
    losses = model(*batch)
    loss = sum(v for k, v in losses.items() if k.startswith("loss_"))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    seconds = time.perf_counter() - tic, time.process_time() - cpu
    if not torch.isfinite(loss):
        raise SystemExit("non-finite loss")
    return seconds


def time_phases(phase_seconds: dict[str, dict[str, list[float]]], current: list[str]) -> None:
    """Wrap the OHEM core's module-level steps so each call's wall time is recorded under ``current[0]``."""

    def timed(name: str, fn: Callable) -> Callable:
        def wrapper(*a, **k):
            tic = time.perf_counter()
            out = fn(*a, **k)
            phase_seconds[current[0]][name].append(time.perf_counter() - tic)
            return out

        return wrapper

    for name in PHASES:
        setattr(ohem_heads, name, timed(name, getattr(ohem_heads, name)))


@contextlib.contextmanager
def pooling_as_before() -> Iterator[None]:
    """OHEM as before its CPU pooling changes: the read-only pass pools on one thread, the trainable
    pass pools its RoIs again."""
    saved = ohem_heads.can_reuse_pooling, pooling.MIN_ROIS_PER_THREAD
    ohem_heads.can_reuse_pooling, pooling.MIN_ROIS_PER_THREAD = (lambda heads, features: False), 1 << 62
    try:
        yield
    finally:
        ohem_heads.can_reuse_pooling, pooling.MIN_ROIS_PER_THREAD = saved


def report(seconds: dict[str, list[tuple[float, float]]], phases: dict, warmup: int) -> None:
    for clock, what in ((0, "wall"), (1, "CPU")):
        values = {name: [t[clock] for t in times] for name, times in seconds.items()}
        for name, v in values.items():
            ratio = statistics.mean(v) / statistics.mean(values["heuristic"])
            print(f"{what:<4} {name:<16} mean {statistics.mean(v) * 1000:7.1f} ms   median "
                  f"{statistics.median(v) * 1000:7.1f} ms   x heuristic {ratio:.3f} (means)")  # fmt: skip
    for arm, recorded in phases.items():
        mined = sum(statistics.median(recorded[n][warmup:]) for n in PHASES)
        print(f"{arm} mining (median): {mined * 1000:.1f} ms = " + ", ".join(
            f"{n} {statistics.median(recorded[n][warmup:]) * 1000:.1f}" for n in PHASES))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "bench.yaml"))
    parser.add_argument("--set", nargs="*", default=[], help="config overrides, key=value")
    parser.add_argument("--init", help="start from this checkpoint's weights (steady-state RoI counts)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--profile", type=int, default=0, help="then profile this many steps of each")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = batches(args, args.warmup + args.steps + args.profile)
    arms = {name: (*build(args, SAMPLERS[sampler]), context) for name, (sampler, context) in ARMS.items()}
    rois: list[int] = []
    arms["ohem"][0].roi_heads.register_forward_pre_hook(lambda m, a: rois.append(sum(len(p) for p in a[1])))
    phases: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name in arms if name != "heuristic"}
    current = [""]
    time_phases(defaultdict(lambda: defaultdict(list), phases), current)
    seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in arms}
    for i, batch in enumerate(data[: args.warmup + args.steps]):
        names = list(arms) if i % 2 == 0 else list(arms)[::-1]
        for name in names:
            model, opt, context = arms[name]
            current[0] = name
            with context():
                t = step(model, opt, batch)
            if i >= args.warmup:
                seconds[name].append(t)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps after {args.warmup} "
          f"warm-up, init {args.init or 'random'}; RoIs per OHEM batch: mean {statistics.mean(rois):.0f}")  # fmt: skip
    report(seconds, phases, args.warmup)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for name, (model, opt, context) in arms.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof, context():
                for batch in data[args.warmup + args.steps :]:
                    step(model, opt, batch)
            print(f"\n{name}: top ops of {args.profile} steps by self CPU time")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))


if __name__ == "__main__":
    main()
