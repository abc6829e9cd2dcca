"""Locality: mean attention distance per layer and head (`vitmech locality`; same flags, `--help` lists them).

python experiments/03_spatial_attention.py --quick
"""

from __future__ import annotations

import sys

from vitmech.cli import run_command


def main(argv: list[str] | None = None) -> int:
    return run_command("locality", argv)


if __name__ == "__main__":
    sys.exit(main())
