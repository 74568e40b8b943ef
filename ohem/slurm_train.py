"""One ``ohem train`` run on many GPUs across nodes, as one Slurm job through submitit (DETR's
``run_with_submitit.py`` pattern): Slurm starts one task per GPU, each task exports the variables
torch.distributed reads (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``)
and runs ``ohem train``, which trains with DistributedDataParallel as under ``torchrun``. A job
preempted and requeued by Slurm resumes from the run's last checkpoint.

    python -m ohem.slurm_train --nodes 2 --gpus-per-node 8 --partition P [--account A] \\
        [--time-limit MIN] [--cluster local] -- --config voc07_vgg16_ohem --out runs/x [--set ...]

The run folder, the config and this package must be on a filesystem every node sees at the same path.
``--cluster local`` runs the tasks on this machine (submitit's local cluster, CPU: a test of the path).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ohem.util import require

CHECKPOINT = "checkpoint_last.pt"


@dataclass
class DistributedTrain:
    """``ohem train ARGS`` in one task of the job: a picklable callable for submitit."""

    args: list[str]  # after ``ohem train``

    def resumed(self) -> list[str]:
        """The arguments, with ``--resume`` in place of ``--force`` once the run has a checkpoint (a requeue)."""
        out = Path(self.args[self.args.index("--out") + 1]) if "--out" in self.args[:-1] else None
        if out is None or not (out / CHECKPOINT).is_file():
            return self.args
        args = [arg for arg in self.args if arg != "--force"]
        return args if "--resume" in args else [*args, "--resume"]

    def __call__(self) -> int:
        submitit = require("submitit", "ohem.slurm_train")
        env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        os.environ["LOCAL_WORLD_SIZE"] = str(env.local_world_size)
        from ohem.cli import main

        code = main(["train", *self.resumed()])
        if code:
            raise RuntimeError(f"ohem train exited with {code} on rank {env.rank}")
        return code

    def checkpoint(self) -> Any:
        """submitit, on preemption: requeue this run (it resumes from its checkpoint)."""
        submitit = require("submitit", "ohem.slurm_train")
        return submitit.helpers.DelayedSubmission(DistributedTrain(self.args))


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m ohem.slurm_train", description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=1, help="one task (one training process) per GPU")
    parser.add_argument("--cpus-per-task", type=int, default=8, help="data loading and the host's share of a step")
    parser.add_argument("--partition")
    parser.add_argument("--account")
    parser.add_argument("--time-limit", type=int, default=24 * 60, metavar="MIN")
    parser.add_argument("--cluster", choices=["slurm", "local"], help="default: Slurm where there is one")
    parser.add_argument("--folder", default="slurm_logs", help="submitit's job files and each task's output")
    if "--" not in argv:
        parser.error("give ohem train's arguments after --, e.g. -- --config demo --out runs/demo")
    split = argv.index("--")
    args = parser.parse_args(argv[:split])
    for flag in ("nodes", "gpus_per_node", "cpus_per_task", "time_limit"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    return args, argv[split + 1 :]


def submit(args: argparse.Namespace, train_args: list[str]) -> Any:
    """The job, submitted; returns submitit's handle."""
    submitit = require("submitit", "ohem.slurm_train")
    executor = submitit.AutoExecutor(folder=str(Path(args.folder) / "%j"), cluster=args.cluster)
    tasks = args.gpus_per_node if executor.cluster != "local" else args.gpus_per_node * args.nodes
    params: dict[str, Any] = {"timeout_min": args.time_limit, "cpus_per_task": args.cpus_per_task}
    params.update(nodes=args.nodes if executor.cluster != "local" else 1, tasks_per_node=tasks)
    if executor.cluster == "slurm":
        params.update(gpus_per_node=args.gpus_per_node, slurm_signal_delay_s=120)
        params.update({f"slurm_{k}": v for k, v in (("partition", args.partition), ("account", args.account)) if v})
    executor.update_parameters(**params)
    return executor.submit(DistributedTrain(train_args))


def main(argv: list[str] | None = None) -> int:
    args, train_args = parse(sys.argv[1:] if argv is None else argv)
    job = submit(args, train_args)
    print(f"submitted job {job.job_id}: ohem train {' '.join(train_args)}; its output under {args.folder}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
