"""Recompute one layer's attention by hand and check it against the cache (`vitmech attention-check`; same flags, `--help` lists them).

python experiments/01_manual_attention.py --quick
"""

from __future__ import annotations

import sys

from vitmech.cli import run_command


def main(argv: list[str] | None = None) -> int:
    return run_command("attention-check", argv)


if __name__ == "__main__":
    sys.exit(main())
