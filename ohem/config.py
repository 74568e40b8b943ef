"""One config system: typed sections (``ohem.config_sections``) loaded from YAML, changed by dotted overrides.

    cfg = load_config("demo", ["solver.lr=0.01", "sampler.method=heuristic"])

A file (and its ``base:`` chain: ``ohem.config_files``) and its overrides are merged first and checked once,
so the rules between fields see the final values, and an error is one line naming the file or override that
set the key last, the key, the rule and the value. The ``sampler`` section is the chosen sampler itself
(``sampler.method`` names a class registered with ``ohem.register_sampler``); when a later source changes
the method, the keys set for the old one go unless the new one has them too. ``imports: [module, ...]``
imports those modules first, so that a sampler of your own can be named.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import ValidationError

from ohem.config_files import ConfigError, cut, deep_update, parse_yaml, read_chain, shown
from ohem.config_sections import (
    _JOINT_RULES,
    HEAD_BG_IOU,
    RENAMED,
    RESUMABLE,
    SECTIONS,
    Config,
    DataConfig,
    EmptyImages,
    InvalidBoxes,
    Metric,
    ModelConfig,
    ModelName,
    SolverConfig,
    TestConfig,
    TrainConfig,
    bg_floor_message,
    check_choice,
    joint_rules_on,
)
from ohem.recipes import find_recipe, looks_like_a_path
from ohem.util import one_line

__all__ = [  # the config's public names, wherever they are written
    "Config",
    "ConfigError",
    "DataConfig",
    "EmptyImages",
    "InvalidBoxes",
    "Metric",
    "ModelConfig",
    "ModelName",
    "SolverConfig",
    "TestConfig",
    "TrainConfig",
    "apply_overrides",
    "bg_floor_message",
    "check_choice",
    "check_range",
    "config_from_dict",
    "cut",
    "load_config",
    "resumable_keys",
    "parse_yaml",
    "shown",
]


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file (and its ``base:`` chain), then each ``section.key=value``. ``path``
    may be a shipped recipe's name (``demo``, ``voc07_vgg16_ohem``: ``ohem.recipes``)."""
    sources = Sources()
    if path is not None:
        if not looks_like_a_path(path):
            found = find_recipe(path)
            if found is None:
                raise ConfigError(
                    f"config {cut(str(path))}: no such file, nor a recipe of that name (ohem recipe --list)"
                )
            path = found
        for raw, file in read_chain(Path(path)):  # its base: files first, each named when it sets a bad key
            sources.add(raw, f"config {file}")
    for item in overrides:
        sources.add(parse_override(item), f"override {shown(item)}")
    return sources.build()


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """``cfg`` with each dotted ``section.key=value`` (value parsed as YAML) applied in order."""
    sources = Sources()
    sources.add(cfg.to_dict(), "config")
    for item in overrides:
        sources.add(parse_override(item), f"override {shown(item)}")
    return sources.build()


def config_from_dict(raw: dict[str, Any], source: str = "checkpoint") -> Config:
    """The config a checkpoint or run folder records (one written before samplers owned their settings is
    translated). Its fields are checked; the rules between them are not: the run happened, and a rule
    added since must not lock its checkpoint out of eval."""
    token = _JOINT_RULES.set(False)
    try:
        sources = Sources()
        sources.add(translated(raw), source)
        return sources.build()
    finally:
        _JOINT_RULES.reset(token)


def parse_override(item: str) -> dict[str, Any]:
    """``section.key=value`` as a nested mapping, the value read as YAML."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {shown(item)}: expected section.key=value")
    nested: dict[str, Any] = {}
    node = nested
    *parents, leaf = key.strip().split(".")
    for part in parents:
        node = node.setdefault(part, {})
    try:
        node[leaf] = parse_yaml(value) if value.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {shown(item)}: value is not valid YAML ({one_line(str(e))})") from None
    return nested


class Sources:
    """A config's raw sections as its sources (files, overrides) are merged, which source set each key
    last (so an error names it), and the check of the result: ``build``."""

    def __init__(self) -> None:
        self.raw: dict[str, Any] = {}
        self._set_by: dict[str, tuple[int, str]] = {}

    def add(self, fragment: dict[str, Any], source: str) -> None:
        for key, value in fragment.items():
            if key not in (*SECTIONS, "imports"):
                known = ", ".join(sorted((*SECTIONS, "imports")))
                raise ConfigError(f"{source}: unknown key {shown(key)} (known here: {known})")
            if key != "imports" and not (isinstance(value, dict) and all(isinstance(k, str) for k in value)):
                raise ConfigError(f"{source}: {key!r} must be a mapping of key: value, got {shown(value)}")
        for old, new in RENAMED.items():
            if old in fragment.get("sampler", {}):
                raise ConfigError(f"{source}: sampler.{old} is now {new} (CHANGELOG, 0.2.0)")
        if "imports" in fragment:
            self.raw["imports"] = [*self.raw.get("imports", []), *import_modules(fragment["imports"], source)]
        method = fragment.get("sampler", {}).get("method")
        if method is not None and method != self.raw.get("sampler", {}).get("method", "ohem"):
            # A new sampler: the keys set for the old one go unless the new one has them too.
            keys = sampler_keys(method)
            self.raw["sampler"] = {k: v for k, v in self.raw.get("sampler", {}).items() if k in keys}
        self.raw = deep_update(self.raw, {k: v for k, v in fragment.items() if k != "imports"})
        for name, values in fragment.items():
            for key in values if name != "imports" else ():
                self._set_by[f"{name}.{key}"] = (len(self._set_by), source)

    def source_of(self, *keys: str) -> str:
        """The source that set one of ``keys`` last (a later setting is the likelier mistake)."""
        found = [self._set_by[k] for k in keys if k in self._set_by]
        return max(found)[1] if found else "config"

    def build(self) -> Config:
        made = {name: self._section(name, cls) for name, cls in SECTIONS.items()}
        sampler = made["sampler"]
        if joint_rules_on() and sampler.bg_iou_low >= HEAD_BG_IOU:  # every model's RoI head: 0.5
            raise ConfigError(
                f"{self.source_of('sampler.bg_iou_low')}: {bg_floor_message(sampler.bg_iou_low, HEAD_BG_IOU)}"
            )
        return Config(**made, imports=list(self.raw.get("imports", [])))

    def _section(self, name: str, cls: Any) -> Any:
        values = dict(self.raw.get(name, {}))
        if name == "sampler":
            from ohem.mining.sampler import SAMPLERS, sampler_class

            method = values.pop("method", "ohem")
            try:
                cls = sampler_class(method)
            except ValueError:
                names = ", ".join(SAMPLERS)
                raise ConfigError(
                    f"{self.source_of('sampler.method')}: sampler.method must be one of {names}, got {shown(method)}"
                ) from None
        try:
            return cls(**values)
        except ValidationError as e:
            raise ConfigError(self.explain(e, name, cls)) from None

    def explain(self, error: ValidationError, name: str, cls: Any) -> str:
        """pydantic's first error as one line: the source, the key, the rule and the value."""
        first = error.errors()[0]
        field_name = str(first["loc"][0]) if first["loc"] else name
        key = f"{name}.{field_name}"
        if first["type"] == "joint":  # a rule between fields (its keys), or one field's own rule
            keys = first.get("ctx", {}).get("keys", (key,))
            return f"{self.source_of(*keys)}: {first['msg']}"
        if first["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            known = ", ".join(f.name for f in dataclasses.fields(cls))
            what = f"sampler {cls.method}'s keys" if name == "sampler" else "known here"
            return f"{self.source_of(key)}: unknown key {shown(key)} ({what}: {known})"
        errors = [e for e in error.errors() if e["loc"][:1] == first["loc"][:1]]
        deepest = max(errors, key=lambda e: sum(isinstance(part, int) for part in e["loc"]))
        where = key + "".join(f"[{part}]" for part in deepest["loc"][1:] if isinstance(part, int))
        info = cls.__pydantic_fields__[field_name]
        words = rule(info.annotation, info.metadata) if where == key else rule(list_item(info.annotation))
        return f"{self.source_of(key)}: {where} must be {words}, got {shown(deepest['input'])}"


def check_range(name: str, value: object, low: float, high: float) -> None:
    """A one-line ``ConfigError`` unless ``value`` is a finite number in [``low``, ``high``] (an option)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not low <= value <= high:  # type: ignore[operator]  # NaN fails both comparisons
        raise ConfigError(f"{name} must be in [{low}, {high}], got {shown(value)}")


def sampler_keys(method: object) -> set[str]:
    """The keys of the sampler ``method`` names (all keys when it names none: the error comes later)."""
    from ohem.mining.sampler import SAMPLERS, load_builtin_samplers

    load_builtin_samplers()
    cls = SAMPLERS.get(method) if isinstance(method, str) else None
    return {"method", *(f.name for f in dataclasses.fields(cls))} if cls else {"method", *RENAMED}


def import_modules(names: object, source: str) -> list[str]:
    """Import each module ``names`` lists (from the current folder or the Python path), so that the
    samplers they register can be named; a module that fails is a one-line error naming it."""
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise ConfigError(f"{source}: imports must be a list of module names, got {shown(names)}")
    for name in names:
        sys.path.insert(0, str(Path.cwd()))
        try:
            importlib.import_module(name)
        except Exception as e:  # anything the module raises, a sampler registered twice included
            raise ConfigError(f"{source}: imports: {cut(name)}: {type(e).__name__}: {one_line(str(e))}") from None
        finally:
            sys.path.pop(0)
    return names


def translated(raw: dict[str, Any]) -> dict[str, Any]:
    """A recorded config in today's keys: the flat sampler section of 0.1 (every sampler's keys, some under
    prefixes, the RPN's among them) becomes the chosen sampler's own, the RPN's keys move to model."""
    sampler = raw.get("sampler")
    if not isinstance(sampler, dict) or not any(old in sampler for old in RENAMED):
        return raw
    sampler, model = dict(sampler), dict(raw.get("model", {}))
    for old, new in RENAMED.items():
        if old in sampler:
            section, key = new.split(".")
            (model if section == "model" else sampler)[key] = sampler.pop(old)
    keys = sampler_keys(sampler.get("method", "ohem"))
    return {**raw, "model": model, "sampler": {k: v for k, v in sampler.items() if k in keys}}


def resumable_keys() -> tuple[str, ...]:
    """The ``section.key`` of every field ``ohem train --resume`` may change."""
    return tuple(
        f"{name}.{key}"
        for name, cls in SECTIONS.items()
        if cls is not None
        for key, info in cls.__pydantic_fields__.items()
        if info.json_schema_extra == RESUMABLE
    )


def rule(annotation: Any, metadata: tuple[Any, ...] | list[Any] = ()) -> str:
    """What a field takes, in words: "an integer in [1, 100]", "true or false", "one of a, b"."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return rule(args[0], [*metadata, *args[1:]])
    if origin in (typing.Union, types.UnionType):
        words = [rule(a, metadata) for a in args if a is not type(None)]
        return " or ".join(words) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    bounds = {
        name: getattr(part, name)
        for m in metadata
        for part in getattr(m, "metadata", [m])  # a FieldInfo holds its constraints in .metadata
        for name in ("ge", "gt", "le", "lt", "min_length", "max_length")
        if getattr(part, name, None) is not None
    }
    if origin is list:
        size = bounds.get("min_length")
        count_words = (
            f"a list of {size}"
            if size and size == bounds.get("max_length")
            else "a non-empty list"
            if size
            else "a list"
        )
        return f"{count_words} (each {rule(args[0])})"
    base = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}.get(
        annotation, str(annotation)
    )
    return f"{base} {range_words(bounds)}".strip()


def list_item(annotation: Any) -> Any:
    """The item type of the list in ``annotation`` (itself, Annotated, or a member of a union)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list:
        return args[0]
    if origin is Annotated:
        return list_item(args[0])
    lists = [list_item(a) for a in args if origin in (typing.Union, types.UnionType)]
    return next((item for item in lists if item is not None), None)


def range_words(bounds: dict[str, Any]) -> str:
    low, high = bounds.get("ge", bounds.get("gt")), bounds.get("le", bounds.get("lt"))
    if "gt" in bounds and "lt" in bounds:
        return f"in ({low}, {high})"
    if "gt" in bounds:
        return f"> {low}" + ("" if high is None else f" and <= {high}")
    if low is not None and high is not None:
        return f"in [{low}, {high}]"
    return f">= {low}" if low is not None else f"<= {high}" if high is not None else ""
