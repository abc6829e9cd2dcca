"""Patch 16 against patch 32 side by side (`vitmech patch-size`; same flags, `--help` lists them).

python experiments/14_patch_size.py --quick
"""

from __future__ import annotations

import sys

from vitmech.cli import run_command


def main(argv: list[str] | None = None) -> int:
    return run_command("patch-size", argv)


if __name__ == "__main__":
    sys.exit(main())
