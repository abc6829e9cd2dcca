"""Fine-tune on galaxies, Galaxy Zoo 2 or your own labelled images (`vitmech finetune`; same flags, `--help` lists them).

python experiments/02_fine_tune_galaxy.py --quick
"""

from __future__ import annotations

import sys

from vitmech.cli import run_command


def main(argv: list[str] | None = None) -> int:
    return run_command("finetune", argv)


if __name__ == "__main__":
    sys.exit(main())
