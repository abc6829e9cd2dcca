"""What the attention studies (`cls`, `locality`) share: their inputs (run folder, comparable models, images)
and one attention summary per model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def attention_study_inputs(args: argparse.Namespace) -> tuple[Path, list[Any], Any]:
    """(run folder, the --model models loaded comparable, the --images source)."""
    from vitmech.cli.args import models_from
    from vitmech.cli.inputs import load_images
    from vitmech.studies._common import models, start

    out = start(args)
    loaded = models(args, models_from(args), comparable=True)
    return out, loaded, load_images(args)


def summarize_models(args: argparse.Namespace, loaded: list[Any], images: Any, settings: Any) -> list[Any]:
    """`vitmech.analysis.compare.summarize_attention` of each loaded model on `images` (--batch-size, progress
    bars unless --no-progress)."""
    import torch

    from vitmech.analysis.compare import summarize_attention

    with torch.no_grad():
        return [
            summarize_attention(
                m.model,
                images,
                name=m.name,
                settings=settings,
                batch_size=args.batch_size,
                progress=not args.no_progress,
            )
            for m in loaded
        ]
