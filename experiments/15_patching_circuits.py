"""Activation patching, path patching and an EAP circuit on counterfactual galaxy pairs (`vitmech patch`;
same flags, `--help` lists them). docs/patching.md has the method.

python experiments/15_patching_circuits.py --quick
"""

from __future__ import annotations

import sys

from vitmech.cli import run_command


def main(argv: list[str] | None = None) -> int:
    return run_command("patch", argv)


if __name__ == "__main__":
    sys.exit(main())
