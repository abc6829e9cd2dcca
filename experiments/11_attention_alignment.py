"""Does fine-tuning move attention onto the annotated features? (`vitmech align`; same flags, `--help` lists them).

Five phases (docs/alignment.md#the-study): baseline IoU of every model's attention with the feature masks of
held-out synthetic galaxies (bar, arms, bulge, their union); fine-tuning of each model by every tier (linear
probe, LoRA, full, attention-supervised), cached under <out>/runs (a finished run is reused with --resume, an
interrupted one resumes from its checkpoint); IoU after; change in IoU with paired t-tests, Cohen's d_z,
bootstrap CIs and Holm's correction; per feature / layer / head breakdowns and each fine-tuned model's accuracy.

    python experiments/11_attention_alignment.py --out reports/11_attention_alignment   # the shipped models
    python experiments/11_attention_alignment.py --quick                                 # one model, tiny budget
    python experiments/11_attention_alignment.py --model path/to/saved_model --steps 200 --weight 0.5
"""

from __future__ import annotations

import sys

from vitmech.cli import run_command


def main(argv: list[str] | None = None) -> int:
    return run_command("align", argv)


if __name__ == "__main__":
    sys.exit(main())
