"""``ohem bench`` on other engines: the same tiny bench through the local pool, submitit's local cluster
and a local Ray instance gives the same rows bit for bit; ``--plan``, the listed commands run by hand,
then ``--collect`` gives the same summary as a plain bench; bad executor options are one line."""

import re
import subprocess

import pytest

from ohem.bench import Executor, collect_bench, plan_bench, run_bench
from ohem.cli import main
from tests.test_bench import read, tiny_bench

pytest.importorskip("submitit")
pytest.importorskip("ray")

# what a run computes; wall_s and the run's engine are not in it
COMPUTED = ("arm", "seed", "schedule", "iterations", "mAP", "train_roi_loss", "mined_fg_fraction", "run")


def tiny(out, executor="local"):
    """test_bench's tiny bench, without cost and error phases, two runs at a time on one thread each."""
    return tiny_bench(out, jobs=2, cost_iters=0, error_score=None, executor=Executor.parse(executor, cpus_per_run=1))


def computed(out):
    rows = sorted(read(out / "accuracy.csv"), key=lambda r: r["arm"])
    return [{k: r[k] for k in COMPUTED} for r in rows], sorted(
        map(tuple, (r.values() for r in read(out / "curves.csv")))
    )


@pytest.fixture(scope="module")
def local_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "local"
    assert run_bench(tiny(out)) == 0
    return out


@pytest.mark.parametrize("executor", ["submitit:local", "ray"])
def test_another_engine_computes_the_same_rows_bit_for_bit(local_out, tmp_path, executor, capsys):
    out = tmp_path / "b"
    assert run_bench(tiny(out, executor)) == 0
    assert "submitted" in capsys.readouterr().out  # the runs went through the engine, not the local pool
    assert computed(out) == computed(local_out)
    assert [r["threads"] for r in read(out / "accuracy.csv")] == ["1", "1"]


def test_plan_then_the_commands_by_hand_then_collect_gives_the_plain_summary(local_out, tmp_path, capsys):
    out = tmp_path / "b"
    assert plan_bench(tiny(out)) == 0
    plan = (out / "plan.sh").read_text()
    assert capsys.readouterr().out == plan
    commands = [line for line in plan.splitlines() if not line.startswith("#")]
    assert len(commands) == 2 and all(re.search(r" -m ohem train --config \S*demo\.yaml --out ", c) for c in commands)
    assert not (out / "accuracy.csv").exists()  # nothing trained

    assert collect_bench(tiny(out)) == 1  # nothing finished yet: listed, not guessed
    assert "2 run(s) not finished" in capsys.readouterr().err and not read_or_empty(out / "accuracy.csv")

    for command in commands:  # "by hand", one after the other, as a user would paste them
        subprocess.run(["sh", "-c", command], check=True)
    assert collect_bench(tiny(out)) == 0
    assert computed(out) == computed(local_out)
    assert (out / "summary.md").read_text() == (local_out / "summary.md").read_text()
    assert collect_bench(tiny(out)) == 0 and computed(out) == computed(local_out)  # idempotent


def read_or_empty(path):
    return read(path) if path.exists() else []


def test_a_run_trained_with_other_settings_is_not_collected(local_out, tmp_path):
    out = tmp_path / "b"
    assert plan_bench(tiny(out)) == 0
    command = next(line for line in (out / "plan.sh").read_text().splitlines() if "heuristic" in line)
    subprocess.run(["sh", "-c", command.replace(" > ", " --set solver.lr=0.5 > ", 1)], check=True)
    with pytest.raises(ValueError, match=r"accuracy-heuristic-seed0: trained with other settings than this bench"):
        collect_bench(tiny(out))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--executor", "slurm"], "--executor 'slurm': expected local, submitit[:slurm|:local] or ray[:ADDRESS]"),
        (["--executor", "submitit:pbs"], "--executor 'submitit:pbs': expected local"),
        (["--executor", "ray", "--gpus-per-run", "-1"], "--gpus-per-run must be >= 0, got -1"),
        (["--executor", "submitit", "--time-limit", "0"], "--time-limit must be >= 1, got 0"),
    ],
)
def test_bad_executor_options_are_one_line_errors(tmp_path, capsys, args, message):
    assert main(["bench", "--config", "demo", "--out", str(tmp_path / "b"), *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ohem bench: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "b").exists()


def test_one_run_on_two_processes_through_submitit_trains_with_ddp(tmp_path, monkeypatch):
    from ohem.checkpoint import load_checkpoint
    from ohem.slurm_train import main as slurm_main
    from ohem.slurm_train import parse, submit
    from tests.conftest import TINY

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    train = ["--config", "demo", "--out", str(tmp_path / "ddp")]
    train += [a for item in [*TINY, "solver.iterations=3", "train.device=cpu"] for a in ("--set", item)]
    args, train_args = parse(
        ["--cluster", "local", "--gpus-per-node", "2", "--folder", str(tmp_path / "jobs"), "--", *train]
    )
    assert train_args == train
    job = submit(args, train_args)
    job.results()  # both tasks; raises if one failed
    checkpoint = load_checkpoint(tmp_path / "ddp" / "checkpoint_last.pt")
    assert checkpoint["iteration"] == 3 and len(checkpoint["rng"]["torch"]) == 2  # one RNG state per process
    with pytest.raises(SystemExit):  # no -- before ohem train's arguments
        slurm_main(["--cluster", "local"])


def test_a_requeued_run_resumes_from_its_checkpoint(tmp_path):
    from ohem.bench.executors import RunCommand
    from ohem.bench.jobs import Job

    run_dir = tmp_path / "runs" / "accuracy-ohem-seed0"
    argv = ["true", "--out", str(run_dir), "--force", "--set", "train.seed=0"]
    job = Job("accuracy ohem seed 0", argv, tmp_path / "logs" / "a.log", 1, str, run_dir=run_dir)
    (tmp_path / "logs").mkdir()
    command = RunCommand.of(job)
    assert command() == 0 and "--force" in (tmp_path / "logs" / "a.log").read_text()  # no checkpoint yet: from 0
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint_last.pt").write_bytes(b"")
    requeued = command.checkpoint()  # what submitit calls on preemption
    assert requeued.function is command
    assert requeued.function() == 0
    assert (tmp_path / "logs" / "a.log").read_text().splitlines()[-1].startswith(f"$ true --out {run_dir} --resume")
