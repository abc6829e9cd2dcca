"""Write the synthetic data sets and example figures (`vitmech data`; same flags, `--help` lists them).

python experiments/00_make_datasets.py --quick
"""

from __future__ import annotations

import sys

from vitmech.cli import run_command


def main(argv: list[str] | None = None) -> int:
    return run_command("data", argv)


if __name__ == "__main__":
    sys.exit(main())
