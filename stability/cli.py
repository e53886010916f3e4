"""The `stability` command line: one subcommand per module in `stability.commands`."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from stability import __version__
from stability import commands as _commands
from stability.errors import UsageError


def _command_modules():
    mods = []
    for info in sorted(pkgutil.iter_modules(_commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{_commands.__name__}.{info.name}")
        if hasattr(mod, "add_arguments") and hasattr(mod, "run"):
            mods.append(mod)
    return mods


class _Parser(argparse.ArgumentParser):
    """Bad flags get one line naming the flag, and exit code 2 (argparse would also print the usage)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or with `command` given only that subcommand's flags (the others are listed with
    their help line; "" builds none): a command's flags may import what it runs on (`train`'s policies import
    torch), and `stability events` should not wait seconds for torch to load."""
    parser = _Parser(
        prog="stability",
        description="Watch LLM pretraining runs, predict loss spikes before they happen, act on them.",
    )
    parser.add_argument("--version", action="version", version=f"stability {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for mod in _command_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
        if command is None or command == mod.NAME:
            mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The top level takes no option with a value, so the first word that is not an option names the command; with
    # none (`stability --help`, `--version`) no command's flags are built ("" names no command).
    parser = build_parser(next((a for a in argv if not a.startswith("-")), ""))
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except UsageError as e:
        print(f"stability {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"stability {args.command}: interrupted", file=sys.stderr)
        return 130

