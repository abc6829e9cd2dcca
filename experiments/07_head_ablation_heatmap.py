"""Ablate every head: the layer x head heatmap (`vitmech ablate`; same flags, `--help` lists them).

python experiments/07_head_ablation_heatmap.py --quick
"""

from __future__ import annotations

import sys

from vitmech.cli import run_command


def main(argv: list[str] | None = None) -> int:
    return run_command("ablate", argv)


if __name__ == "__main__":
    sys.exit(main())
