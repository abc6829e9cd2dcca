"""Dispatch `vitmech <command> [flags]` to a study module, importing only that module."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from types import ModuleType

from vitmech.cli.commands import COMMANDS

PROG = "vitmech"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout and appends each flag's default (unless None/False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        default = action.default
        if (
            "%(default)" not in help_text
            and default not in (None, False, argparse.SUPPRESS)
            and (action.option_strings or action.nargs in ("?", "*"))
        ):
            help_text += " (default: %(default)s)"
        return help_text


def top_help() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        f"usage: {PROG} COMMAND [flags]      ({PROG} COMMAND --help for its flags)",
        "",
        "Mechanistic interpretability studies of Vision Transformers. Each command writes a report folder",
        "(report.md, CSV/JSON, PNG) under --out (default runs/<command>-<time>/).",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()]
    lines += [
        "",
        "common flags: --model (repeatable) or --before/--after, --images, --labels/--targets, --out, --force,",
        "--device, --seed, --quick, --no-progress, --random-init, --resume/--restart.",
        "",
        "example (offline, shipped models):  vitmech compare --before vitmech/mini-pretrained "
        "--after vitmech/mini-galaxy --quick",
    ]
    return "\n".join(lines)


def study_module(name: str) -> ModuleType:
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, list(COMMANDS), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise SystemExit(f"{PROG}: unknown command {name!r}.{hint} Commands: {', '.join(COMMANDS)}")
    return importlib.import_module(COMMANDS[name].module)


def build_parser(name: str) -> tuple[argparse.ArgumentParser, ModuleType]:
    module = study_module(name)
    doc = (module.__doc__ or COMMANDS[name].summary).strip()
    parser = argparse.ArgumentParser(prog=f"{PROG} {name}", description=doc, formatter_class=HelpFormatter)
    module.add_arguments(parser)
    return parser, module


def run_command(name: str, argv: list[str] | None = None) -> int:
    """Parse `argv` for the study `name` and run it; returns the exit status."""
    parser, module = build_parser(name)
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--quick" in argv:
        parser.set_defaults(**getattr(module, "QUICK", {}))
    args = parser.parse_args(argv)
    args.command = name
    args.parser = parser
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from vitmech.studies._common import launch  # one process, or every rank of torchrun / accelerate launch

    threads = getattr(args, "threads", None)
    if threads:  # only when asked: the library never changes torch's thread count itself
        from vitmech.threads import torch_threads

        with torch_threads(threads):
            return launch(module, args)
    return launch(module, args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        if len(argv) > 1 and argv[0] == "help":
            return run_command(argv[1], ["--help"])
        print(top_help())
        return 0
    if argv[0] == "--version":
        from vitmech import __version__

        print(f"{PROG} {__version__}")
        return 0
    return run_command(argv[0], argv[1:])
