"""Where ``ohem bench``'s training runs execute (``--executor``), on engines that exist:

* ``local`` (the default): this machine's process pool (``ohem.bench.jobs.run_jobs``);
* ``submitit`` / ``submitit:slurm`` / ``submitit:local``: each run a job through submitit, on Slurm
  (one job array, at most ``--jobs`` at a time) or on submitit's local cluster (for a test on one
  machine); a run preempted and requeued by Slurm resumes from its checkpoint;
* ``ray`` / ``ray:ADDRESS``: each run a Ray task with its CPUs and GPUs, on the cluster at ADDRESS or
  on a local Ray instance started for the call.

Every executor runs the same command per run (``Job.command``) in this folder, with the same
environment and log file, and the bench records each run's rows from its folder as the run ends: what
is computed does not depend on where it ran. The run folders, the config and this package must be on a
filesystem the workers share, at the same paths. The cost phase always runs here (timings from
different machines are not comparable).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ohem.bench.jobs import POLL_SECONDS, Job, finish, resolved_command, run_jobs
from ohem.util import require

KINDS = ("local", "submitit", "ray")


@dataclass
class Executor:
    """``--executor`` and the resources each run asks for (submitit and Ray; ``local`` ignores them)."""

    kind: str = "local"
    target: str | None = None  # submitit: slurm | local (default: Slurm where there is one); ray: ADDRESS
    partition: str | None = None  # Slurm
    account: str | None = None  # Slurm
    time_limit: int = 24 * 60  # minutes per run (Slurm)
    gpus_per_run: int = 0
    cpus_per_run: int | None = None  # default: the run's threads

    @classmethod
    def parse(cls, text: str, **resources: Any) -> Executor:
        kind, _, target = text.partition(":")
        if (
            kind not in KINDS
            or (kind == "local" and target)
            or (kind == "submitit" and target not in ("", "slurm", "local"))
        ):
            raise ValueError(f"--executor {text!r}: expected local, submitit[:slurm|:local] or ray[:ADDRESS]")
        for key, value in resources.items():
            low = 0 if key == "gpus_per_run" else 1
            if isinstance(value, int) and value < low:
                raise ValueError(f"--{key.replace('_', '-')} must be >= {low}, got {value}")
        return cls(kind, target or None, **{k: v for k, v in resources.items() if v is not None})

    def run(self, jobs: list[Job], parallel: int, folder: Path) -> list[str]:
        """Run ``jobs`` (``parallel`` at a time where the engine lets us say so), recording each as it
        ends; returns the failures' messages. ``folder``: the engine's own files (submitit's logs)."""
        if not jobs:
            return []
        if self.kind == "submitit":
            return self._run_submitit(jobs, parallel, folder)
        if self.kind == "ray":
            return self._run_ray(jobs, parallel)
        return run_jobs(jobs, parallel)

    def _run_submitit(self, jobs: list[Job], parallel: int, folder: Path) -> list[str]:
        submitit = require("submitit", "--executor submitit")
        executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=self.target)
        executor.update_parameters(timeout_min=self.time_limit, cpus_per_task=self.cpus_per_run or jobs[0].threads)
        if executor.cluster == "slurm":
            slurm: dict[str, Any] = {"slurm_array_parallelism": parallel, "gpus_per_node": self.gpus_per_run}
            slurm.update({f"slurm_{k}": v for k, v in (("partition", self.partition), ("account", self.account)) if v})
            executor.update_parameters(**slurm)
            with executor.batch():  # one job array, all of it in flight at once
                submitted = [executor.submit(RunCommand.of(job)) for job in jobs]
            handle_of = {id(job): handle for job, handle in zip(jobs, submitted)}
            submit, parallel = (lambda job: handle_of[id(job)]), len(jobs)
        else:  # submitit's local cluster has no queue: at most ``parallel`` submitted at a time
            submitted = []

            def submit(job: Job) -> Any:
                submitted.append(executor.submit(RunCommand.of(job)))
                return submitted[-1]

        try:
            return _throttled(jobs, parallel, submit, lambda h: h.done(), lambda h: h.result())
        except BaseException:  # the bench stopped: its jobs go with it, as the local pool's children do
            for handle in submitted:
                handle.cancel(check=False)
            raise

    def _run_ray(self, jobs: list[Job], parallel: int) -> list[str]:
        ray = require("ray", "--executor ray")
        started = not ray.is_initialized()
        if started:  # a local instance with this machine's cores, or the cluster at the address
            ray.init(address=self.target, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        try:
            remote = ray.remote(_call)

            def submit(job: Job) -> Any:
                resources = {"num_cpus": self.cpus_per_run or job.threads, "num_gpus": self.gpus_per_run}
                return remote.options(**resources).remote(RunCommand.of(job))

            return _throttled(jobs, parallel, submit, lambda ref: bool(ray.wait([ref], timeout=0)[0]), ray.get)
        finally:
            if started:
                ray.shutdown()


@dataclass
class RunCommand:
    """A job's command as a picklable callable for a remote worker (plain data, no closure): run in the
    bench's folder with the job's environment, its output appended to the job's log; the exit status."""

    argv: list[str]
    log: str
    cwd: str
    env: dict[str, str]
    run_dir: str | None

    @classmethod
    def of(cls, job: Job) -> RunCommand:
        run_dir = str(job.run_dir) if job.run_dir else None
        return cls(job.argv, str(job.log), os.getcwd(), job.environment(), run_dir)

    def __call__(self) -> int:
        # --resume or --force decided on the worker, when the run starts (again after a requeue)
        argv = resolved_command(self.argv, Path(self.run_dir) if self.run_dir else None)
        with open(os.path.join(self.cwd, self.log), "a", encoding="utf-8") as log:
            log.write(f"$ {shlex.join(argv)}\n")
            log.flush()
            env = {**os.environ, **self.env}
            done = subprocess.run(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.cwd, env=env
            )
        return done.returncode

    def checkpoint(self) -> Any:
        """submitit, on preemption: requeue the same command (it resumes from the run's checkpoint)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def _call(command: RunCommand) -> int:  # a module-level function: what Ray ships to a worker
    return command()


def _throttled(jobs: list[Job], parallel: int, submit: Any, done: Any, result: Any) -> list[str]:
    """Submit ``jobs`` (``submit``: job -> the engine's handle) keeping at most ``parallel`` in flight;
    record each as it ends."""
    pending, failed = list(jobs), []
    running: list[tuple[Job, Any, float]] = []
    while pending or running:
        while pending and len(running) < parallel:
            job = pending.pop(0)
            job.log.parent.mkdir(parents=True, exist_ok=True)
            print(f"[{job.name}] submitted ({job.threads} thread(s)); log: {job.log}", flush=True)
            running.append((job, submit(job), time.monotonic()))
        time.sleep(POLL_SECONDS)
        for entry in [e for e in running if done(e[1])]:
            running.remove(entry)
            failed += _record(entry, result)
    return failed


def _record(entry: tuple[Job, Any, float], result: Any) -> list[str]:
    job, handle, started = entry
    try:
        returncode = int(result(handle))
    except Exception as e:  # the engine lost the job (node failure, cancelled, timed out): one line
        returncode, detail = -1, " ".join(str(e).split())[:300]
        job.log.parent.mkdir(parents=True, exist_ok=True)
        with open(job.log, "a", encoding="utf-8") as log:
            log.write(f"{type(e).__name__}: {detail}\n")
    message = finish(job, returncode, time.monotonic() - started)
    print(f"[{job.name}] {message}", flush=True)
    return [f"{job.name}: {message}"] if message.startswith("FAILED") else []
