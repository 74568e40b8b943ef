"""The configs shipped in the package (``ohem/configs/``), found by name from any folder.

A recipe's name is its file name without ``.yaml``: ``demo``, ``bench``, ``bench_dense`` (the built-in
data) and the paper's rows in ``paper/`` (``voc07_vgg16_ohem``, ...); ``paper/base/`` holds the files
they build on, which are not recipes. ``--config NAME`` (``ohem train``, ``ohem bench``) and
``ohem recipe NAME`` resolve a name here; anything that names a file (it exists, holds a path separator
or ends in ``.yaml``/``.yml``) is read as that file.
"""

from __future__ import annotations

import os
from pathlib import Path

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
PAPER_DIR = CONFIGS_DIR / "paper"


def recipe_paths() -> dict[str, Path]:
    """Every shipped recipe by name: the built-in data's first, then the paper's, each sorted."""
    found: dict[str, Path] = {}
    for folder in (CONFIGS_DIR, PAPER_DIR):
        for path in sorted(folder.glob("*.yaml")):
            found[path.stem] = path
    return found


def looks_like_a_path(spec: str | os.PathLike[str]) -> bool:
    """Whether ``spec`` names a file rather than a recipe. A folder of that name is not a config: it is
    e.g. the ``--out bench`` of an earlier ``--config bench``, which must not shadow the recipe."""
    text = os.fspath(spec)
    seps = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    exists = Path(text).exists() and not Path(text).is_dir()
    return exists or any(s in text for s in seps) or text.endswith((".yaml", ".yml"))


def find_recipe(spec: str | os.PathLike[str]) -> Path | None:
    """The shipped file a recipe name names, or None where ``spec`` is a path or no recipe's name."""
    if looks_like_a_path(spec):
        return None
    return recipe_paths().get(os.fspath(spec))


def resolved_config(spec: str) -> str:
    """``spec`` with a recipe's name replaced by its file, once, when a command starts: what it hands on
    (a bench's runs, a rerun) then reads the same file whatever the folder holds by then."""
    found = find_recipe(spec)
    return str(found) if found is not None else spec


def recipe_name(path: str | os.PathLike[str]) -> str | None:
    """The name of a shipped recipe file (``.../ohem/configs/paper/voc07_vgg16_ohem.yaml`` ->
    ``voc07_vgg16_ohem``), or None for any other file."""
    resolved = Path(path).resolve()
    named = recipe_paths().get(resolved.stem)
    return resolved.stem if named is not None and named == resolved else None


def describe(path: Path) -> str:
    """The first line of a recipe's header comment."""
    with path.open(encoding="utf-8") as f:
        first = f.readline().strip()
    return first.lstrip("#").strip() if first.startswith("#") else ""


def format_recipes() -> str:
    """``ohem recipe --list``: one line per recipe, its name and the first line of its header."""
    paths = recipe_paths()
    width = max(len(name) for name in paths)
    return "".join(f"{name:<{width}}  {describe(path)}\n" for name, path in paths.items())
