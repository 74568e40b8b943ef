"""docs/CONFIG.md, generated from the config's sections and the registered samplers: every key, what it
takes, its default and what it does (the text under each field in ``ohem/config_sections.py`` and in each
sampler's file).

    python -m ohem.config_doc > docs/CONFIG.md

``tests/test_config_doc.py`` fails when docs/CONFIG.md differs from what this prints.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ohem.config import SECTIONS, rule
from ohem.config_sections import RENAMED, RESUMABLE
from ohem.mining.sampler import SAMPLERS, SamplerBase, load_builtin_samplers

HEADER = """# Config keys

Generated from `ohem/config_sections.py` and the samplers' files by `python -m ohem.config_doc > docs/CONFIG.md`;
do not edit by hand (`tests/test_config_doc.py` fails when this file is stale).

A run's settings are a YAML file of sections; the recipes shipped in the package (`ohem recipe --list`) are
such files. `--config` takes a file or a recipe's name (`demo`, `bench`, `voc07_vgg16_ohem`, ...). A file may
start from others with `base: other.yaml` (or a list; paths relative to the file, later ones overriding earlier
ones) and change only what differs. `--set section.key=value` overrides any key, the value read as YAML
(`--set sampler.nms_iou=null`, `--set solver.steps=[800,1200]`). The file and every `--set` are merged first and
checked once: a value of the wrong type, out of its range, NaN or infinite, or a key that does not exist is a
one-line error naming the file or override that set it last, the key, the rule and the value.

The `sampler` section is the chosen sampler's own settings: `method` names it, the keys below *every sampler*
apply to all, the others only to the sampler they are listed under (a key the method lacks is an error listing
its keys). When a later file or `--set` changes `method`, the keys set for the old sampler go unless the new one
has them too. `imports: [my_module, ...]` (top level) imports those modules, from the current folder or the
Python path, before anything is read, so that a sampler registered in your own file
(`@ohem.register_sampler("name")`, docs/SAMPLERS.md, "Write your own sampler") can be named.

The sections are pydantic dataclasses (strict: `64.5` is not an integer, `'false'` not a boolean; NaN and
infinity refused; unknown keys refused). Four guarantees are ohem's own, because pydantic checks values, not
files: the YAML reader refuses anchors, aliases (a few hundred bytes can expand to gigabytes) and repeated keys
(YAML keeps the last silently), and reads `1e-4` as the number it is (YAML 1.1 reads it as a string); `base:`
chains are bounded (16 files per list, 16 deep, 64 reads); a file and its overrides are merged before pydantic
sees them, so that an error names the file or `--set` that gave the value (pydantic knows only the merged
result); and `sampler.method` picks the class the rest of the section is checked against from the registry
(including samplers registered by `imports:`), the discriminated union pydantic would build from a fixed list.

Keys marked *resume* may differ on `ohem train --resume` (how long the run goes on, what it evaluates, logs and
where it runs); every other key must match the checkpoint's.
"""


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _rows(cls: Any, names: list[str]) -> list[str]:
    rows = ["| key | takes | default | what |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if f.name not in names:
            continue
        info = cls.__pydantic_fields__[f.name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        resume = " *resume*" if info.json_schema_extra == RESUMABLE else ""
        words = _cell(rule(info.annotation, info.metadata))
        rows.append(f"| `{f.name}` | {words} | `{_yaml(default)}` | {_cell(info.description or '')}{resume} |")
    return rows


def _yaml(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


def render() -> str:
    """The Markdown of docs/CONFIG.md."""
    load_builtin_samplers()
    lines = [HEADER]
    for name, cls in SECTIONS.items():
        if cls is None:
            lines += ["## sampler", "", f"`method`: one of {', '.join(f'`{m}`' for m in SAMPLERS)}.", ""]
            lines += ["### every sampler", "", *_rows(SamplerBase, [f.name for f in dataclasses.fields(SamplerBase)])]
            base = {f.name: f.default for f in dataclasses.fields(SamplerBase)}
            for method, sampler in SAMPLERS.items():
                own = [f.name for f in dataclasses.fields(sampler) if base.get(f.name, ...) != f.default]
                doc = _cell((sampler.__doc__ or "").split("\n\n")[0])
                lines += ["", f"### {method}", "", doc, ""]
                lines += _rows(sampler, own) if own else ["No keys of its own."]
            lines.append("")
            continue
        doc = f"{_cell(cls.__doc__)}\n\n" if cls.__doc__ and not cls.__doc__.startswith(cls.__name__) else ""
        lines += [f"## {name}", "", doc + "\n".join(_rows(cls, [f.name for f in dataclasses.fields(cls)])), ""]
    lines += [
        "## Renamed keys (0.2.0)",
        "",
        "A config that still uses one of these is an error naming the new key.",
        "",
    ]
    lines += ["| was | is now |", "|---|---|", *(f"| `sampler.{old}` | `{new}` |" for old, new in RENAMED.items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
