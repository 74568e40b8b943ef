"""Small helpers shared across the package."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, binary: bool = False, make_parents: bool = False) -> Iterator[IO[Any]]:
    """A file object on a temporary sibling of ``path``, renamed over ``path`` only when the block
    succeeds: an interrupted or failed write never leaves a truncated or half-written ``path``."""
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) made one space: a message that
    quotes a library's error stays one line."""
    return " ".join(text.split())


def is_number(value: object) -> bool:
    """An int or a float but not a bool: what JSON calls a number."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_coco_bbox(value: object) -> bool:
    """A COCO ``bbox`` as JSON gives it: a list of four numbers ``[x, y, w, h]``."""
    return isinstance(value, list) and len(value) == 4 and all(is_number(v) for v in value)


def xywh_to_xyxy(bbox: list[float]) -> list[float]:
    """One COCO ``[x, y, w, h]`` box as floats ``[x1, y1, x2, y2]`` (tensors of boxes: ``box_convert``)."""
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


def json_type(value: object) -> str:
    """What JSON calls the type of a value ``json.load`` gave: object, list, string, number, ..."""
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def json_object(value: object, keys: Sequence[str], where: str) -> dict[str, Any]:
    """``value`` if it is a JSON object holding every one of ``keys``, else a one-line error that
    starts with ``where``."""
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object with {', '.join(keys)}, got a JSON {json_type(value)}")
    missing = [k for k in keys if k not in value]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(map(repr, missing))}")
    return value
