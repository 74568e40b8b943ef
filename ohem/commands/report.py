"""``ohem report`` (plots of a run) and ``ohem recipe`` (a config's card)."""

from __future__ import annotations

import argparse
import sys

from ohem.util import require


def cmd_report(args: argparse.Namespace) -> int:
    require("matplotlib", "plotting")
    from ohem.report import write_report

    report = write_report(args.run_dir, args.out)
    for path in report.paths:
        print(f"wrote {path}")
    for note in report.notes:
        print(f"ohem report: note: {note}", file=sys.stderr)
    return 0


def cmd_recipe(args: argparse.Namespace) -> int:
    from ohem.recipe_card import card_for_file, render_card
    from ohem.recipes import format_recipes

    if args.list:
        if args.config or args.check or args.overrides:
            raise ValueError("--list takes no recipe, --check or --set")
        print(format_recipes(), end="")
        return 0
    if not args.config:
        raise ValueError("give a recipe name or config file (ohem recipe --list names the shipped ones)")
    card = card_for_file(args.config, args.overrides)
    print(render_card(card), end="")
    if args.check and card.different:
        names = ", ".join(row.setting for row in card.different)
        print(f"ohem recipe: {len(card.different)} setting(s) differ from the source: {names}", file=sys.stderr)
        return 1
    return 0
