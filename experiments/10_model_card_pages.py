"""List the shipped models and write their card pages (`vitmech models`; same flags, `--help` lists them).

python experiments/10_model_card_pages.py --quick
"""

from __future__ import annotations

import sys

from vitmech.cli import run_command


def main(argv: list[str] | None = None) -> int:
    return run_command("models", argv)


if __name__ == "__main__":
    sys.exit(main())
