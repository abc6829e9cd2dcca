"""Attention rollout family vs the last layer (`vitmech rollout`; same flags, `--help` lists them).

python experiments/05_attention_rollout.py --quick
"""

from __future__ import annotations

import sys

from vitmech.cli import run_command


def main(argv: list[str] | None = None) -> int:
    return run_command("rollout", argv)


if __name__ == "__main__":
    sys.exit(main())
