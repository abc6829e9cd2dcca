"""LoRA chirp-spectrogram regressor (arXiv 2503.18762) (`vitmech finetune-chirp`; same flags, `--help` lists them).

python experiments/09_fine_tune_chirp.py --quick
"""

from __future__ import annotations

import sys

from vitmech.cli import run_command


def main(argv: list[str] | None = None) -> int:
    return run_command("finetune-chirp", argv)


if __name__ == "__main__":
    sys.exit(main())
