"""docs/CLI.md, generated from the ``ohem`` command's argparse parsers: every command and option.

    python -m ohem.cli_doc > docs/CLI.md

``tests/test_cli_doc.py`` fails when docs/CLI.md differs from what this prints.
"""

from __future__ import annotations

import argparse

from ohem.cli import build_parser

HEADER = """# Command line reference

Generated from the parsers in `ohem/cli.py` by `python -m ohem.cli_doc > docs/CLI.md`; do not edit by
hand (`tests/test_cli_doc.py` fails when this file is stale). What each command does, with examples:
[USAGE.md](USAGE.md).

`ohem [--debug] COMMAND ...`: `--debug` (before or after the command) shows an error's traceback
instead of the one-line `ohem COMMAND: error: ...` (exit code 1). Multi-process training:
`torchrun --nproc_per_node K -m ohem train --config ... --out DIR`.
"""


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _option(action: argparse.Action) -> str:
    if not action.option_strings:
        name = action.metavar or action.dest
        return f"`{name}{' ...' if action.nargs in ('+', '*') else ''}`"
    flag = ", ".join(action.option_strings)
    if action.nargs == 0:
        return f"`{flag}`"
    metavar = action.metavar or (
        "{" + ",".join(map(str, action.choices)) + "}" if action.choices else action.dest.upper()
    )
    more = " ..." if action.nargs in ("+", "*") else ""
    return f"`{flag} {metavar}{more}`"


def _default(action: argparse.Action) -> str:
    if action.nargs == 0 or action.default in (None, argparse.SUPPRESS, []) or action.required:
        return ""
    value = " ".join(map(str, action.default)) if isinstance(action.default, list) else str(action.default)
    return f"`{value}`"


def render(parser: argparse.ArgumentParser | None = None) -> str:
    """The Markdown of docs/CLI.md."""
    parser = parser or build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help or "" for choice in sub._choices_actions}
    lines = [HEADER, "| command | what it does |", "|---|---|"]
    lines += [f"| [`ohem {name}`](#ohem-{name}) | {_cell(helps.get(name, ''))} |" for name in sub.choices]
    for name, command in sub.choices.items():
        lines += ["", f"## ohem {name}", "", _cell(helps.get(name, "")) + ".", ""]
        for group in command._mutually_exclusive_groups:
            names = ", ".join(f"`{a.option_strings[0]}`" for a in group._group_actions)
            lines += [f"One of {names}{' (required)' if group.required else ''}.", ""]
        lines += ["| option | required | what | default |", "|---|---|---|---|"]
        for action in command._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            required = "yes" if action.required else ""
            lines.append(f"| {_option(action)} | {required} | {_cell(action.help or '')} | {_default(action)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
