"""The studies behind the `vitmech` subcommands, one module each: `add_arguments(parser)` declares the
flags (from the shared vocabulary in `vitmech.cli.args`), `run(args) -> int` does the study and writes
its report folder. `experiments/NN_*.py` call the same code (`vitmech.cli.run_command`)."""
