"""Hostile input against ``ohem bench``: its state files (``bench.json``, the CSVs) broken by hand,
its options out of range, and a ``kill -9`` in the middle of a run. Each table case writes its files
into a fresh folder, runs one command, and checks the exit code, the single stderr line, and that
nothing changed: outside ``--out`` nothing at all, inside it nothing but the lock file.

The next bad input is one ``Case(...)`` line in ``CASES``."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from ohem.bench import budget_iterations
from ohem.cli import main
from ohem.config import load_config
from tests.test_bench import TINY_BENCH
from tests.test_hostile import snapshot

SETS = [arg for item in TINY_BENCH for arg in ("--set", item)]
GOOD_COST = {"arm": "ohem", "s_per_iter": "0.5", "peak_rss_mib": "300", "rss_before_mib": "200"}
GOOD_ACCURACY = {"arm": "ohem", "seed": "0", "iterations": "4", "seconds": "", "mAP": "0.1", "run": "runs/a"}


def bench_argv(out: Path, *extra: str) -> list[str]:
    return ["bench", "--config", "demo", "--arms", "ohem", "--no-errors", "--out", str(out), *SETS, *extra]


def settings(budget: str = "iterations", **changes: object) -> dict:
    values = json.loads(json.dumps(load_config("demo", TINY_BENCH).to_dict()))
    return {"config": "demo", "budget": budget, "values": values, "seconds": None, **changes}


def write_rows(path: Path, rows: list[dict], header: list[str] | None = None) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header or list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def folder(files: dict[str, object], *extra: str) -> Callable[[Path], list[str]]:
    """A bench folder holding ``files`` (bench.json: an object to dump; a CSV: rows; else bytes)."""

    def setup(tmp: Path) -> list[str]:
        out = tmp / "out"
        out.mkdir()
        (out / "bench.json").write_text(json.dumps(settings()))
        for name, content in files.items():
            if isinstance(content, bytes):
                (out / name).write_bytes(content)
            elif name.endswith(".csv"):
                write_rows(out / name, content)  # type: ignore[arg-type]
            else:
                (out / name).write_text(json.dumps(content))
        return bench_argv(out, *extra)

    return setup


@dataclass
class Case:
    name: str
    setup: Callable[[Path], list[str]]
    err: str  # regex the one stderr line must match


E = r"^ohem bench: error: .*/out/"
# fmt: off
CASES = [
    Case("bench.json a list", folder({"bench.json": [1, 2]}), E + r"bench\.json: expected a JSON object .*, got list$"),
    Case("bench.json not JSON", folder({"bench.json": b"{oops"}), E + r"bench\.json: not valid JSON: "),
    Case("bench.json values a string", folder({"bench.json": {**settings(), "values": "x"}}),
         E + r"bench\.json: values: expected an object, got \"x\"$"),
    Case("bench.json seconds 1e308", folder({"bench.json": settings("seconds", seconds=1e308)}, "--budget",
         "seconds"), E + r"bench\.json: seconds: expected null or a number in \(0, 1e\+08\], got 1e\+308$"),
    Case("cost.csv s/iter not a number", folder({"cost.csv": [GOOD_COST, {**GOOD_COST, "s_per_iter": "abc"}]}),
         E + r"cost\.csv: row 2: s_per_iter: expected a positive number, got 'abc'$"),
    Case("cost.csv s/iter 0", folder({"cost.csv": [{**GOOD_COST, "s_per_iter": "0"}]}),
         E + r"cost\.csv: row 1: s_per_iter: expected a positive number, got '0'$"),
    Case("cost.csv s/iter inf", folder({"cost.csv": [{**GOOD_COST, "s_per_iter": "inf"}]}),
         E + r"cost\.csv: row 1: s_per_iter: expected a positive number, got 'inf'$"),
    Case("cost.csv without s/iter", folder({"cost.csv": [{"arm": "ohem", "peak_rss_mib": "3"}]}),
         E + r"cost\.csv: row 1: s_per_iter: missing \(not a column of the file, or the row is short\)$"),
    Case("cost_repeats.csv repeat 'x'", folder({"cost_repeats.csv": [{"arm": "ohem", "repeat": "x"}]}),
         E + r"cost_repeats\.csv: row 1: repeat: expected an integer >= 0, got 'x'$"),
    Case("accuracy.csv garbage with NUL", folder({"accuracy.csv": b"arm,seed\n\x00\x01\x02garbage\n"}),
         E + r"accuracy\.csv: row 1: seed: missing \(not a column of the file, or the row is short\)$"),
    Case("accuracy.csv not UTF-8", folder({"accuracy.csv": b"arm,seed\n\xff\xfe,1\n"}),
         E + r"accuracy\.csv: not a CSV file that ohem bench wrote \("),
    Case("accuracy.csv mAP 'abc'", folder({"accuracy.csv": [{**GOOD_ACCURACY, "mAP": "abc"}]}),
         E + r"accuracy\.csv: row 1: mAP: expected a finite number or nothing, got 'abc'$"),
    Case("accuracy.csv run outside OUT", folder({"accuracy.csv": [{**GOOD_ACCURACY, "run": "../../etc"}]}),
         E + r"accuracy\.csv: row 1: run: expected a folder inside OUT, got '\.\./\.\./etc'$"),
    Case("accuracy.csv a row with extra cells", folder({"accuracy.csv": b"arm,seed\nohem,0,4,5\n"}),
         E + r"accuracy\.csv: row 1: 4 cells for 2 columns$"),
    Case("curves.csv a short row", folder({"curves.csv": b"arm,seed,iteration,seconds,mAP,train_roi_loss\nohem,0\n"}),
         E + r"curves\.csv: row 1: iteration: missing"),
    Case("errors.csv a count 'many'", folder({"errors.csv": [{"arm": "ohem", "seed": "0", "score": "0.5",
         "TP": "many"}]}), E + r"errors\.csv: row 1: TP: expected an integer >= 0, got 'many'$"),
    Case("--seconds 1e308", lambda tmp: bench_argv(tmp / "out", "--budget", "seconds", "--seconds", "1e308"),
         r"^ohem bench: error: --seconds 1e\+308: needs --budget seconds and a number in \(0, 1e\+08\]"),
    Case("--seconds inf", lambda tmp: bench_argv(tmp / "out", "--budget", "seconds", "--seconds", "inf"),
         r"^ohem bench: error: --seconds inf: needs --budget seconds and a number in \(0, 1e\+08\]"),
    Case("--seconds -1", lambda tmp: bench_argv(tmp / "out", "--budget", "seconds", "--seconds", "-1"),
         r"^ohem bench: error: --seconds -1\.0: needs --budget seconds and a number in \(0, 1e\+08\]"),
    Case("--jobs 100000", lambda tmp: bench_argv(tmp / "out", "--jobs", "100000"),
         r"^ohem bench: error: --jobs must be <= 256 \(training processes at a time\), got 100000$"),
]
# fmt: on


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_bench_input(case: Case, tmp_path: Path, capsys) -> None:
    argv = case.setup(tmp_path)
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main(argv) == 1
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and re.search(case.err, lines[0]), captured.err
    assert "started" not in captured.out  # refused before any process ran
    after = snapshot(tmp_path)
    assert {p: s for p, s in after.items() if not p.endswith(".bench.lock")} == before


def test_an_iteration_count_beyond_reason_is_an_error_not_an_overflow() -> None:
    assert budget_iterations(10.0, 0.5) == 20
    with pytest.raises(ValueError, match=r"^--seconds 1e\+08 at 1e-300 s/iter is 1e\+308 iterations, more than"):
        budget_iterations(1e8, 1e-300)
    with pytest.raises(ValueError, match=r"is inf iterations"):
        budget_iterations(1e8, 1e-320)


# ------------------------------------------------------------------------------- kill -9 of a bench
def live_processes_naming(text: str) -> list[int]:
    """Pids of live (not zombie) processes whose command line contains ``text``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(proc.name))
    return found


def wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's")
def test_kill_9_of_a_bench_takes_its_training_processes_with_it(tmp_path: Path, capsys) -> None:
    out = tmp_path / "b"
    argv = [*bench_argv(out, "--cost-iters", "0"), "--arms", "heuristic,ohem", "--set", "data.workers=1"]
    (tmp_path / "tmp").mkdir()  # the bench's temporary folder: the loader workers' pymp-* must not stay
    env = {**os.environ, "TQDM_DISABLE": "1", "TMPDIR": str(tmp_path / "tmp")}
    bench = subprocess.Popen([sys.executable, "-m", "ohem", *argv], stdout=subprocess.DEVNULL, env=env)
    second = str(out / "runs" / "accuracy-ohem-seed0")
    try:  # the first arm finished, the second one training (its loader worker started)
        assert wait_for(lambda: len(live_processes_naming(second)) >= 2 or bench.poll() is not None, 300)
        assert bench.poll() is None, "the bench ended before its second run was caught training"
    finally:
        bench.send_signal(signal.SIGKILL)
        bench.wait()
    assert wait_for(lambda: not live_processes_naming(str(out)), 5), live_processes_naming(str(out))
    assert not [p.name for p in (tmp_path / "tmp").iterdir() if p.name.startswith("pymp-")]
    rows = list(csv.DictReader((out / "accuracy.csv").open()))
    assert [r["arm"] for r in rows] == ["heuristic"]
    first_run = (out / "runs" / "accuracy-heuristic-seed0" / "metrics.json").stat().st_mtime_ns

    capsys.readouterr()
    assert main(argv) == 0  # resumed: only the unfinished run is trained
    started = [line for line in capsys.readouterr().out.splitlines() if "started" in line]
    assert [line.split("]")[0] for line in started] == ["[accuracy ohem seed 0"]
    rows = list(csv.DictReader((out / "accuracy.csv").open()))
    assert [(r["arm"], r["seed"], r["iterations"]) for r in rows] == [("heuristic", "0", "4"), ("ohem", "0", "4")]
    assert (out / "runs" / "accuracy-heuristic-seed0" / "metrics.json").stat().st_mtime_ns == first_run
    assert not live_processes_naming(str(out))
