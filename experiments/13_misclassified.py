"""Misclassified images and their maps (`vitmech misclassified`; same flags, `--help` lists them).

python experiments/13_misclassified.py --quick
"""

from __future__ import annotations

import sys

from vitmech.cli import run_command


def main(argv: list[str] | None = None) -> int:
    return run_command("misclassified", argv)


if __name__ == "__main__":
    sys.exit(main())
