"""Write the offline data sets (synthetic galaxies, chirp spectrograms) and, optionally, example figures.

Galaxies land in OUT/galaxies (gz2 schema + masks; read with `vitmech.data.load_gz2`), chirps in
OUT/chirps (read with `vitmech.data.load_chirps`), figures in OUT/figures (with --figures).

    vitmech data --out data --galaxies 6000 --chirps 6000
    vitmech data --galaxies 0 --chirps 0 --figures
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from vitmech.cli.args import add_run

QUICK = {"galaxies": 6, "chirps": 4}


def save_small(fig: Any, path: Path, dpi: int = 72) -> None:
    """Save a figure as an RGB PNG without alpha, at a modest resolution (noisy images compress badly)."""
    import io

    import PIL.Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    buffer.seek(0)
    PIL.Image.open(buffer).convert("RGB").save(path, optimize=True)


FEATURE_COLOURS = {
    "bulge": "gold",
    "disk": "white",
    "bar": "red",
    "arms": "cyan",
    "ring": "magenta",
    "clumps": "lime",
    "dust_lane": "orange",
}


def galaxy_figure(path: Path, seed: int = 0, per_class: int = 4) -> None:
    """Rows: the six classes; columns: examples, the last one with its feature masks and boxes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    from vitmech.data import GZ2_CLASSES
    from vitmech.data.galaxies import FEATURES, generate_galaxies

    batch = generate_galaxies(6 * per_class, seed=seed)
    fig, axes = plt.subplots(6, per_class + 1, figsize=(2.0 * (per_class + 1), 12.4))
    for row, cls in enumerate(GZ2_CLASSES):
        members = [i for i in range(len(batch)) if batch.params[i].cls == cls][:per_class]
        for col, i in enumerate(members):
            axes[row, col].imshow(batch.images[i])
        i = members[0]
        ax = axes[row, per_class]
        ax.imshow(batch.images[i])
        for name in FEATURES:
            mask, box = batch.masks[name][i], batch.boxes[name][i]
            if box is None or name == "disk":
                continue
            ax.contour(mask, levels=[0.5], colors=FEATURE_COLOURS[name], linewidths=0.8)
            x0, y0, x1, y1 = box
            ax.add_patch(
                patches.Rectangle(
                    (x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=0.6, ls="--", ec=FEATURE_COLOURS[name]
                )
            )
        axes[row, 0].set_ylabel(cls.replace("_", " "), fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, per_class].set_title("masks (80% of light) + boxes", fontsize=8)
    handles = [patches.Patch(color=c, label=n) for n, c in FEATURE_COLOURS.items() if n != "disk"]
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=8, frameon=False)
    fig.suptitle(f"Synthetic galaxies (seed {seed}), 224 px, one row per gz2 class", fontsize=10)
    fig.tight_layout(rect=(0, 0.03, 1, 0.98))
    save_small(fig, path)
    plt.close(fig)


def chirp_figure(path: Path, seed: int = 0) -> None:
    """Top: four chirps as the paper's figure, the first with every box. Bottom: raw array and the
    same chirp with the title, colour bar or axis labels switched off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    from vitmech.data.chirps import FigureStyle, figure_renderer, generate_chirp

    samples = [generate_chirp(i, seed=seed) for i in range(4)]
    fig, axes = plt.subplots(2, 4, figsize=(13, 7))
    for ax, s in zip(axes[0], samples):
        ax.imshow(s.image)
        p = s.params
        ax.set_title(f"t0 {p.start_time:.1f} s, f {p.start_freq:.0f}->{p.end_freq:.0f} Hz, {p.kind}", fontsize=8)
    for name, box in samples[0].boxes.items():
        if box is None:
            continue
        x0, y0, x1, y1 = box
        colour = "red" if name == "chirp" else "orange" if name == "axes" else "magenta"
        axes[0, 0].add_patch(patches.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=0.8, ec=colour))
    s = samples[1]
    axes[1, 0].imshow(s.spectrogram, origin="lower", cmap="viridis", aspect="auto")
    axes[1, 0].set_title("raw 128 x 128 array (freq x time)", fontsize=8)
    figure = figure_renderer(224)
    for ax, (label, style) in zip(
        axes[1, 1:],
        [
            ("no title", FigureStyle(title=False)),
            ("no colour bar", FigureStyle(colorbar=False)),
            ("no labels, no tick labels", FigureStyle(xlabel=False, ylabel=False, ticks=False)),
        ],
    ):
        image, _ = figure.render(s.spectrogram, f"Synthetic Spectrogram 1 ({s.params.kind} chirp)", style)
        ax.imshow(image)
        ax.set_title(label, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        "Synthetic chirp spectrograms (arXiv 2503.18762 design), 224 px; boxes: chirp red, "
        "axes orange, text and colour bar magenta",
        fontsize=10,
    )
    fig.tight_layout()
    save_small(fig, path)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--galaxies", type=int, default=6000, help="synthetic galaxies to write (0: none)")
    parser.add_argument("--chirps", type=int, default=6000, help="chirp spectrograms to write (0: none)")
    parser.add_argument("--render-size", type=int, default=None, help="render galaxies at this size, resize to 224")
    parser.add_argument("--no-title", action="store_true", help="chirp figures without a title")
    parser.add_argument("--no-colorbar", action="store_true", help="chirp figures without a colour bar")
    parser.add_argument("--no-axis-labels", action="store_true", help="chirp figures without axis labels")
    parser.add_argument("--figures", action="store_true", help="also draw the example figures into OUT/figures")
    parser.add_argument("--overwrite", dest="force", action="store_true", help=argparse.SUPPRESS)
    add_run(parser, device=False)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from vitmech.data.chirps import write_chirp_dataset
    from vitmech.data.galaxies import write_galaxy_dataset
    from vitmech.studies._common import start

    np.seterr(all="ignore")
    out = start(args)
    logging.getLogger("vitmech").setLevel(logging.INFO)
    if args.galaxies:
        write_galaxy_dataset(
            out / "galaxies", args.galaxies, seed=args.seed, render_size=args.render_size, overwrite=args.force
        )
    if args.chirps:
        write_chirp_dataset(
            out / "chirps",
            args.chirps,
            seed=args.seed,
            title=not args.no_title,
            colorbar=not args.no_colorbar,
            xlabel=not args.no_axis_labels,
            ylabel=not args.no_axis_labels,
            overwrite=args.force,
        )
    if args.figures:
        (out / "figures").mkdir(parents=True, exist_ok=True)
        galaxy_figure(out / "figures" / "galaxy_examples.png", seed=args.seed)
        chirp_figure(out / "figures" / "chirp_examples.png", seed=args.seed)
    print(f"data written to {out}")
    return 0
