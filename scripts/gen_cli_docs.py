"""Write docs/cli.md, the command-line reference, from the argparse parser (``recneg.cli.make_parser``).

Usage:
    python scripts/gen_cli_docs.py            # rewrite docs/cli.md
    python scripts/gen_cli_docs.py --check    # exit 1 if docs/cli.md is out of date (CI)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recneg.cli import make_parser

OUT = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
HEADER = """# Command-line reference

Generated from the argument parser by `scripts/gen_cli_docs.py`; do not edit by hand. Every command prints the
same text with `--help`. Bad input gives a one-line error and exit status 2 (see [Errors](errors.md)).

"""


def _subcommands(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub


def _section(parser: argparse.ArgumentParser, path: list[str], level: int) -> list[str]:
    out = []
    for name, help_text, sub in _subcommands(parser):
        here = [*path, name]
        sub.prog = " ".join(here)
        out.append(f"{'#' * level} `{' '.join(here)}`\n")
        if help_text:
            out.append(f"{help_text[0].upper()}{help_text[1:]}.\n")
        out.append("```text\n" + sub.format_help().rstrip() + "\n```\n")
        out += _section(sub, here, level + 1)
    return out


def render() -> str:
    import os

    os.environ["COLUMNS"] = "110"  # stable wrapping, whatever the terminal
    parser = make_parser()
    parser.prog = "recneg"
    parts = [HEADER, "```text\n" + parser.format_help().rstrip() + "\n```\n"]
    parts += _section(parser, ["recneg"], 2)
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="fail if docs/cli.md differs from the parser")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is out of date: run python scripts/gen_cli_docs.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
