"""Circuits: positional QK, composition, DLA, logit lens (`vitmech circuits`; same flags, `--help` lists them).

python experiments/08_circuits_report.py --quick
"""

from __future__ import annotations

import sys

from vitmech.cli import run_command


def main(argv: list[str] | None = None) -> int:
    return run_command("circuits", argv)


if __name__ == "__main__":
    sys.exit(main())
