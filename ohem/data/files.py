"""Opening what a data set names, safely: only regular files, only inside the data set, strict JSON.

* every file is opened only after ``ohem.util.regular_file`` (``os.stat``: a FIFO, device, socket or
  directory is refused instead of blocking or failing oddly).
* ``entry_path`` / ``check_inside``: a file named by an annotation or split file (a COCO
  ``file_name``, a VOC split line) must stay inside its folder: absolute paths and ``..`` are refused
  as written, symlinks that resolve outside the folder when the file is used. The folder itself may
  be a symlink (a data set on another disk): only what is inside it is confined to it.
* ``load_json``: UTF-8 JSON whose numbers fit a float (``1e999`` would be read as infinity) and whose
  nesting is at most ``MAX_JSON_DEPTH`` deep; ``NaN`` and ``Infinity`` literals are left for the
  caller's field checks (which name the field).

Every error is one line that starts with what the file is and its path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ohem.util import one_line, regular_file

MAX_JSON_DEPTH = 100  # COCO instances need 5 levels (file, annotations, entry, segmentation, polygon)
_BIG_INT = 2**1024  # the first integer a float cannot hold


def read_bytes(path: str | os.PathLike, what: str) -> bytes:
    """The contents of a regular file; any problem is a one-line error naming it."""
    path = regular_file(path, what)
    try:
        return path.read_bytes()
    except OSError as e:
        raise ValueError(f"{what} {path}: cannot be read ({e.strerror or e})") from None


def read_text(path: str | os.PathLike, what: str) -> str:
    """The UTF-8 text of a regular file; anything else is a one-line error naming it."""
    data = read_bytes(path, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {path}: not UTF-8 text (byte {e.start})") from None


class JsonConstant(float):
    """A ``NaN`` / ``Infinity`` literal as read (JSON has no such numbers; Python writes them): a
    float, told apart from a finite literal that overflowed, so that the field checks report it."""


def load_json(path: str | os.PathLike, what: str) -> Any:
    """The JSON value of a regular UTF-8 file; bad JSON, numbers beyond float range and nesting
    deeper than ``MAX_JSON_DEPTH`` are one-line errors naming the file (and where it is)."""
    text = read_text(path, what)
    where = f"{what} {path}"
    try:
        value = json.loads(text, parse_constant=lambda name: JsonConstant(name))
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise ValueError(f"{where}: JSON nested too deeply (more than {MAX_JSON_DEPTH} levels)") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise ValueError(f"{where}: not valid JSON ({one_line(str(e))})") from None
    problem = _json_problem(value)
    if problem is not None:
        raise ValueError(f"{where}: {json_location(value, problem)}")
    return value


def _json_problem(value: Any) -> str | None:
    """``"depth"`` or ``"number"`` if ``value`` is nested too deeply or holds a number a float
    cannot hold; None if it is fine. One pass, no recursion."""
    if type(value) is not dict and type(value) is not list:
        return "number" if _beyond_float(value) else None
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return "depth"
        for x in node.values() if type(node) is dict else node:
            t = type(x)
            if t is float:
                if x - x != 0:  # inf (an overflowed literal such as 1e999); NaN literals are JsonConstant
                    return "number"
            elif t is dict or t is list:
                stack.append((x, depth + 1))
            elif t is int and not -_BIG_INT < x < _BIG_INT:
                return "number"
    return None


def json_location(value: Any, problem: str) -> str:
    """Where the first ``problem`` of ``_json_problem`` is, as ``images[3].width: ...``."""
    if type(value) is not dict and type(value) is not list:
        return "(top level): a number beyond float range (such as 1e999)"
    stack: list[tuple[Any, tuple]] = [(value, ())]
    while stack:
        node, path = stack.pop()
        if len(path) >= MAX_JSON_DEPTH:
            shown = _path_text(path[:5])
            return f"{shown}...: JSON nested more than {MAX_JSON_DEPTH} levels deep"
        items = node.items() if type(node) is dict else enumerate(node)
        for key, x in items:
            if _beyond_float(x):
                return f"{_path_text((*path, key))}: a number beyond float range (such as 1e999)"
            if type(x) is dict or type(x) is list:
                stack.append((x, (*path, key)))
    return f"JSON {problem} problem"  # not reached for a value _json_problem flagged


def _beyond_float(x: object) -> bool:
    """An overflowed float literal (inf; NaN/Infinity literals are ``JsonConstant``) or an integer
    too large for a float."""
    t = type(x)
    return t is float and x - x != 0 or t is int and not -_BIG_INT < x < _BIG_INT  # type: ignore[operator]


def _path_text(path: tuple) -> str:
    text = ""
    for key in path:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else str(key))
    return text or "(top level)"


def entry_path(folder: Path, entry: object, where: str, what: str = "file name") -> Path:
    """``folder / entry`` for a relative path ``entry`` read from a data set file; an absolute path,
    a ``..`` part or a non-string is a one-line error starting with ``where`` (file and item)."""
    if not isinstance(entry, str) or not entry.strip():
        raise ValueError(f"{where}: {what} must be a non-empty string, got {json_text(entry)}")
    if "\0" in entry:
        raise ValueError(f"{where}: {what} {entry!r} holds a NUL character")
    if os.path.isabs(entry) or entry.startswith(("/", "\\")):
        raise ValueError(f"{where}: {what} {entry!r} is an absolute path (must be relative to {folder})")
    if ".." in Path(entry).parts or ".." in entry.split("\\"):
        raise ValueError(f"{where}: {what} {entry!r} leaves {folder} ('..' is not allowed)")
    return folder / entry


def check_inside(path: Path, folder: Path, where: str) -> Path:
    """``path`` if it resolves (symlinks followed) inside ``folder`` (itself resolved); else a
    one-line error starting with ``where`` (the file that listed it, and the item)."""
    try:
        real, base = path.resolve(), folder.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise ValueError(f"{where}: {path} cannot be resolved ({one_line(str(e))})") from None
    if real != base and base not in real.parents:
        raise ValueError(f"{where}: {path} resolves to {real}, outside {folder} (a symlink leaving the data set)")
    return path


def json_text(value: object, limit: int = 60) -> str:
    """A JSON value as JSON writes it (``null``, ``"160"``, ``[1]``), cut short to keep a message one line."""
    try:
        text = json.dumps(value) if not isinstance(value, float) or value - value == 0 else repr(value)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
