"""docs/CLI.md is generated from the parsers (``python -m ohem.cli_doc``): it is current and names every
command and option."""

from pathlib import Path

from ohem.cli import build_parser
from ohem.cli_doc import render

DOC = Path(__file__).resolve().parent.parent / "docs" / "CLI.md"


def test_cli_doc_is_current():
    stale = "docs/CLI.md is stale: regenerate it with `python -m ohem.cli_doc > docs/CLI.md`"
    assert DOC.read_text() == render(), stale


def test_cli_doc_names_every_command_and_option():
    text = render()
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, command in sub.choices.items():
        assert f"## ohem {name}\n" in text
        for action in command._actions:
            if action.help != "==SUPPRESS==" and action.option_strings and action.dest != "help":
                assert f"`{action.option_strings[0]}" in text.split(f"## ohem {name}\n")[1].split("\n## ")[0]
