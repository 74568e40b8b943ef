"""The files an ``ohem bench`` folder keeps between calls, read back strictly: ``bench.json`` and the
CSVs (``cost_repeats.csv``, ``cost.csv``, ``accuracy.csv``, ``curves.csv``, ``errors.csv``). A file
that is not what ``ohem bench`` writes (a hand edit, a different tool, garbage) is a one-line error
naming the file, the row (data rows count from 1, the header not counted) and the column, e.g.
``OUT/cost.csv: row 2: s_per_iter: expected a positive number, got 'abc'``; never a traceback
from deep inside a phase."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from ohem.evaluation.errors import KINDS
from ohem.util import atomic_open, json_type, one_line

Check = Callable[[str], str | None]  # a cell -> None if it is fine, else what was expected
MAX_SECONDS = 1e8  # --seconds: about three years of training per run; more is a typo (and overflows)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _positive(text: str) -> str | None:
    value = _number(text)
    return None if value is not None and math.isfinite(value) and value > 0 else "expected a positive number"


def _finite(text: str) -> str | None:
    value = _number(text)
    return None if value is not None and math.isfinite(value) else "expected a finite number"


def _measured(text: str) -> str | None:  # a measurement that may be unknown: nan, as the cost worker writes it
    value = _number(text)
    return None if value is not None and not math.isinf(value) else "expected a number (or nan: unknown)"


def _optional(text: str) -> str | None:  # empty: none (e.g. a mAP with no class measured)
    return None if text == "" or _finite(text) is None else "expected a finite number or nothing"


def _integer(low: int | None) -> Check:
    expected = "expected an integer" if low is None else f"expected an integer >= {low}"

    def check(text: str) -> str | None:
        try:
            value = int(text)
        except ValueError:
            return expected
        return None if low is None or value >= low else expected

    return check


def _text(text: str) -> str | None:
    return None if text.strip() else "expected a name"


def _run(text: str) -> str | None:  # a run folder inside OUT
    path = PurePosixPath(text)
    return None if text and not path.is_absolute() and ".." not in path.parts else "expected a folder inside OUT"


SCHEMAS: dict[str, dict[str, Check]] = {
    "cost_repeats.csv": {
        "arm": _text,
        "repeat": _integer(0),
        "s_per_iter": _positive,
        "cpu_s_per_iter": _positive,
        "others_cpu_share": _measured,
        "rss_before_mib": _measured,
        "peak_rss_mib": _measured,
    },
    "cost.csv": {"arm": _text, "s_per_iter": _positive, "peak_rss_mib": _measured, "rss_before_mib": _measured},
    "accuracy.csv": {
        "arm": _text,
        "seed": _integer(None),
        "iterations": _integer(1),
        "mAP": _optional,
        "run": _run,
    },
    "curves.csv": {
        "arm": _text,
        "seed": _integer(None),
        "iteration": _integer(0),
        "mAP": _optional,
    },
    "errors.csv": {"arm": _text, "seed": _integer(None), "score": _finite, **{kind: _integer(0) for kind in KINDS}},
}
MEDIANS = (  # cost.csv's medians over an arm's quiet repeats
    "cpu_s_per_iter",
    "mining_s_per_iter",
    "mining_share",
    "data_s_per_iter",
    "data_share",
    "gflop_per_iter",
    "roi_pool_mb_per_iter",
)
# columns whose cells, where the column is there, must be empty or a finite number
OPTIONAL_NUMBERS = ("schedule", "seconds", "train_roi_loss", "mined_fg_fraction", *MEDIANS)


def read_csv(path: Path) -> list[dict[str, Any]]:
    """The rows of ``path`` (none if it is missing), each checked against its file's columns."""
    if not path.exists():
        return []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (csv.Error, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a CSV file that ohem bench wrote ({one_line(str(e))})") from None
    schema = SCHEMAS.get(path.name, {})
    for number, row in enumerate(rows, start=1):
        check_row(path, number, row, schema)
    return rows


def check_row(path: Path, number: int, row: dict[Any, Any], schema: dict[str, Check]) -> None:
    where = f"{path}: row {number}"
    if None in row:  # more cells than the header has columns (csv puts the rest under None)
        raise ValueError(f"{where}: {len(row) - 1 + len(row[None])} cells for {len(row) - 1} columns")
    for column, check in schema.items():
        cell = row.get(column)
        if cell is None:
            raise ValueError(f"{where}: {column}: missing (not a column of the file, or the row is short)")
        problem = check(cell)
        if problem:
            raise ValueError(f"{where}: {column}: {problem}, got {cell!r}")
    for column in OPTIONAL_NUMBERS:
        if column not in schema and row.get(column) is not None and _optional(row[column]):
            raise ValueError(f"{where}: {column}: expected a finite number or nothing, got {row[column]!r}")


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """The whole file, atomically: a stopped run never leaves a truncated CSV."""
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_open(path) as f:
        writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def read_settings(path: Path) -> dict[str, Any]:
    """``bench.json``: an object with ``budget`` (a string), ``values`` (an object) and ``seconds``
    (null or a positive number)."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    except (UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{path}: not a JSON file that ohem bench wrote ({type(e).__name__})") from None
    if not isinstance(stored, dict):
        raise ValueError(f"{path}: expected a JSON object (what ohem bench writes), got {json_type(stored)}")
    for key, ok, expected in (
        ("budget", isinstance(stored.get("budget"), str), "a string"),
        ("values", isinstance(stored.get("values"), dict), "an object"),
        ("seconds", _seconds_ok(stored.get("seconds")), f"null or a number in (0, {MAX_SECONDS:g}]"),
    ):
        if not ok:
            raise ValueError(f"{path}: {key}: expected {expected}, got {json.dumps(stored.get(key))[:60]}")
    return stored


def _seconds_ok(value: Any) -> bool:
    if value is None:
        return True
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= MAX_SECONDS


def first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    """The dotted key of the first value that differs between two nested dicts, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in dict.fromkeys([*a, *b]):
            found = first_difference(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)
            if found:
                return found
        return None
    return prefix or "the config" if a != b else None
