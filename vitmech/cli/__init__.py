"""The `vitmech` command: one subcommand per study (`vitmech compare`, `vitmech ablate`, ...).

The subcommands are listed in `vitmech.cli.commands.COMMANDS` (name -> study module + one-line summary);
each study module in `vitmech.studies` defines `add_arguments(parser)` and `run(args) -> int`. Nothing heavy
(torch) is imported until a subcommand runs, so `vitmech --help` is fast.
"""

from vitmech.cli.main import main, run_command

__all__ = ["main", "run_command"]
