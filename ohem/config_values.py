"""Python values (paths, above all) set as config keys without being re-read as something else.

A ``--set key=value`` override is parsed as YAML: ``/d/my data #2`` loses its ``#2`` (a comment),
``2007`` becomes a number, ``yes`` a boolean, ``null`` nothing. What the commands themselves set from an
option (``--data coco:ROOT``, ``model.init_weights`` of ``ohem bench --pretrain``) is a value already,
so it goes through as a YAML double-quoted scalar, which reads back as exactly the value given; that
text may also travel on a child process's command line (``--set key="..."``).
"""

from __future__ import annotations

import math
from typing import Any

import yaml

from ohem.config import Config, apply_overrides, parse_yaml


def yaml_scalar(value: Any) -> str:
    """``value`` (a string, number, boolean or None) as YAML text that parses back to it exactly."""
    if value is None or isinstance(value, bool) or (isinstance(value, (int, float)) and math.isfinite(value)):
        text = "null" if value is None else yaml.safe_dump(value).removesuffix("\n...\n").strip()
    elif isinstance(value, str):  # always double-quoted: escapes keep every character (even undecodable bytes)
        text = yaml.safe_dump(value, default_style='"', width=math.inf, allow_unicode=False).strip()
    else:
        raise TypeError(f"yaml_scalar: {type(value).__name__} is not a string, number, boolean or None")
    if parse_yaml(text) != value:  # never expected: a guard, so that a path is never passed changed
        raise ValueError(f"{value!r} cannot be written as a YAML value that reads back the same")
    return text


def value_override(key: str, value: Any) -> str:
    """The ``key=value`` override (for ``--set`` or ``apply_overrides``) that sets ``key`` to ``value`` as is."""
    return f"{key}={yaml_scalar(value)}"


def set_values(cfg: Config, values: dict[str, Any]) -> Config:
    """``cfg`` with each dotted key set to its value as is (checked like any override)."""
    return apply_overrides(cfg, [value_override(key, value) for key, value in values.items()])
