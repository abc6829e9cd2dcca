"""CLS attention entropy and top-k by layer and head (`vitmech cls`; same flags, `--help` lists them).

python experiments/04_cls_attention.py --quick
"""

from __future__ import annotations

import sys

from vitmech.cli import run_command


def main(argv: list[str] | None = None) -> int:
    return run_command("cls", argv)


if __name__ == "__main__":
    sys.exit(main())
