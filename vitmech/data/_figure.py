"""A fast numpy + PIL look-alike of the matplotlib spectrogram figure of the chirp generator.

The public generator (arXiv 2503.18762) draws each spectrogram with ``plt.imshow(aspect='auto',
origin='lower', cmap='viridis', extent=[0, 60, 0, 100])``, axis labels, a title and
``plt.colorbar(label='Intensity')`` on matplotlib's default 6.4 x 4.8 in, 100 dpi figure (640 x 480 px),
about 0.2 s per figure. This module draws the same layout with PIL on a 640 x 480 canvas (positions
measured from matplotlib 3.x: subplot box 0.125-0.9 x 0.11-0.88, colour bar with fraction 0.15,
pad 0.05, aspect 20; DejaVu Sans 10 pt labels and 12 pt title; ticks 3.5 pt out; tick locator with
at most 9 intervals and steps 1, 2, 2.5, 5, 10; matplotlib's viridis table), then resizes it to the
output size. It reports the box of every element in output pixels.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
from jaxtyping import Float, UInt8

from vitmech.data._io import Box, scale_box
from vitmech.errors import UnknownNameError

logger = logging.getLogger(__name__)

CANVAS = (640, 480)  # matplotlib default figure: 6.4 x 4.8 in at 100 dpi
PT = 100.0 / 72.0  # pixels per point
SUBPLOT = (80.0, 57.6, 576.0, 427.2)  # x0, y0, x1, y1 of the default subplot (top-left origin)
TICK = 3.5 * PT  # tick length, and tick label pad
LABELPAD = 4.0 * PT
TITLE_PAD = 6.0 * PT
FONT_PX = 10.0 * PT
TITLE_PX = 12.0 * PT
LINE = 1  # 0.8 pt spines and ticks -> 1 px

ELEMENTS = (
    "title",
    "xlabel",
    "ylabel",
    "xticklabels",
    "yticklabels",
    "colorbar",
    "colorbar_ticklabels",
    "colorbar_label",
    "axes",
)
"""Boxes reported for each rendered figure (None when an element is switched off)."""


@dataclass(frozen=True)
class FigureStyle:
    """Which distractors the figure shows. Tick labels are part of the axes and stay unless ``ticks=False``."""

    title: bool = True
    xlabel: bool = True
    ylabel: bool = True
    colorbar: bool = True
    ticks: bool = True


@functools.cache
def _font(px: float) -> PIL.ImageFont.FreeTypeFont | PIL.ImageFont.ImageFont:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    try:
        return PIL.ImageFont.truetype(str(path), size=px)
    except OSError:  # pragma: no cover - matplotlib always ships DejaVu Sans
        logger.warning("DejaVuSans.ttf not found at %s; using PIL's default font", path)
        return PIL.ImageFont.load_default(size=px)


@functools.cache
def viridis_lut() -> UInt8[np.ndarray, "256 3"]:
    """matplotlib's 256-entry viridis table as uint8 RGB."""
    import matplotlib

    colours = matplotlib.colormaps["viridis"](np.linspace(0.0, 1.0, 256))[:, :3]
    return np.round(colours * 255.0).astype(np.uint8)


def colour_index(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """matplotlib's Normalize + 256-colour lookup index (values at vmax map to the last colour)."""
    scale = 256.0 / (vmax - vmin) if vmax > vmin else 0.0
    return np.clip(((values - vmin) * scale).astype(np.int64), 0, 255)


def nice_ticks(vmin: float, vmax: float, nbins: int = 9, steps: tuple[float, ...] = (1, 2, 2.5, 5, 10)) -> list[float]:
    """Ticks inside [vmin, vmax] as matplotlib's MaxNLocator (AutoLocator) chooses them."""
    from matplotlib.ticker import MaxNLocator

    ticks = MaxNLocator(nbins=nbins, steps=list(steps)).tick_values(vmin, vmax)
    eps = 1e-10 * max(1.0, abs(vmax - vmin))
    return [float(t) for t in ticks if vmin - eps <= t <= vmax + eps]


def format_ticks(ticks: list[float]) -> list[str]:
    """Same decimals for all ticks, as few as the values need; matplotlib's unicode minus."""
    decimals = 0
    for t in ticks:
        text = f"{t:.10f}".rstrip("0").rstrip(".")
        decimals = max(decimals, len(text.split(".")[1]) if "." in text else 0)
    out = []
    for t in ticks:
        text = f"{t:.{decimals}f}"
        if float(text) == 0.0:
            text = text.lstrip("-")
        out.append(text.replace("-", "\u2212"))
    return out


@functools.lru_cache(maxsize=4096)
def _glyphs(text: str, px: float, anchor: str) -> tuple[PIL.Image.Image, tuple[int, int], tuple[int, int, int, int]]:
    """Rendered text as an 'L' mask, its offset from the anchor point, and its ink box in the mask (cached:
    tick labels repeat)."""
    font = _font(px)
    left, top, right, bottom = (int(v) for v in font.getbbox(text, anchor=anchor))
    width, height = max(1, right - left), max(1, bottom - top)
    mask = PIL.Image.new("L", (width, height), 0)
    PIL.ImageDraw.Draw(mask).text((-left, -top), text, fill=255, font=font, anchor=anchor)
    return mask, (left, top), mask.getbbox() or (0, 0, width, height)


def _present(boxes: dict[str, tuple | None], name: str) -> tuple:
    """boxes[name], which the figure's style guarantees is drawn."""
    box = boxes[name]
    if box is None:
        raise UnknownNameError(f"the figure has no {name} box")
    return box


def _union(boxes: list[tuple[float, float, float, float]]) -> tuple[float, float, float, float] | None:
    if not boxes:
        return None
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


class SpectrogramFigure:
    """Renders ``[F, T]`` arrays (row 0 = lowest frequency) as the generator's matplotlib figure.

    ``extent`` = (t0, t1, f0, f1) of the axes in data units. Static parts (spines, ticks, tick labels,
    axis labels, colour-bar gradient) are drawn once per style and reused.
    """

    def __init__(
        self,
        size: int = 224,
        extent: tuple[float, float, float, float] = (0.0, 60.0, 0.0, 100.0),
        xlabel: str = "Time (s)",
        ylabel: str = "Frequency (Hz)",
        colorbar_label: str = "Intensity",
    ):
        self.size = size
        self.extent = extent
        self.texts = {"xlabel": xlabel, "ylabel": ylabel, "colorbar_label": colorbar_label}
        self._templates: dict[FigureStyle, tuple[PIL.Image.Image, np.ndarray, dict[str, tuple | None]]] = {}
        self._rotated: dict[str, tuple[PIL.Image.Image, tuple[int, int, int, int]]] = {}
        self.sx, self.sy = size / CANVAS[0], size / CANVAS[1]

    # ------------------------------------------------------------------ layout

    @staticmethod
    def axes_box(colorbar: bool) -> tuple[float, float, float, float]:
        """Canvas box of the image axes: the whole subplot, or its left part beside a colour bar."""
        x0, y0, x1, y1 = SUBPLOT
        if not colorbar:
            return SUBPLOT
        # make_axes_gridspec: width ratios [1 - fraction - pad, fraction], wspace = 2 pad / (1 - pad)
        fraction, pad = 0.15, 0.05
        ratios = (1.0 - fraction - pad, fraction)
        wspace = 2 * pad / (1 - pad)
        cell = (x1 - x0) / (2 + wspace)
        total = 2 * cell
        main_w = total * ratios[0] / sum(ratios)
        return (x0, y0, x0 + main_w, y1)

    @staticmethod
    def colorbar_box() -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = SUBPLOT
        fraction, pad = 0.15, 0.05
        ratios = (1.0 - fraction - pad, fraction)
        wspace = 2 * pad / (1 - pad)
        cell = (x1 - x0) / (2 + wspace)
        left = x0 + 2 * cell * ratios[0] / sum(ratios) + wspace * cell
        width = (y1 - y0) / 20.0  # aspect 20, anchored left in its cell
        return (left, y0, left + width, y1)

    def data_to_canvas(self, t: float, f: float, colorbar: bool) -> tuple[float, float]:
        """Canvas pixel of data point (t, f)."""
        x0, y0, x1, y1 = self.axes_box(colorbar)
        t0, t1, f0, f1 = self.extent
        return x0 + (t - t0) / (t1 - t0) * (x1 - x0), y1 - (f - f0) / (f1 - f0) * (y1 - y0)

    def grid_box(self, t_lo: float, t_hi: float, f_lo: float, f_hi: float, n_t: int, n_f: int, colorbar: bool) -> Box:
        """Output-pixel box of grid cells [t_lo, t_hi) x [f_lo, f_hi) of an ``[n_f, n_t]`` array."""
        t0, t1, f0, f1 = self.extent
        ta, fa = t0 + t_lo / n_t * (t1 - t0), f0 + f_lo / n_f * (f1 - f0)
        tb, fb = t0 + t_hi / n_t * (t1 - t0), f0 + f_hi / n_f * (f1 - f0)
        xa, ya = self.data_to_canvas(ta, fb, colorbar)
        xb, yb = self.data_to_canvas(tb, fa, colorbar)
        return scale_box((xa, ya, xb, yb), self.sx, self.sy, self.size, self.size)

    def _out(self, box: tuple[float, float, float, float] | None) -> Box | None:
        if box is None:
            return None
        return scale_box(box, self.sx, self.sy, self.size, self.size)

    # ------------------------------------------------------------------ drawing helpers

    def _text(self, canvas: PIL.Image.Image, xy: tuple[float, float], text: str, px: float, anchor: str) -> tuple:
        """Draw black ``text`` anchored at ``xy`` (rounded to whole pixels); return its ink box."""
        mask, (ox, oy), (bx0, by0, bx1, by1) = _glyphs(text, px, anchor)
        x, y = int(round(xy[0])) + ox, int(round(xy[1])) + oy
        canvas.paste((0, 0, 0), (x, y), mask)
        return (x + bx0, y + by0, x + bx1, y + by1)

    def _vertical_text(self, key: str, text: str) -> tuple[PIL.Image.Image, tuple[int, int, int, int]]:
        """Text rotated 90 degrees (reading upwards) as an 'L' ink mask, plus its ink box in that mask."""
        if key not in self._rotated:
            font = _font(FONT_PX)
            left, top, right, bottom = (int(v) for v in font.getbbox(text, anchor="ls"))
            width, height = right - left + 4, bottom - top + 4
            strip = PIL.Image.new("L", (width, height), 0)
            PIL.ImageDraw.Draw(strip).text((2 - left, 2 - top), text, fill=255, font=font, anchor="ls")
            rotated = strip.transpose(PIL.Image.Transpose.ROTATE_90)
            self._rotated[key] = (rotated, rotated.getbbox() or (0, 0, rotated.width, rotated.height))
        return self._rotated[key]

    def _paste_vertical(self, canvas: PIL.Image.Image, key: str, text: str, left: float, centre_y: float) -> tuple:
        mask, (bx0, by0, bx1, by1) = self._vertical_text(key, text)
        x = int(round(left)) - bx0
        y = int(round(centre_y - (by0 + by1) / 2))
        canvas.paste((0, 0, 0), (x, y), mask)
        return (x + bx0, y + by0, x + bx1, y + by1)

    def _template(self, style: FigureStyle) -> tuple[PIL.Image.Image, np.ndarray, dict[str, tuple | None]]:
        """Static canvas of a style, its downsampled copy, and the static boxes (cached)."""
        key = FigureStyle(
            title=False, xlabel=style.xlabel, ylabel=style.ylabel, colorbar=style.colorbar, ticks=style.ticks
        )
        if key in self._templates:
            return self._templates[key]
        canvas = PIL.Image.new("RGB", CANVAS, (255, 255, 255))
        draw = PIL.ImageDraw.Draw(canvas)
        boxes: dict[str, tuple | None] = {name: None for name in ELEMENTS}
        ax0, ay0, ax1, ay1 = self.axes_box(style.colorbar)
        boxes["axes"] = (ax0, ay0, ax1, ay1)
        fill = tuple(int(c) for c in viridis_lut()[64])  # stands in for the image under the spines
        draw.rectangle(
            [int(round(ax0)), int(round(ay0)), int(round(ax1)) - 1, int(round(ay1)) - 1],
            fill=fill,
            outline=(0, 0, 0),
            width=LINE,
        )
        t0, t1, f0, f1 = self.extent
        xt = nice_ticks(t0, t1)
        yt = nice_ticks(f0, f1)
        label_boxes_x, label_boxes_y = [], []
        for t, text in zip(xt, format_ticks(xt)):
            x, _ = self.data_to_canvas(t, f0, style.colorbar)
            draw.line([(x, ay1), (x, ay1 + TICK)], fill=(0, 0, 0), width=LINE)
            if style.ticks:
                label_boxes_x.append(self._text(canvas, (x, ay1 + 2 * TICK), text, FONT_PX, "ma"))
        for f, text in zip(yt, format_ticks(yt)):
            _, y = self.data_to_canvas(t0, f, style.colorbar)
            draw.line([(ax0 - TICK, y), (ax0, y)], fill=(0, 0, 0), width=LINE)
            if style.ticks:
                label_boxes_y.append(self._text(canvas, (ax0 - 2 * TICK, y + 1.65), text, FONT_PX, "rm"))
        boxes["xticklabels"], boxes["yticklabels"] = _union(label_boxes_x), _union(label_boxes_y)
        centre_x = (ax0 + ax1) / 2
        if style.xlabel:
            top = ay1 + 2 * TICK + (14.0 if style.ticks else 0.0) + LABELPAD
            boxes["xlabel"] = self._text(canvas, (centre_x, top), self.texts["xlabel"], FONT_PX, "ma")
        if style.ylabel:
            right = (boxes["yticklabels"][0] if boxes["yticklabels"] else ax0 - 2 * TICK) - LABELPAD
            mask, (bx0, _, bx1, _) = self._vertical_text("ylabel", self.texts["ylabel"])
            boxes["ylabel"] = self._paste_vertical(
                canvas, "ylabel", self.texts["ylabel"], right - (bx1 - bx0), (ay0 + ay1) / 2
            )
        if style.colorbar:
            cx0, cy0, cx1, cy1 = self.colorbar_box()
            top, bottom = int(round(cy0)), int(round(cy1))
            rows = np.linspace(1.0, 0.0, bottom - top, endpoint=False) - 0.5 / (bottom - top)
            gradient = viridis_lut()[np.clip((rows * 256).astype(int), 0, 255)]
            strip = np.repeat(gradient[:, None, :], int(round(cx1)) - int(round(cx0)), axis=1)
            canvas.paste(PIL.Image.fromarray(strip), (int(round(cx0)), top))
            draw.rectangle([int(round(cx0)), top, int(round(cx1)) - 1, bottom - 1], outline=(0, 0, 0), width=LINE)
            boxes["colorbar"] = (cx0, cy0, cx1, cy1)
        small = np.asarray(canvas.resize((self.size, self.size), PIL.Image.Resampling.BILINEAR)).copy()
        self._templates[key] = (canvas, small, boxes)
        return canvas, small, boxes

    # ------------------------------------------------------------------ public

    def render(
        self, values: Float[np.ndarray, "F T"], title: str | None = None, style: FigureStyle = FigureStyle()
    ) -> tuple[UInt8[np.ndarray, "S S 3"], dict[str, Box | None]]:
        """The figure of ``values`` (row 0 = lowest frequency) as uint8 ``[size, size, 3]``, and the
        output-pixel box (x0, y0, x1, y1; exclusive ends) of each of ``ELEMENTS`` (None if absent).
        ``title`` is drawn when ``style.title`` and it is not None."""
        template, small, static = self._template(style)
        out = small.copy()
        boxes = dict(static)
        vmin, vmax = float(values.min()), float(values.max())
        # dynamic text is drawn on a canvas copy; only the regions holding it are resampled
        if style.colorbar or (style.title and title):
            canvas = template.copy()
            draw = PIL.ImageDraw.Draw(canvas)
            if style.colorbar:
                cx0, cy0, cx1, cy1 = _present(boxes, "colorbar")
                ticks = nice_ticks(vmin, vmax)
                label_boxes = []
                for value, text in zip(ticks, format_ticks(ticks)):
                    y = cy1 - (value - vmin) / (vmax - vmin) * (cy1 - cy0) if vmax > vmin else (cy0 + cy1) / 2
                    draw.line([(cx1, y), (cx1 + TICK, y)], fill=(0, 0, 0), width=LINE)
                    if style.ticks:
                        label_boxes.append(self._text(canvas, (cx1 + 2 * TICK, y + 1.65), text, FONT_PX, "lm"))
                boxes["colorbar_ticklabels"] = _union(label_boxes)
                left = (_present(boxes, "colorbar_ticklabels")[2] if label_boxes else cx1 + 2 * TICK) + LABELPAD
                boxes["colorbar_label"] = self._paste_vertical(
                    canvas, "colorbar_label", self.texts["colorbar_label"], left, (cy0 + cy1) / 2
                )
                # right strip: from an output column clear of the image axes' filter support
                col = int(math.floor((_present(boxes, "axes")[2] + 4.0) * self.sx)) + 1
                strip = canvas.resize(
                    (self.size - col, self.size),
                    PIL.Image.Resampling.BILINEAR,
                    box=(col / self.sx, 0.0, float(CANVAS[0]), float(CANVAS[1])),
                )
                out[:, col:] = np.asarray(strip)
            if style.title and title:
                ax0, ay0, ax1, _ = _present(boxes, "axes")
                boxes["title"] = self._text(canvas, ((ax0 + ax1) / 2, ay0 - TITLE_PAD), title, TITLE_PX, "ms")
                row = int(math.floor((ay0 - 3.0) * self.sy))  # top strip, above the image axes' filter support
                strip = canvas.resize(
                    (self.size, row), PIL.Image.Resampling.BILINEAR, box=(0.0, 0.0, float(CANVAS[0]), row / self.sy)
                )
                out[:row, :] = np.asarray(strip)
        self._paste_image(out, values, vmin, vmax, _present(boxes, "axes"))
        return out, {name: self._out(box) for name, box in boxes.items()}

    def _paste_image(self, out: np.ndarray, values: np.ndarray, vmin: float, vmax: float, axes: tuple) -> None:
        """Colour-map ``values`` and resample them straight into the output pixels lying wholly inside
        the axes; then darken those pixels by the share of a 1 px spine they would contain."""
        ax0, ay0, ax1, ay1 = (axes[0] * self.sx, axes[1] * self.sy, axes[2] * self.sx, axes[3] * self.sy)
        c0, c1 = int(math.ceil(ax0)), int(math.floor(ax1))
        r0, r1 = int(math.ceil(ay0)), int(math.floor(ay1))
        rgb = viridis_lut()[colour_index(values[::-1], vmin, vmax)]  # origin='lower': top row = highest f
        n_f, n_t = values.shape
        box = (
            (c0 - ax0) / (ax1 - ax0) * n_t,
            (r0 - ay0) / (ay1 - ay0) * n_f,
            (c1 - ax0) / (ax1 - ax0) * n_t,
            (r1 - ay0) / (ay1 - ay0) * n_f,
        )
        patch = np.array(PIL.Image.fromarray(rgb).resize((c1 - c0, r1 - r0), PIL.Image.Resampling.BILINEAR, box=box))
        spine_x, spine_y = LINE * self.sx, LINE * self.sy
        shade_cols = np.ones(c1 - c0, np.float32)
        shade_rows = np.ones(r1 - r0, np.float32)
        for lo, hi, shade, first in (
            (ax0, ax0 + spine_x, shade_cols, c0),
            (ax1 - spine_x, ax1, shade_cols, c0),
            (ay0, ay0 + spine_y, shade_rows, r0),
            (ay1 - spine_y, ay1, shade_rows, r0),
        ):
            for k in range(int(math.floor(lo)), int(math.ceil(hi))):
                if 0 <= k - first < len(shade):
                    shade[k - first] *= 1.0 - max(0.0, min(hi, k + 1) - max(lo, k))
        for i in np.flatnonzero(shade_rows < 1.0):
            patch[i] = np.round(patch[i] * shade_rows[i]).astype(np.uint8)
        for j in np.flatnonzero(shade_cols < 1.0):
            patch[:, j] = np.round(patch[:, j] * shade_cols[j]).astype(np.uint8)
        out[r0:r1, c0:c1] = patch


__all__ = ["ELEMENTS", "FigureStyle", "SpectrogramFigure", "viridis_lut", "colour_index", "nice_ticks", "format_ticks"]
