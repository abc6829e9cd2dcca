"""Before vs after fine-tuning: the attention comparison (`vitmech compare`; same flags).

python experiments/06_before_after_comparison.py --quick
"""

from __future__ import annotations

import sys

from vitmech.cli import run_command


def main(argv: list[str] | None = None) -> int:
    return run_command("compare", argv)


if __name__ == "__main__":
    sys.exit(main())
