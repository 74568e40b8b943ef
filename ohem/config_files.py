"""Config files: YAML read strictly (no anchors or aliases, no repeated keys) and ``base:`` chains.

A YAML file may start from others with ``base: other.yaml`` or ``base: [a.yaml, b.yaml]`` (paths relative
to the file, later ones overriding earlier ones) and change only what differs. An alias can expand
without bound, and a repeated key would silently keep the last, so both are refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from ohem.util import one_line, regular_file


class ConfigError(ValueError):
    pass


def shown(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: an error message never quotes a huge value whole."""
    try:
        text = repr(value)
    except ValueError:  # an int of more than 4300 digits: Python refuses to write it out
        return f"an integer of {int(value.bit_length() * 0.30103):,} digits"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def cut(text: str, limit: int = 200) -> str:
    """``text`` (a name, a path) cut to ``limit`` characters for a message."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


class RefusedYAML(yaml.YAMLError):
    """YAML that ohem does not read (an anchor or alias, a repeated key), with the line it is on."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(f"line {mark.line + 1}: {problem}")


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without anchors and aliases (a "billion laughs" file of a few hundred bytes
    expands to gigabytes through them; no config needs them: ``base:`` shares settings) and without
    repeated keys in a mapping (YAML would silently keep the last)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise RefusedYAML("anchors and aliases (&name, *name) are not allowed in a config", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                earlier = first_line.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: SafeLoader's own error says so
                break
            if earlier != key_node.start_mark.line + 1:
                raise RefusedYAML(f"key {shown(key)} repeats the one on line {earlier}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 reads some numbers in exponent form (1e-4, 1.5e3: no dot or no sign) as strings; read them as floats.
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def parse_yaml(text: str) -> Any:
    """``text`` read as YAML by ``StrictLoader`` (raises ``yaml.YAMLError``)."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506  # StrictLoader is a SafeLoader
    except ValueError as e:  # an int of more than 4300 digits: Python refuses to read it
        raise yaml.YAMLError(one_line(str(e))) from None


MAX_BASES, MAX_BASE_DEPTH, MAX_BASE_READS = 16, 16, 64  # base: files per file, chain depth, files per config


def read_yaml(path: Path) -> dict[str, Any]:
    """The sections of a config file, with its ``base:`` files' sections under them."""
    merged: dict[str, Any] = {}
    for raw, _ in read_chain(path):
        merged = deep_update(merged, raw)
    return merged


def read_chain(
    path: Path, seen: tuple[Path, ...] = (), reads: list[Path] | None = None
) -> list[tuple[dict[str, Any], Path]]:
    """A config file and its ``base:`` files as (sections, file) in the order they apply: the bases first
    (later ones over earlier ones), the file last. ``reads``: the files read so far for this config (at most
    ``MAX_BASE_READS``: a fan-out of bases repeats files exponentially)."""
    reads = [] if reads is None else reads
    where = f"config {cut(str(path))}"
    reads.append(path)
    if len(reads) > MAX_BASE_READS:
        raise ConfigError(
            f"config {cut(str(reads[0]))}: its 'base' chain reads more than {MAX_BASE_READS} files (at {path}); "
            "a chain whose files name several bases reads them again and again"
        )
    try:  # a FIFO or device would block and a folder cannot be read: refused before opening
        raw = parse_yaml(regular_file(path, "config").read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{where}: cannot read: no such file") from None
    except OSError as e:
        raise ConfigError(f"{where}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where}: not UTF-8 text: {e.reason} at byte {e.start}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to read") from None
    except RefusedYAML as e:
        raise ConfigError(f"{where}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {one_line(str(e))}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of sections, got {type(raw).__name__}")
    bases = raw.pop("base", None)
    if bases is None:
        return [(raw, path)]
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{where}: 'base' must be a file path or a list of them, got {shown(bases)}")
    if len(bases) > MAX_BASES:
        raise ConfigError(f"{where}: 'base' lists {len(bases):,} files, at most {MAX_BASES}")
    if len(seen) + 1 >= MAX_BASE_DEPTH:
        raise ConfigError(f"{where}: 'base' chain more than {MAX_BASE_DEPTH} files deep (from {seen[0]})")
    chain: list[tuple[dict[str, Any], Path]] = []
    for base in bases:  # later bases override earlier ones; the file itself overrides them all
        try:
            base_path = (path.parent / base).resolve()
        except (RuntimeError, OSError) as e:  # a symbolic link loop
            raise ConfigError(f"{where}: 'base' {shown(base)}: cannot resolve ({one_line(str(e))})") from None
        if base_path in seen or base_path == path.resolve():
            raise ConfigError(f"{where}: 'base' chain loops back to {base_path}")
        chain += read_chain(base_path, (*seen, path.resolve()), reads)
    return [*chain, (raw, path)]


def deep_update(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        both_maps = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = deep_update(out[key], value) if both_maps else value
    return out
