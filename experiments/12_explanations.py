"""Explanation maps side by side (`vitmech explain`; same flags, `--help` lists them).

python experiments/12_explanations.py --quick
"""

from __future__ import annotations

import sys

from vitmech.cli import run_command


def main(argv: list[str] | None = None) -> int:
    return run_command("explain", argv)


if __name__ == "__main__":
    sys.exit(main())
