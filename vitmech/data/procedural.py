"""Procedural pretraining images: seeded scenes of one large textured shape among small distractors.

Formula-driven pretraining (Kataoka et al. 2020, FractalDB; Nakashima et al. 2022) trains ViTs on
images defined by a formula and labelled by its parameters, with no natural or galaxy images. Here the
formula is a scene: a background (colour gradient + low-frequency noise), 0-3 small solid distractor
shapes, and one large object whose *shape* and *fill texture* give the label. The label therefore
lives in one region of the image, so a model has to find the object (attention has something to do),
and it is not a galaxy: no Sersic profiles, arms or bars.

Classes: ``len(SHAPES) * len(FILLS)`` = 32, named ``"<shape>/<fill>"``; class ``k`` is shape
``k // len(FILLS)`` with fill ``k % len(FILLS)``. Image ``i`` of the stream ``seed`` has class
``i % n_classes`` (balanced) and parameters drawn from ``np.random.default_rng([seed, i])``, so an
image does not depend on the batch it is rendered in. Rendering is batched in torch (about 1 ms per
112 px image on one core).

Coordinates: shapes are implicit functions ``f(u, v) <= 0`` in the object frame (unit size, rotated,
scaled); edges are anti-aliased over one pixel. Images are uint8 ``[B, S, S, 3]``; the object's tight
box ``(x0, y0, x1, y1)`` (exclusive upper ends, top-left origin) comes with each image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Int, UInt8
from torch import Tensor

from vitmech.errors import DataError

SHAPES: tuple[str, ...] = ("disc", "ring", "square", "triangle", "cross", "star", "crescent", "ellipse")
FILLS: tuple[str, ...] = ("solid", "stripes", "checker", "dots")
PROCEDURAL_CLASSES: tuple[str, ...] = tuple(f"{s}/{f}" for s in SHAPES for f in FILLS)


@dataclass(frozen=True)
class SceneParams:
    """One scene. Lengths are fractions of the image side; angles radians; colours RGB in [0, 1]."""

    label: int
    cx: float
    cy: float
    scale: float
    angle: float
    aspect: float
    fg: tuple[float, float, float]
    fg2: tuple[float, float, float]
    bg0: tuple[float, float, float]
    bg1: tuple[float, float, float]
    bg_angle: float
    period: float
    fill_angle: float
    noise: float
    distractors: tuple[tuple[float, float, float, float, int, float, float, float], ...]
    """(cx, cy, scale, angle, shape index, r, g, b) of each small solid shape."""
    seed: int

    @property
    def shape(self) -> int:
        return self.label // len(FILLS)

    @property
    def fill(self) -> int:
        return self.label % len(FILLS)


@dataclass
class ProceduralBatch:
    """``images`` uint8 [B, S, S, 3]; ``labels`` int64 [B] indexing ``classes``; ``boxes`` the object's
    tight box per image (pixels, exclusive upper ends)."""

    images: UInt8[np.ndarray, "B S S 3"]
    labels: Int[np.ndarray, " B"]
    boxes: list[tuple[int, int, int, int]]
    classes: tuple[str, ...] = PROCEDURAL_CLASSES

    def __len__(self) -> int:
        return len(self.images)


def _colour(rng: np.random.Generator) -> tuple[float, float, float]:
    return tuple(float(c) for c in rng.uniform(0.0, 1.0, 3))  # type: ignore[return-value]  # three channels


def _luma(c: tuple[float, float, float]) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _contrasting(rng: np.random.Generator, other: tuple[float, float, float], gap: float) -> tuple[float, float, float]:
    """A random colour whose luma differs from `other`'s by at least `gap` (rejection sampling)."""
    for _ in range(64):
        c = _colour(rng)
        if abs(_luma(c) - _luma(other)) >= gap:
            return c
    return (1.0, 1.0, 1.0) if _luma(other) < 0.5 else (0.0, 0.0, 0.0)


def sample_scene(label: int, rng: np.random.Generator) -> SceneParams:
    """Parameters of one scene of class `label`."""
    if not 0 <= label < len(PROCEDURAL_CLASSES):
        raise DataError(f"label must be in [0, {len(PROCEDURAL_CLASSES)}), got {label}")
    bg0 = _colour(rng)
    bg1 = tuple(float(np.clip(c + rng.uniform(-0.25, 0.25), 0, 1)) for c in bg0)
    fg = _contrasting(rng, bg0, 0.3)
    fg2 = _contrasting(rng, fg, 0.35)
    scale = float(rng.uniform(0.22, 0.38))
    margin = scale * 0.9
    distractors = []
    for _ in range(int(rng.integers(0, 4))):
        distractors.append(
            (
                float(rng.uniform(0.08, 0.92)),
                float(rng.uniform(0.08, 0.92)),
                float(rng.uniform(0.04, 0.08)),
                float(rng.uniform(0, 2 * math.pi)),
                int(rng.integers(0, len(SHAPES))),
                *_contrasting(rng, bg0, 0.2),
            )
        )
    return SceneParams(
        label=int(label),
        cx=float(rng.uniform(margin, 1 - margin)),
        cy=float(rng.uniform(margin, 1 - margin)),
        scale=scale,
        angle=float(rng.uniform(0, 2 * math.pi)),
        aspect=float(rng.uniform(0.8, 1.0)),
        fg=fg,
        fg2=fg2,
        bg0=bg0,
        bg1=bg1,  # type: ignore[arg-type]  # three channels
        bg_angle=float(rng.uniform(0, 2 * math.pi)),
        period=float(rng.uniform(0.18, 0.32)),
        fill_angle=float(rng.uniform(0, math.pi)),
        noise=float(rng.uniform(0.01, 0.05)),
        distractors=tuple(distractors),
        seed=int(rng.integers(0, 2**31 - 1)),
    )


def sample_scenes(n: int, seed: int = 0, *, start: int = 0) -> list[SceneParams]:
    """Parameters of images ``start .. start + n - 1`` of the stream ``seed`` (class ``i % n_classes``)."""
    if n <= 0:
        raise DataError(f"n must be positive, got {n}")
    k = len(PROCEDURAL_CLASSES)
    return [sample_scene(i % k, np.random.default_rng([int(seed), int(i)])) for i in range(start, start + n)]


# ------------------------------------------------------------------------------------------ shapes


def shape_field(shape: int, u: Tensor, v: Tensor) -> Tensor:
    """Implicit function of shape `shape` in the object frame: <= 0 inside, roughly a distance
    (object units, the shape spans about [-1, 1])."""
    r = torch.sqrt(u * u + v * v)
    name = SHAPES[shape]
    if name == "disc":
        return r - 1.0
    if name == "ring":
        return (r - 0.78).abs() - 0.22
    if name == "square":
        return torch.maximum(u.abs(), v.abs()) - 0.85
    if name == "triangle":  # equilateral, apex up, inscribed radius 0.5
        d = [
            u * math.cos(a) + v * math.sin(a)
            for a in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3)
        ]
        return torch.maximum(torch.maximum(-d[0], -d[1]), -d[2]) - 0.5
    if name == "cross":
        bar_h = torch.maximum(u.abs() - 0.95, v.abs() - 0.3)
        bar_v = torch.maximum(v.abs() - 0.95, u.abs() - 0.3)
        return torch.minimum(bar_h, bar_v)
    if name == "star":  # five points
        theta = torch.atan2(v, u)
        return r - (0.55 + 0.45 * torch.cos(5 * theta).clamp_min(0) ** 2)
    if name == "crescent":
        other = torch.sqrt((u - 0.45) ** 2 + v * v) - 0.8
        return torch.maximum(r - 1.0, -other)
    if name == "ellipse":  # axis ratio 0.4 (the disc's elongated sibling)
        return torch.sqrt(u * u + (v / 0.4) ** 2) - 1.0
    raise DataError(f"unknown shape index {shape}")


def fill_pattern(fill: int, u: Tensor, v: Tensor, period: Tensor, angle: Tensor) -> Tensor:
    """Weight of the second colour in [0, 1] (solid: 0). u, v in object units; period in object units."""
    name = FILLS[fill]
    if name == "solid":
        return torch.zeros_like(u)
    c, s = torch.cos(angle), torch.sin(angle)
    a = (u * c + v * s) / period
    b = (-u * s + v * c) / period
    if name == "stripes":
        return (torch.sin(2 * math.pi * a) > 0).float()
    if name == "checker":
        return ((torch.floor(a) + torch.floor(b)) % 2).float()
    if name == "dots":
        fa, fb = a - torch.floor(a) - 0.5, b - torch.floor(b) - 0.5
        return (fa * fa + fb * fb < 0.3**2).float()
    raise DataError(f"unknown fill index {fill}")


def _column(params: list[SceneParams], name: str) -> Tensor:
    return torch.tensor([getattr(p, name) for p in params], dtype=torch.float32).view(-1, 1, 1)


def _object_frame(
    x: Tensor, y: Tensor, cx: Tensor, cy: Tensor, scale: Tensor, angle: Tensor, aspect: Tensor | float = 1.0
) -> tuple[Tensor, Tensor]:
    """Image coordinates (fractions) -> object frame (unit size)."""
    dx, dy = x - cx, y - cy
    c, s = torch.cos(angle), torch.sin(angle)
    u = (dx * c + dy * s) / scale
    v = (-dx * s + dy * c) / (scale * aspect)
    return u, v


def _coverage(field: Tensor, pixel: Tensor) -> Tensor:
    """Anti-aliased inside-ness from an implicit field: a one-pixel-wide linear ramp."""
    return (0.5 - field / pixel).clamp(0.0, 1.0)


def render_scenes(params: list[SceneParams], size: int = 112) -> ProceduralBatch:
    """Render scenes (a pure function of `params`) as uint8 [B, size, size, 3]."""
    if len(params) == 0:
        raise DataError("render_scenes got no parameters")
    if size < 16:
        raise DataError(f"size must be at least 16 px, got {size}")
    n = len(params)
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    x, y = x[None], y[None]  # [1, S, S]

    # background: linear colour gradient + low-frequency noise
    ang = _column(params, "bg_angle")
    t = ((x - 0.5) * torch.cos(ang) + (y - 0.5) * torch.sin(ang) + 0.5).clamp(0, 1)[:, None]  # [B, 1, S, S]
    bg0 = torch.tensor([p.bg0 for p in params]).view(n, 3, 1, 1)
    bg1 = torch.tensor([p.bg1 for p in params]).view(n, 3, 1, 1)
    image = bg0 * (1 - t) + bg1 * t
    gens = [torch.Generator().manual_seed(p.seed) for p in params]
    lowfreq = torch.stack([torch.randn(3, 4, 4, generator=g) for g in gens])
    image = image + 0.08 * F.interpolate(lowfreq, size=(size, size), mode="bicubic", align_corners=False)

    # distractors (solid, small), drawn before the object so the object is always on top
    for i, p in enumerate(params):
        for cx, cy, sc, a, shape, r, g, b in p.distractors:
            u, v = _object_frame(x[0], y[0], torch.tensor(cx), torch.tensor(cy), torch.tensor(sc), torch.tensor(a))
            alpha = _coverage(shape_field(int(shape), u, v), torch.tensor(1.0 / (size * sc)))
            image[i] = image[i] * (1 - alpha) + torch.tensor([r, g, b]).view(3, 1, 1) * alpha

    # the labelled object, grouped by shape and fill so each group is one vectorised call
    u, v = _object_frame(
        x,
        y,
        _column(params, "cx"),
        _column(params, "cy"),
        _column(params, "scale"),
        _column(params, "angle"),
        _column(params, "aspect"),
    )
    pixel = 1.0 / (size * _column(params, "scale"))
    alpha = torch.empty(n, size, size)
    second = torch.empty(n, size, size)
    for shape in range(len(SHAPES)):
        rows = [i for i, p in enumerate(params) if p.shape == shape]
        if rows:
            alpha[rows] = _coverage(shape_field(shape, u[rows], v[rows]), pixel[rows])
    for fill in range(len(FILLS)):
        rows = [i for i, p in enumerate(params) if p.fill == fill]
        if rows:
            period = torch.tensor([params[i].period for i in rows]).view(-1, 1, 1)
            angle = torch.tensor([params[i].fill_angle for i in rows]).view(-1, 1, 1)
            second[rows] = fill_pattern(fill, u[rows], v[rows], period, angle)
    fg = torch.tensor([p.fg for p in params]).view(n, 3, 1, 1)
    fg2 = torch.tensor([p.fg2 for p in params]).view(n, 3, 1, 1)
    colour = fg * (1 - second[:, None]) + fg2 * second[:, None]
    image = image * (1 - alpha[:, None]) + colour * alpha[:, None]

    noise = torch.stack([torch.randn(3, size, size, generator=g) for g in gens])
    image = image + _column(params, "noise")[:, None] * noise
    pixels = image.clamp(0, 1).mul(255).round().to(torch.uint8)
    inside = alpha > 0.5
    boxes = [_box(m) for m in inside]
    labels = np.array([p.label for p in params], dtype=np.int64)
    return ProceduralBatch(rearrange(pixels, "b c h w -> b h w c").numpy(), labels, boxes)


def _box(mask: Tensor) -> tuple[int, int, int, int]:
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    if len(rows) == 0:
        return (0, 0, 0, 0)
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def generate_procedural(n: int, seed: int = 0, *, start: int = 0, size: int = 112) -> ProceduralBatch:
    """Images ``start .. start + n - 1`` of the seeded stream, rendered at ``size`` px.

    Deterministic: the same (seed, index) gives the same image in any batch.
    """
    return render_scenes(sample_scenes(n, seed, start=start), size=size)


def procedural_class_index(name: str) -> int | None:
    """Index of a class name such as ``"star/dots"``, or None."""
    return PROCEDURAL_CLASSES.index(name) if name in PROCEDURAL_CLASSES else None


__all__ = [
    "FILLS",
    "PROCEDURAL_CLASSES",
    "SHAPES",
    "ProceduralBatch",
    "SceneParams",
    "fill_pattern",
    "generate_procedural",
    "render_scenes",
    "sample_scene",
    "sample_scenes",
    "shape_field",
]
