"""The "RANDOM WEIGHTS" stamp: written across every figure computed from a randomly initialised model.

`stamp_random(figure, models)` draws the words across the figure (a text artist, so it is in the pixels)
and records the models on the figure; `png_metadata(figure)` is then the PNG text chunk a saved figure
carries (`RANDOM_WEIGHTS_KEY`), so a file can be checked without looking at it. `vitmech.report.Report`
stamps every figure it saves when built with `random_weights=[...]`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

RANDOM_WEIGHTS = "RANDOM WEIGHTS"
RANDOM_WEIGHTS_KEY = "vitmech-random-weights"
"""PNG text key of a stamped figure; its value names the randomly initialised models."""

_ATTRIBUTE = "_vitmech_random_weights"


def stamp_random(figure: Any, models: Sequence[str] = ()) -> None:
    """Write RANDOM WEIGHTS across a matplotlib figure (once) and record which models were random."""
    recorded = list(getattr(figure, _ATTRIBUTE, []) or [])
    if not hasattr(figure, _ATTRIBUTE):
        figure.text(
            0.5,
            0.5,
            RANDOM_WEIGHTS,
            ha="center",
            va="center",
            rotation=25,
            fontsize=36,
            color="red",
            alpha=0.35,
            weight="bold",
            zorder=1000,
        )
    setattr(figure, _ATTRIBUTE, recorded + [m for m in models if m not in recorded])


def is_stamped(figure: Any) -> bool:
    """Whether `stamp_random` marked this figure (its text artist is present)."""
    return hasattr(figure, _ATTRIBUTE) and any(t.get_text() == RANDOM_WEIGHTS for t in figure.texts)


def png_metadata(figure: Any) -> dict[str, str]:
    """PNG text metadata for `figure.savefig(..., metadata=...)`: the stamp's models when stamped, else {}."""
    if not hasattr(figure, _ATTRIBUTE):
        return {}
    return {RANDOM_WEIGHTS_KEY: ", ".join(getattr(figure, _ATTRIBUTE)) or RANDOM_WEIGHTS}


def read_png_stamp(path: Any) -> str | None:
    """The RANDOM_WEIGHTS_KEY text of a saved PNG (None when it carries no stamp)."""
    from PIL import Image

    with Image.open(path) as image:
        return image.text.get(RANDOM_WEIGHTS_KEY) if hasattr(image, "text") else None
