"""docs/CONFIG.md is generated from the config's sections and the registered samplers
(``python -m ohem.config_doc``): it is current and lists every key of every section and sampler."""

import dataclasses
from pathlib import Path

from ohem.config import SECTIONS
from ohem.config_doc import render
from ohem.mining.sampler import SAMPLERS, load_builtin_samplers

DOC = Path(__file__).resolve().parent.parent / "docs" / "CONFIG.md"


def test_config_doc_is_current():
    stale = "docs/CONFIG.md is stale: regenerate it with `python -m ohem.config_doc > docs/CONFIG.md`"
    assert DOC.read_text() == render(), stale


def test_config_doc_lists_every_key_with_a_description_under_its_section_or_sampler():
    load_builtin_samplers()
    text = render()
    parts = {chunk.split("\n", 1)[0].strip(): chunk for chunk in text.split("\n## ")[1:]}
    for name, cls in SECTIONS.items():
        if cls is None:
            continue
        for f in dataclasses.fields(cls):
            assert f"| `{f.name}` |" in parts[name], f"{name}.{f.name}"
            assert cls.__pydantic_fields__[f.name].description, f"{name}.{f.name} has no description"
    samplers = {chunk.split("\n", 1)[0].strip(): chunk for chunk in parts["sampler"].split("\n### ")[1:]}
    for method, cls in SAMPLERS.items():
        assert method in samplers, method
        for f in dataclasses.fields(cls):
            assert f"| `{f.name}` |" in samplers[method] + samplers["every sampler"], f"{method}: {f.name}"
