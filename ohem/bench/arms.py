"""The benchmark's arms: config fragments in YAML files, applied over the config and the user's ``--set``.

The built-in arms are the files in ``ohem/configs/arms/`` (name: the file's stem; description: its first
comment line). ``--arms`` also takes the path of a file of your own, such as

    # my sampler with k = 32
    sampler: {method: my-sampler, k: 32}

so an arm fixes only what defines it (the sampler, and for ``ohem-1img`` the batch); everything else
(model, data, schedule, ``sampler.nms_per_label`` ...) is the config's. One key is the bench's own, not a
config key: ``start_fraction: F`` sets ``sampler.start`` to F x each run's iterations (a fraction, so that
the arm means the same under any schedule or budget).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ohem.config import ConfigError, shown
from ohem.config_files import read_yaml
from ohem.recipes import CONFIGS_DIR, describe

ARMS_DIR = CONFIGS_DIR / "arms"


@dataclass(frozen=True)
class Arm:
    name: str
    description: str  # one line, shown by ``ohem bench --list-arms``
    fragment: dict[str, Any]  # config sections, as in a config file
    start_fraction: float = 0.0  # sampler.start at this fraction of the run; 0: the fragment's or config's

    @property
    def overrides(self) -> tuple[str, ...]:
        """The fragment as ``section.key=value`` overrides (values written as JSON, which YAML reads back)."""
        return tuple(f"{s}.{k}={json.dumps(v)}" for s, values in self.fragment.items() for k, v in values.items())


def read_arm(path: Path, name: str | None = None) -> Arm:
    """The arm a YAML file holds (one-line errors naming the file)."""
    fragment = read_yaml(path)
    start = fragment.pop("start_fraction", 0.0)
    if isinstance(start, bool) or not isinstance(start, (int, float)) or not 0 <= start < 1:
        raise ConfigError(f"arm {path}: start_fraction must be a number in [0, 1), got {shown(start)}")
    return Arm(name or path.stem, describe(path) or f"(from {path})", fragment, float(start))


@functools.cache  # shipped files: read once per process (callers only read the dict)
def builtin_arms() -> dict[str, Arm]:
    """The shipped arms by name."""
    return {path.stem: read_arm(path) for path in sorted(ARMS_DIR.glob("*.yaml"), key=lambda p: p.stem)}


def parse_arms(text: str) -> list[Arm]:
    """``--arms a,b,./mine.yaml``: built-in arms by name and your own by path (duplicates dropped)."""
    builtin, arms = builtin_arms(), {}
    for item in dict.fromkeys(part.strip() for part in text.split(",") if part.strip()):
        if item.endswith((".yaml", ".yml")) or "/" in item:
            arm = read_arm(Path(item))
        elif item in builtin:
            arm = builtin[item]
        else:
            raise ValueError(f"--arms: unknown arm {shown(item)}; the arms are: {', '.join(builtin)} (or a .yaml file)")
        if arm.name in arms:
            raise ValueError(f"--arms: two arms named {arm.name!r} (a file's name is its stem)")
        arms[arm.name] = arm
    if not arms:
        raise ValueError(f"--arms: no arm given; the arms are: {', '.join(builtin)} (or a .yaml file)")
    return list(arms.values())


def format_arms(arms: list[Arm] | None = None) -> str:
    """``--list-arms``: each arm's name and description, the keys it sets on the line below."""
    arms = list(builtin_arms().values()) if arms is None else arms
    width = max(len(arm.name) for arm in arms) + 2
    lines = []
    for arm in arms:
        lines.append(f"{arm.name:<{width}}{arm.description}")
        start = f" sampler.start={arm.start_fraction:.3g} x solver.iterations" if arm.start_fraction else ""
        lines.append(f"{'':<{width}}sets {' '.join(arm.overrides)}{start}")
    return "\n".join(lines) + "\n"
