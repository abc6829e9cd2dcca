"""Synthetic galaxies with known features: one class per gz2 summary class, with masks and boxes.

Model (docs/data.md#synthetic-galaxies). Each galaxy is a sum of components in linear flux, each with an RGB
colour (redder bulge, bluer arms): Sersic spheroid/bulge ``I(R) = I_e exp(-b_n((R/R_e)^(1/n) - 1))``
with ``b_n ~ 2n - 1/3 + 4/(405n) + 46/(25515n^2)`` and elliptical ``R = sqrt(x'^2 + (y'/q)^2)``;
exponential disk; logarithmic spiral arms ``[(1 + cos(m(phi - cot(psi) ln(R/R0))))/2]^p`` on the disk;
a Sersic n ~ 0.5 bar whose ends start the arms; a Gaussian ring; Gaussian clumps; a dust lane that
dims edge-on disks. Disk, bar, arms and ring live in the disk plane, projected to axis ratio q. Then:
random rotation, small offset, log-uniform size, Gaussian PSF, Poisson + sky noise (Gaussian
approximation, variance = counts), asinh stretch to uint8.

Classes: smooth_round (n 3-5, q 0.8-1), smooth_cigar (n 1.5-4, q 0.2-0.4), smooth_inbetween (q 0.5-0.75;
not one of the six, for testing the loader's filter), edge_on_disk (disk q 0.08-0.2, small bulge,
dust lane half the time), unbarred_spiral (bulge + disk + m = 2 or 3 arms, pitch 10-35 deg, p 2-6,
q 0.6-1), barred_spiral (the same with m = 2 and a bar, q_bar 0.2-0.35, arms from its ends),
featured_without_bar_or_spiral (bulge + disk, ring and/or clumps or neither).

Masks: for every feature in ``FEATURES``, a bool ``[H, W]`` mask of the region holding
``flux_fraction`` (default 0.8) of that component's light in the noise-free, pre-PSF model: closed
forms for the Sersic/exponential components (the incomplete-gamma enclosed-light radius), the
Gaussian ring (+-z sigma) and clumps (radius sigma sqrt(-2 ln(1 - f))); arms are the ridge region
``S * taper >= arms_ridge`` inside the disk's mask; the dust lane is its +-z sigma band inside the disk's
mask. Each mask is then grown by the PSF sigma (rounded to whole pixels), so it also covers the light the
PSF spreads just outside thin features. Boxes are the masks' tight boxes. Coordinates: pixels of the final ``size`` x ``size`` image,
``(x0, y0, x1, y1)`` with exclusive upper ends, top-left origin. Absent features: empty mask, box None.

Speed: components are evaluated with torch on whole batches of one class, chunks of a large batch on
concurrent threads; on 2 CPU cores 158-280 galaxies/s at 224 px depending on the CPU
(``benchmarks/data.py``, docs/performance.md).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Features, List, Value
from datasets import Image as HFImage
from einops import rearrange
from jaxtyping import Bool, Float, Int, UInt8
from scipy.special import gammaincinv, ndtri
from torch import Tensor
from tqdm.auto import tqdm

from vitmech.data._io import Box, ShardWriter, begin_dataset, decode_image, encode_png, finish_dataset
from vitmech.data.gz2 import GZ2_CLASSES, gz2_features, gz2_votes_for
from vitmech.errors import DataError, RuntimeSettingError
from vitmech.threads import check_threads, torch_threads

logger = logging.getLogger(__name__)

GALAXY_CLASSES: tuple[str, ...] = GZ2_CLASSES
EXTRA_CLASSES: tuple[str, ...] = ("smooth_inbetween",)
ALL_CLASSES: tuple[str, ...] = GALAXY_CLASSES + EXTRA_CLASSES
FEATURES: tuple[str, ...] = ("bulge", "disk", "bar", "arms", "ring", "clumps", "dust_lane")
"""Features with masks. For smooth classes the whole spheroid is the ``bulge``."""

BASE = 224.0
"""All lengths in ``GalaxyParams`` are pixels of a 224 px image (scaled for other sizes)."""

MAX_CLUMPS = 8

PSF_SIGMA_MAX = 1.5
"""Largest PSF sigma the sampler draws (px at 224); the blur is always at least this wide (see _gaussian_blur)."""

PathLike = str | os.PathLike

# colours (linear RGB weights) before jitter
_RED = (1.0, 0.72, 0.48)
_WHITE = (0.85, 0.85, 0.9)
_BLUE = (0.5, 0.7, 1.0)


def sersic_b(n: float | np.ndarray) -> float | np.ndarray:
    """``b_n ~ 2n - 1/3 + 4/(405n) + 46/(25515 n^2)`` (Ciotti & Bertin), so R_e holds half the light."""
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n**2)


def sersic_radius_fraction(n: float | np.ndarray, fraction: float) -> float | np.ndarray:
    """Radius (in units of R_e) holding ``fraction`` of a Sersic profile's light:
    ``(P^-1(2n, f) / b_n)^n`` with P the regularised lower incomplete gamma function."""
    return (gammaincinv(2.0 * n, fraction) / sersic_b(n)) ** n


def exponential_radius_fraction(fraction: float) -> float:
    """Radius (in scale lengths h) holding ``fraction`` of an exponential disk's light: P^-1(2, f)."""
    return float(gammaincinv(2.0, fraction))


@dataclass(frozen=True)
class GalaxyParams:
    """Everything that defines one synthetic galaxy. Lengths: pixels at 224 px; angles: radians.

    Image rows grow downwards, so ``pa`` turns from +x towards +y (clockwise on screen). Disk-plane
    coordinates: rotate by ``pa``, divide the minor-axis coordinate by ``q``, rotate by ``bar_angle``.
    Amplitudes of absent components are 0.
    """

    cls: str
    """Class name, one of ``ALL_CLASSES``."""
    cx: float
    """Centre, x (px)."""
    cy: float
    """Centre, y (px)."""
    pa: float
    """Major axis angle (radians from +x towards +y)."""
    q: float
    """Projected axis ratio (minor / major) of the disk plane (smooth classes: equal to ``bulge_q``, which shapes them)."""
    bulge_amp: float = 0.0
    """Bulge (Sersic) surface brightness at its half-light radius; 0 = no bulge."""
    bulge_re: float = 10.0
    """Bulge half-light radius (px)."""
    bulge_n: float = 4.0
    """Bulge Sersic index."""
    bulge_q: float = 1.0
    """Bulge axis ratio in the image plane (its own, not the disk's)."""
    disk_amp: float = 0.0
    """Central surface brightness of the exponential disk; 0 = no disk."""
    disk_h: float = 10.0
    """Disk scale length (px, disk plane)."""
    arms_amp: float = 0.0
    """Arm light as a multiple of the disk light along the ridge; 0 = no arms."""
    arms_m: int = 2
    """Number of arms."""
    arms_pitch: float = 0.35
    """Logarithmic-spiral pitch angle (radians)."""
    arms_p: float = 4.0
    """Ridge sharpness: the arm profile is ((1 + cos phase) / 2) ** arms_p."""
    arms_r0: float = 10.0
    """Radius where the arms start (px, disk plane; they fade in around 0.9 arms_r0)."""
    bar_amp: float = 0.0
    """Bar (Sersic) surface brightness at its half-light radius; 0 = no bar."""
    bar_re: float = 10.0
    """Bar half-light radius (px, disk plane)."""
    bar_n: float = 0.5
    """Bar Sersic index (about 0.5: a flat-topped bar)."""
    bar_q: float = 0.3
    """Bar axis ratio in the disk plane."""
    bar_angle: float = 0.0
    """Angle of the bar, and of the arms' phase, in the disk plane (radians from the major axis)."""
    ring_amp: float = 0.0
    """Peak surface brightness of the Gaussian ring; 0 = no ring."""
    ring_r: float = 30.0
    """Ring radius (px, disk plane)."""
    ring_w: float = 3.0
    """Ring width, the Gaussian sigma (px, disk plane)."""
    clumps: tuple[tuple[float, float, float, float], ...] = ()
    """Clumps as (x, y, sigma, amp) in image pixels at 224."""
    dust_tau: float = 0.0
    """Fraction of the disk's and bulge's light the dust lane removes at its centre (fading along the major axis
    with a Gaussian of sigma 2 ``disk_h``); 0 = no lane."""
    dust_w: float = 1.0
    """Dust lane half-width along the minor axis, the Gaussian sigma (px)."""
    dust_off: float = 0.0
    """Offset of the dust lane from the major axis, along the minor axis (px)."""
    colours: tuple[tuple[float, float, float], ...] = (_RED, _WHITE, _BLUE, _RED, _BLUE, _BLUE)
    """RGB of bulge, disk, arms, bar, ring, clumps."""
    psf_sigma: float = 1.0
    sky: float = 40.0
    """Sky level in counts per pixel (its Poisson noise is the background noise, sigma = sqrt(sky))."""
    snr_e: float = 10.0
    """Surface brightness of the main component at its half-light radius, in sky sigmas."""
    white: float = 12.0
    """Counts that map to full white, in units of that half-light surface brightness."""
    stretch: float = 2.0
    """asinh softening, in sky sigmas."""
    noise_seed: int = 0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "GalaxyParams":
        raw = json.loads(text)
        raw["clumps"] = tuple(tuple(c) for c in raw["clumps"])
        raw["colours"] = tuple(tuple(c) for c in raw["colours"])
        return cls(**raw)


# ----------------------------------------------------------------------------------------- sampling


def _logu(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _jitter(
    rng: np.random.Generator, colour: tuple[float, float, float], amount: float = 0.08
) -> tuple[float, float, float]:
    # python floats, not np.clip on scalars (7x slower; the values are the same)
    return tuple(min(max(float(c + rng.uniform(-amount, amount)), 0.05), 1.2) for c in colour)  # type: ignore[return-value]  # three channels


def sample_galaxy_params(cls: str, rng: np.random.Generator) -> GalaxyParams:
    """Draw the parameters of one galaxy of class ``cls`` (one of ``ALL_CLASSES``)."""
    if cls not in ALL_CLASSES:
        raise DataError(f"unknown galaxy class {cls!r}; known: {list(ALL_CLASSES)}")
    common: dict[str, Any] = dict(
        cls=cls,
        cx=BASE / 2 + rng.uniform(-6, 6),
        cy=BASE / 2 + rng.uniform(-6, 6),
        pa=rng.uniform(0, np.pi),
        psf_sigma=rng.uniform(0.8, PSF_SIGMA_MAX),
        sky=rng.uniform(20, 80),
        snr_e=_logu(rng, 4, 25),
        white=rng.uniform(8, 20),
        stretch=rng.uniform(1.0, 3.0),
        noise_seed=int(rng.integers(0, 2**62)),
        colours=(
            _jitter(rng, _RED),
            _jitter(rng, _WHITE),
            _jitter(rng, _BLUE),
            _jitter(rng, (1.0, 0.8, 0.6)),
            _jitter(rng, (0.6, 0.75, 1.0)),
            _jitter(rng, (0.55, 0.75, 1.0)),
        ),
    )
    extent = _logu(rng, 30, 75)  # radius holding 80% of the main component's light, px at 224
    if cls.startswith("smooth"):
        n, q = {
            "smooth_round": (rng.uniform(3, 5), rng.uniform(0.8, 1.0)),
            "smooth_cigar": (rng.uniform(1.5, 4), rng.uniform(0.2, 0.4)),
            "smooth_inbetween": (rng.uniform(2, 5), rng.uniform(0.5, 0.75)),
        }[cls]
        re = extent / float(sersic_radius_fraction(n, 0.8))
        return GalaxyParams(q=q, bulge_amp=1.0, bulge_re=re, bulge_n=n, bulge_q=q, **common)
    h = extent / exponential_radius_fraction(0.8)
    if cls == "edge_on_disk":
        q = rng.uniform(0.08, 0.2)
        dusty = rng.uniform() < 0.5
        return GalaxyParams(
            q=q,
            disk_amp=1.0,
            disk_h=h,
            bulge_amp=rng.uniform(0.3, 1.2),
            bulge_re=h * rng.uniform(0.25, 0.5),
            bulge_n=rng.uniform(1.0, 2.5),
            bulge_q=rng.uniform(0.5, 0.8),
            dust_tau=rng.uniform(0.6, 0.9) if dusty else 0.0,
            dust_w=max(0.6, q * h * rng.uniform(0.25, 0.45)),
            dust_off=q * h * rng.uniform(-0.3, 0.3),
            **common,
        )
    q = rng.uniform(0.6, 1.0) if cls != "featured_without_bar_or_spiral" else rng.uniform(0.5, 1.0)
    bulge: dict[str, Any] = dict(
        bulge_amp=rng.uniform(0.6, 2.0),
        bulge_re=h * rng.uniform(0.15, 0.3),
        bulge_n=rng.uniform(1.0, 4.0),
        bulge_q=min(1.0, q + rng.uniform(0.0, 0.3)),
    )
    if cls == "featured_without_bar_or_spiral":
        ring = rng.uniform() < 0.5
        n_clumps = int(rng.integers(3, MAX_CLUMPS + 1)) if rng.uniform() < 0.5 else 0
        clumps = []
        for _ in range(n_clumps):
            r, t = h * rng.uniform(0.6, 2.5), rng.uniform(0, 2 * np.pi)
            a, b = r * np.cos(t), r * np.sin(t) * q  # disk plane -> projected, major axis frame
            x = common["cx"] + a * np.cos(common["pa"]) - b * np.sin(common["pa"])
            y = common["cy"] + a * np.sin(common["pa"]) + b * np.cos(common["pa"])
            clumps.append((float(x), float(y), rng.uniform(1.5, 3.0), rng.uniform(0.6, 1.2)))
        return GalaxyParams(
            q=q,
            disk_amp=1.0,
            disk_h=h,
            **bulge,
            ring_amp=rng.uniform(0.5, 1.0) if ring else 0.0,
            ring_r=h * rng.uniform(1.2, 2.4),
            ring_w=h * rng.uniform(0.12, 0.25),
            clumps=tuple(clumps),
            **common,
        )
    spiral: dict[str, Any] = dict(
        arms_amp=rng.uniform(1.0, 2.0), arms_pitch=np.deg2rad(rng.uniform(10, 35)), arms_p=rng.uniform(2, 6)
    )
    if cls == "unbarred_spiral":
        return GalaxyParams(
            q=q,
            disk_amp=rng.uniform(0.4, 0.8),
            disk_h=h,
            **bulge,
            **spiral,
            arms_m=2 if rng.uniform() < 0.7 else 3,
            arms_r0=max(6.0, bulge["bulge_re"] * rng.uniform(1.5, 2.5)),
            bar_angle=rng.uniform(0, 2 * np.pi),
            **common,
        )
    # barred_spiral: bar in the disk plane, arms start at its ends
    bar_n = rng.uniform(0.4, 0.6)
    bar_end = h * rng.uniform(1.1, 1.8)
    bar_re = bar_end / float(sersic_radius_fraction(bar_n, 0.95))
    bulge["bulge_re"] = min(bulge["bulge_re"], 0.35 * bar_end)
    bulge["bulge_amp"] = rng.uniform(0.3, 1.0)
    return GalaxyParams(
        q=q,
        disk_amp=rng.uniform(0.4, 0.8),
        disk_h=h,
        **bulge,
        **spiral,
        arms_m=2,
        arms_r0=bar_end,
        bar_amp=rng.uniform(0.6, 1.2),
        bar_re=bar_re,
        bar_n=bar_n,
        bar_q=rng.uniform(0.2, 0.35),
        bar_angle=rng.uniform(0, 2 * np.pi),
        **common,
    )


def galaxy_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of image ``index`` under ``seed`` (images are independent of batch layout)."""
    return np.random.default_rng([int(seed), int(index)])


@dataclass(frozen=True)
class GalaxyStream:
    """The endless seeded stream of synthetic galaxies that every generator here draws windows of.

    Image i has class ``classes[i % len(classes)]`` (balanced) or, with ``class_weights``, a class drawn from
    its own generator; its parameters come from ``galaxy_rng(seed, i)``, so image i is the same whatever
    window or batch it is drawn in. Classes and weights are checked when the stream is made.

    >>> stream = GalaxyStream(seed=3, classes=("smooth_round", "barred_spiral"))
    >>> [p.cls for p in stream.params(3, start=1)]
    ['barred_spiral', 'smooth_round', 'barred_spiral']
    >>> stream.params(2, start=2) == stream.params(3, start=1)[1:]
    True
    """

    seed: int = 0
    classes: Sequence[str] = GALAXY_CLASSES
    class_weights: Sequence[float] | None = None

    def __post_init__(self) -> None:
        for cls in self.classes:
            if cls not in ALL_CLASSES:
                raise DataError(f"unknown galaxy class {cls!r}; known: {list(ALL_CLASSES)}")
        if self.class_weights is not None:
            w = np.asarray(self.class_weights, dtype=float)
            if w.shape != (len(self.classes),) or (w < 0).any() or w.sum() <= 0:
                raise DataError(
                    f"class_weights must be {len(self.classes)} non-negative numbers, got {self.class_weights}"
                )

    def params(self, n: int, start: int = 0) -> list[GalaxyParams]:
        """Parameters of images ``start .. start + n - 1``."""
        weights = None if self.class_weights is None else np.asarray(self.class_weights, dtype=float)
        if weights is not None:
            weights = weights / weights.sum()
        out = []
        for i in range(start, start + n):
            rng = galaxy_rng(self.seed, i)
            if weights is None:
                cls = self.classes[i % len(self.classes)]
            else:
                cls = self.classes[int(rng.choice(len(self.classes), p=weights))]
            out.append(sample_galaxy_params(cls, rng))
        return out


# ----------------------------------------------------------------------------------------- rendering


@dataclass
class GalaxyBatch:
    """Rendered galaxies. ``images`` uint8 ``[B, H, W, 3]``; ``masks[f]`` bool ``[B, H, W]``;
    ``boxes[f][i]`` a Box or None; ``labels`` index into ``classes``; ``linear`` (if asked) the
    float ``[B, 3, H, W]`` image before the stretch (noise-free when ``noise=False``), in counts."""

    images: UInt8[np.ndarray, "B H W 3"]
    labels: Int[np.ndarray, " B"]
    classes: tuple[str, ...]
    masks: dict[str, Bool[np.ndarray, "B H W"]]
    boxes: dict[str, list[Box | None]]
    params: list[GalaxyParams]
    linear: Float[np.ndarray, "B 3 H W"] | None = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def class_names(self) -> list[str]:
        return [p.cls for p in self.params]


def _col(params: Sequence[GalaxyParams], name: str) -> Tensor:
    return torch.tensor([getattr(p, name) for p in params], dtype=torch.float32).view(-1, 1, 1)


def _gaussian_blur(
    x: Float[Tensor, "B C H W"], sigma: Float[Tensor, " B"], min_radius: int = 0
) -> Float[Tensor, "B C H W"]:
    """Separable Gaussian blur with one sigma (pixels) per image, reflect padding.

    Each image's kernel is cut at its own radius ceil(3 sigma) (zeros beyond) and the convolution is
    max(min_radius, largest radius) wide, so an image blurs the same whatever else is in the batch as
    long as no sigma needs more than `min_radius` (reflect padding of any width agrees near the edge).
    """
    b, c, h, w = x.shape
    own = torch.ceil(3.0 * sigma).clamp_min(0)
    radius = max(int(min_radius), int(own.max()))
    if radius < 1:
        return x
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (t.view(1, -1) / sigma.clamp_min(1e-6).view(-1, 1)) ** 2)
    kernel = torch.where(t.abs().view(1, -1) <= own.view(-1, 1), kernel, torch.zeros(()))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # [B, K]
    kernel = kernel.repeat_interleave(c, dim=0)  # [B*C, K]
    flat = rearrange(x, "b c h w -> 1 (b c) h w")
    flat = F.pad(flat, (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(b * c, 1, 1, -1), groups=b * c)
    flat = F.conv2d(flat, kernel.view(b * c, 1, -1, 1), groups=b * c)
    return rearrange(flat, "1 (b c) h w -> b c h w", b=b)


def _sersic(r: Tensor, re: Tensor, n: Tensor) -> Tensor:
    b = torch.as_tensor(sersic_b(n.numpy()))
    return torch.exp(-b * (torch.exp(torch.log(r / re + 1e-6) / n) - 1.0))


def _elliptical_sersic(
    params: Sequence[GalaxyParams], component: str, x: Tensor, y: Tensor, flux_fraction: float
) -> tuple[Float[Tensor, "G R R"], Bool[Tensor, "G R R"]]:
    """Light of an elliptical Sersic component (``component`` is "bulge" or "bar": its ``_amp``, ``_q``, ``_re``,
    ``_n`` parameters) on major/minor-axis coordinates ``x``, ``y`` (px at 224), and the mask of the ellipse
    holding ``flux_fraction`` of its light (empty where the amplitude is 0)."""
    amp, q, re, n = (_col(params, f"{component}_{name}") for name in ("amp", "q", "re", "n"))
    r = torch.sqrt(x**2 + (y / q) ** 2)
    r_flux = torch.as_tensor(sersic_radius_fraction(n.numpy(), flux_fraction), dtype=torch.float32) * re
    return amp * _sersic(r, re, n), (r <= r_flux) & (amp > 0)


def reference_level(p: GalaxyParams) -> float:
    """Model surface brightness of the main component at its half-light radius (spheroid for smooth
    classes, disk otherwise): the unit that ``snr_e`` and ``white`` scale."""
    level = p.bulge_amp if p.cls.startswith("smooth") else p.disk_amp * math.exp(-float(sersic_b(1.0)))
    return level if level > 0 else 1.0


def _render_group(
    params: Sequence[GalaxyParams], res: int, flux_fraction: float, arms_ridge: float
) -> tuple[Float[Tensor, "G K R R"], Float[Tensor, "G K 3"], dict[str, Bool[Tensor, "G R R"]]]:
    """Noise-free, pre-PSF components (light of each of K components), their RGB colours, and the masks
    of the features present, for galaxies sharing one class, at ``res`` px."""
    g = len(params)
    scale = BASE / res
    coords = (torch.arange(res, dtype=torch.float32) + 0.5) * scale
    xs, ys = coords.view(1, 1, res), coords.view(1, res, 1)
    dx, dy = xs - _col(params, "cx"), ys - _col(params, "cy")
    pa = _col(params, "pa")
    cos_pa, sin_pa = torch.cos(pa), torch.sin(pa)
    u = dx * cos_pa + dy * sin_pa  # major axis
    v = -dx * sin_pa + dy * cos_pa  # minor axis
    colours = torch.tensor([p.colours for p in params], dtype=torch.float32)  # [G, 6, 3]
    components: list[Tensor] = []
    colour_index: list[int] = []
    masks: dict[str, Tensor] = {}  # only the features present in this group
    cls = params[0].cls
    f = flux_fraction
    present = lambda name: any(getattr(p, name) > 0 for p in params)  # noqa: E731

    def add(component: Tensor, index: int) -> None:
        components.append(component)
        colour_index.append(index)

    def mix() -> tuple[Tensor, Tensor]:  # components [G, K, R, R], their colours [G, K, 3]
        if not components:  # every amplitude zero: a blank image
            return torch.zeros(g, 1, res, res), torch.zeros(g, 1, 3)
        return torch.stack(components, dim=1), colours[:, colour_index]

    # bulge / spheroid: Sersic in the image plane with its own axis ratio
    if present("bulge_amp"):
        light, masks["bulge"] = _elliptical_sersic(params, "bulge", u, v, f)
        add(light, 0)
    if cls.startswith("smooth"):
        return (*mix(), masks)

    # disk plane
    q = _col(params, "q")
    a0, b0 = u, v / q
    r_d = torch.sqrt(a0**2 + b0**2).clamp_min(1e-3)
    h = _col(params, "disk_h")
    disk = torch.exp(-r_d / h)
    r_disk = exponential_radius_fraction(f) * h
    disk_mask = r_d <= r_disk
    if present("disk_amp"):
        add(_col(params, "disk_amp") * disk, 1)
        masks["disk"] = disk_mask & (_col(params, "disk_amp") > 0)
    if present("dust_tau"):  # dims disk and bulge along a band parallel to the major axis
        tau, w, off = _col(params, "dust_tau"), _col(params, "dust_w"), _col(params, "dust_off")
        z = (v - off) / w
        depth = tau * torch.exp(-0.5 * z**2) * torch.exp(-0.5 * (u / (2.0 * h)) ** 2)
        for component in components:  # only bulge and disk exist at this point
            component.mul_(1.0 - depth)
        masks["dust_lane"] = (z.abs() <= float(ndtri(0.5 + f / 2))) & disk_mask & (tau > 0)
    if present("arms_amp") or present("bar_amp"):
        beta = _col(params, "bar_angle")
        a = a0 * torch.cos(beta) + b0 * torch.sin(beta)
        b = -a0 * torch.sin(beta) + b0 * torch.cos(beta)
    if present("arms_amp"):
        m, pitch, p, r0 = (
            _col(params, "arms_m"),
            _col(params, "arms_pitch"),
            _col(params, "arms_p"),
            _col(params, "arms_r0"),
        )
        phi = torch.atan2(b, a)
        phase = m * (phi - torch.log(r_d / r0) / torch.tan(pitch))
        ridge = ((1.0 + torch.cos(phase)) * 0.5) ** p
        taper = torch.sigmoid((r_d - 0.9 * r0) / (0.12 * r0))
        shape = ridge * taper
        add(_col(params, "arms_amp") * disk * shape, 2)
        masks["arms"] = (shape >= arms_ridge) & disk_mask & (_col(params, "arms_amp") > 0)
    if present("bar_amp"):
        light, masks["bar"] = _elliptical_sersic(params, "bar", a, b, f)
        add(light, 3)
    if present("ring_amp"):
        ring_r, ring_w = _col(params, "ring_r"), _col(params, "ring_w")
        z = (r_d - ring_r) / ring_w
        add(_col(params, "ring_amp") * torch.exp(-0.5 * z**2), 4)
        masks["ring"] = (z.abs() <= float(ndtri(0.5 + f / 2))) & (_col(params, "ring_amp") > 0)
    if any(p.clumps for p in params):
        table = torch.zeros(g, MAX_CLUMPS, 4)
        for i, galaxy in enumerate(params):
            if galaxy.clumps:
                table[i, : len(galaxy.clumps)] = torch.tensor(galaxy.clumps, dtype=torch.float32)
        clump_light = torch.zeros(g, res, res)
        clump_mask = torch.zeros(g, res, res, dtype=torch.bool)
        r_clump = math.sqrt(-2.0 * math.log(1.0 - f))  # in clump sigmas
        for k in range(MAX_CLUMPS):
            cx, cy, s, amp = (table[:, k, j].view(g, 1, 1) for j in range(4))
            if not bool((amp > 0).any()):
                continue
            s = s.clamp_min(1e-3)
            dx2, dy2 = ((xs - cx) / s) ** 2, ((ys - cy) / s) ** 2  # [G, 1, R], [G, R, 1]: separable
            clump_light += (amp * torch.exp(-0.5 * dx2)) * torch.exp(-0.5 * dy2)
            clump_mask |= ((dx2 + dy2) <= r_clump**2) & (amp > 0)
        add(clump_light, 5)
        masks["clumps"] = clump_mask
    return (*mix(), masks)


Threads = int | None


def resolve_threads(n: Threads) -> int | None:
    """The thread count of a ``num_threads=`` option: a positive int, or None (keep torch's setting)."""
    try:
        return check_threads(n)
    except RuntimeSettingError as err:
        raise DataError(str(err)) from None


RENDER_CHUNK = 48
"""Galaxies per task when rendering on several threads (measured best for 192 galaxies on 2 cores: 32-48)."""


def render_galaxies(
    params: Sequence[GalaxyParams],
    *,
    size: int = 224,
    render_size: int | None = None,
    noise: bool = True,
    flux_fraction: float = 0.8,
    arms_ridge: float = 0.25,
    return_linear: bool = False,
    num_threads: Threads = None,
) -> GalaxyBatch:
    """Render galaxies (a pure function of ``params``). ``render_size`` (e.g. 424, like the gz2 JPEGs)
    renders larger and resizes to ``size`` (antialiased bilinear; masks by area share >= 0.5).
    ``noise=False`` skips the Poisson + sky noise (for tests). Labels index ``GALAXY_CLASSES`` (or
    ``ALL_CLASSES`` when a batch holds ``smooth_inbetween``). ``num_threads``: None (default) renders on
    the caller's torch thread setting, untouched; an int asks for that many threads.

    With ``num_threads`` >= 2 and more than ``2 * RENDER_CHUNK`` galaxies, chunks of ``RENDER_CHUNK`` render
    concurrently, each on one torch thread (the GIL is released inside torch's ops): 1.3-1.5x the rate of
    torch's own intra-op threads on 2 cores, whose per-op overhead dominates these small elementwise ops.
    Results do not depend on the threads or the chunking (each image is a function of its own params).
    """
    threads = resolve_threads(num_threads)

    def render(chunk: Sequence[GalaxyParams]) -> GalaxyBatch:
        return _render(chunk, size, render_size, noise, flux_fraction, arms_ridge, return_linear)

    if threads is None or threads < 2 or len(params) < 2 * RENDER_CHUNK:
        with torch_threads(threads):
            return render(params)
    chunks = [params[i : i + RENDER_CHUNK] for i in range(0, len(params), RENDER_CHUNK)]
    with torch_threads(1), ThreadPoolExecutor(threads) as pool:
        return _concatenate(list(pool.map(render, chunks)))


def _concatenate(parts: Sequence[GalaxyBatch]) -> GalaxyBatch:
    """One batch from consecutive rendered chunks. The six gz2 classes have the same indices in
    GALAXY_CLASSES and ALL_CLASSES, so labels stay valid when one chunk needed ALL_CLASSES."""
    classes = ALL_CLASSES if any(p.classes == ALL_CLASSES for p in parts) else GALAXY_CLASSES
    linear = None if parts[0].linear is None else np.concatenate([p.linear for p in parts])
    return GalaxyBatch(
        np.concatenate([p.images for p in parts]),
        np.concatenate([p.labels for p in parts]),
        classes,
        {name: np.concatenate([p.masks[name] for p in parts]) for name in parts[0].masks},
        {name: [box for p in parts for box in p.boxes[name]] for name in parts[0].boxes},
        [q for p in parts for q in p.params],
        linear,
    )


def _render(
    params: Sequence[GalaxyParams],
    size: int,
    render_size: int | None,
    noise: bool,
    flux_fraction: float,
    arms_ridge: float,
    return_linear: bool,
) -> GalaxyBatch:
    if len(params) == 0:
        raise DataError("render_galaxies got no parameters")
    if not 0.0 < flux_fraction < 1.0:
        raise DataError(f"flux_fraction must be in (0, 1), got {flux_fraction}")
    res = render_size or size
    n = len(params)
    by_class: dict[str, list[int]] = {}
    for i, p in enumerate(params):
        by_class.setdefault(p.cls, []).append(i)
    out_images = np.empty((n, size, size, 3), dtype=np.uint8)
    out_masks = {name: np.zeros((n, size, size), dtype=bool) for name in FEATURES}
    out_boxes: dict[str, list[Box | None]] = {name: [None] * n for name in FEATURES}
    out_linear = np.empty((n, 3, size, size), dtype=np.float32) if return_linear else None
    for index in by_class.values():
        group = [params[i] for i in index]
        rows = np.asarray(index)
        components, colours, group_masks = _render_group(group, res, flux_fraction, arms_ridge)
        radius = torch.tensor([round(p.psf_sigma * res / BASE) for p in group])
        group_masks = {name: _dilate(m, radius) for name, m in group_masks.items()}
        # PSF and colour mixing are both linear: blur the K components (often fewer than 3 channels)
        blurred = _gaussian_blur(
            components,
            torch.tensor([p.psf_sigma * res / BASE for p in group]),
            min_radius=math.ceil(3.0 * PSF_SIGMA_MAX * res / BASE),
        )
        counts = torch.einsum("gkhw,gkc->gchw", blurred, colours)
        sky = _col(group, "sky").view(-1, 1, 1, 1)
        sigma = torch.sqrt(sky)
        snr = _col(group, "snr_e").view(-1, 1, 1, 1)
        ref = torch.tensor([reference_level(p) for p in group], dtype=torch.float32).view(-1, 1, 1, 1)
        counts.mul_(snr * sigma / ref)
        if noise:
            gens = [torch.Generator().manual_seed(p.noise_seed) for p in group]
            eps = torch.stack([torch.randn(3, res, res, generator=gen) for gen in gens])
            counts.add_(torch.sqrt(counts + sky).mul_(eps))
        soft = _col(group, "stretch").view(-1, 1, 1, 1) * sigma
        top = _asinh_pos(_col(group, "white").view(-1, 1, 1, 1) * snr * sigma / soft)
        stretched = _asinh_pos(counts / soft).div_(top).clamp_(0.0, 1.0)
        if res != size:
            stretched = F.interpolate(
                stretched, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
            if return_linear:
                counts = F.interpolate(counts, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            for name, m in group_masks.items():
                area = F.interpolate(m.unsqueeze(1).float(), size=(size, size), mode="area")
                group_masks[name] = area.squeeze(1) >= 0.5
        pixels = stretched.mul_(255.0).round_().to(torch.uint8)
        out_images[rows] = rearrange(pixels, "b c h w -> b h w c").numpy()
        if out_linear is not None:
            out_linear[rows] = counts.numpy()
        for name, m in group_masks.items():
            out_masks[name][rows] = m.numpy()
            for i, box in zip(index, _boxes(m)):
                out_boxes[name][i] = box
    classes = GALAXY_CLASSES if all(p.cls in GALAXY_CLASSES for p in params) else ALL_CLASSES
    labels = np.array([classes.index(p.cls) for p in params], dtype=np.int64)
    return GalaxyBatch(out_images, labels, classes, out_masks, out_boxes, list(params), out_linear)


def _dilate(masks: Bool[Tensor, "G R R"], radius: Int[Tensor, " G"]) -> Bool[Tensor, "G R R"]:
    """Grow each mask by its own radius in pixels, so a mask drawn on the pre-PSF model also covers the
    light the PSF spreads just outside it. Each step is a 3 x 3 dilation (a max-pool that does not reach
    beyond the edge) done as ORs of one-pixel shifts along each axis: about 12x faster than max_pool2d."""
    out = masks
    for step in range(1, int(radius.max()) + 1 if len(radius) else 1):
        tall = out.clone()
        tall[:, 1:] |= out[:, :-1]
        tall[:, :-1] |= out[:, 1:]
        wide = tall.clone()
        wide[:, :, 1:] |= tall[:, :, :-1]
        wide[:, :, :-1] |= tall[:, :, 1:]
        out = torch.where((radius >= step).view(-1, 1, 1), wide, out)
    return out


def _asinh_pos(x: Tensor) -> Tensor:
    """asinh on max(x, 0) as log(x + sqrt(x^2 + 1)) (several times faster than torch.asinh on CPU)."""
    x = x.clamp_min(0.0)
    return torch.log(x + torch.sqrt(x * x + 1.0))


def _boxes(masks: Bool[Tensor, "B H W"]) -> list[Box | None]:
    """Tight boxes of a batch of masks, vectorised (exclusive upper ends; None for empty masks)."""
    h, w = masks.shape[1:]
    rows, cols = masks.any(dim=2).to(torch.uint8), masks.any(dim=1).to(torch.uint8)  # [B, H], [B, W]
    nonempty = rows.any(dim=1).tolist()
    y0, y1 = rows.argmax(dim=1), h - rows.flip(1).argmax(dim=1)
    x0, x1 = cols.argmax(dim=1), w - cols.flip(1).argmax(dim=1)
    coords = torch.stack([x0, y0, x1, y1], dim=1).tolist()
    return [tuple(c) if ok else None for c, ok in zip(coords, nonempty)]


def generate_galaxies(
    n: int,
    seed: int = 0,
    *,
    start: int = 0,
    classes: Sequence[str] = GALAXY_CLASSES,
    class_weights: Sequence[float] | None = None,
    **render_options: Any,
) -> GalaxyBatch:
    """Images ``start .. start + n - 1`` of the seeded stream (see ``GalaxyStream``), rendered in one batch
    by ``render_galaxies``, whose keyword arguments ``render_options`` are (size=224, render_size, noise,
    flux_fraction, arms_ridge, return_linear, num_threads). Deterministic: the same (seed, index) gives the same
    image whatever the batch it is rendered in."""
    if n <= 0:
        raise DataError(f"n must be positive, got {n}")
    params = GalaxyStream(seed, classes, class_weights).params(n, start)
    return render_galaxies(params, **render_options)


def iter_galaxies(
    n: int, seed: int = 0, *, batch_size: int = 64, progress: bool = False, **kwargs: Any
) -> Iterator[GalaxyBatch]:
    """``generate_galaxies`` in batches of ``batch_size`` (same images as one big call)."""
    start0 = kwargs.pop("start", 0)
    bar = tqdm(total=n, desc="galaxies", unit="img", disable=not progress)
    for offset in range(0, n, batch_size):
        batch = generate_galaxies(min(batch_size, n - offset), seed, start=start0 + offset, **kwargs)
        bar.update(len(batch))
        yield batch
    bar.close()


# ----------------------------------------------------------------------------------------- dataset


def pack_masks(masks: Mapping[str, Bool[np.ndarray, "H W"]]) -> UInt8[np.ndarray, "H W"]:
    """Pack the feature masks of one image into one uint8 array: bit k (value 2**k) is ``FEATURES[k]``."""
    packed = np.zeros(next(iter(masks.values())).shape, dtype=np.uint8)
    for k, name in enumerate(FEATURES):
        if name in masks:
            packed |= masks[name].astype(np.uint8) << k
    return packed


def unpack_masks(packed: Any) -> dict[str, Bool[np.ndarray, "H W"]]:
    """Inverse of ``pack_masks``; accepts the uint8 array, a PIL image or a stored HF image dict."""
    if isinstance(packed, dict) or hasattr(packed, "getpixel"):
        packed = np.asarray(decode_image(packed, mode=None))
    packed = np.asarray(packed, dtype=np.uint8)
    return {name: (packed >> k) & 1 == 1 for k, name in enumerate(FEATURES)}


def galaxy_features() -> Features:
    """gz2 schema plus ``masks`` (greyscale PNG, bit k = ``FEATURES[k]``, see ``unpack_masks``),
    ``box_{feature}`` (4 int32, or None when the feature is absent) and ``params`` (JSON of GalaxyParams)."""
    extra: dict[str, Any] = {"masks": HFImage()}
    for name in FEATURES:
        extra[f"box_{name}"] = List(Value("int32"), length=4)
    extra["params"] = Value("string")
    return gz2_features(extra)


def write_galaxy_dataset(
    path: PathLike,
    n: int,
    seed: int = 0,
    *,
    test_fraction: float = 0.1,
    classes: Sequence[str] = GALAXY_CLASSES,
    class_weights: Sequence[float] | None = None,
    size: int = 224,
    render_size: int | None = None,
    batch_size: int = 64,
    shard_size: int = 1000,
    overwrite: bool = False,
    progress: bool = True,
    num_threads: Threads = None,
) -> Path:
    """Write ``n`` synthetic galaxies in the gz2 schema (+ packed masks, boxes, params) as hub-style parquet
    shards ``data/train-*.parquet`` and ``data/test-*.parquet`` (PNG images), readable by ``load_gz2``.

    Rows ``0 .. n_test - 1`` of the seeded stream form ``test`` (``n_test = round(n * test_fraction)``),
    the rest ``train``; the ``summary`` column holds the class (include ``"smooth_inbetween"`` in
    ``classes`` to exercise the loader's filter). Writes ``vitmech_dataset.json`` with the settings.
    """
    root = Path(path)
    lock = begin_dataset(root, overwrite)  # one writer; a kill from here on leaves a folder loaders refuse
    if n <= 0:
        raise DataError(f"n must be positive, got {n}")
    n_test = int(round(n * test_fraction))
    if not 0 <= n_test < n:
        raise DataError(f"test_fraction={test_fraction} leaves no training rows out of {n}")
    features = galaxy_features()
    writers = {"test": ShardWriter(root, "test", features, n_test, shard_size)} if n_test else {}
    writers["train"] = ShardWriter(root, "train", features, n - n_test, shard_size)
    bar = tqdm(total=n, desc="writing galaxies", unit="img", disable=not progress)
    for offset in range(0, n, batch_size):
        batch = generate_galaxies(
            min(batch_size, n - offset),
            seed,
            start=offset,
            classes=classes,
            class_weights=class_weights,
            size=size,
            render_size=render_size,
            num_threads=num_threads,
        )
        for i, p in enumerate(batch.params):
            index = offset + i
            vote_rng = np.random.default_rng([seed, index, 1])
            row = {
                "image": {"bytes": encode_png(batch.images[i]), "path": None},
                "id_str": f"synth-{seed}-{index:07d}",
                "ra": float(vote_rng.uniform(0, 360)),
                "dec": float(vote_rng.uniform(-10, 70)),
                "summary": p.cls,
                "params": p.to_json(),
            }
            row.update(gz2_votes_for(p.cls, vote_rng))
            row["masks"] = {"bytes": encode_png(pack_masks({k: m[i] for k, m in batch.masks.items()})), "path": None}
            for name in FEATURES:
                box = batch.boxes[name][i]
                row[f"box_{name}"] = list(box) if box is not None else None
            writers["test" if index < n_test else "train"].add(row)
        bar.update(len(batch))
    bar.close()
    for writer in writers.values():
        writer.close()
    finish_dataset(
        root,
        {
            "kind": "synthetic_galaxies",
            "n": n,
            "n_test": n_test,
            "seed": seed,
            "classes": list(classes),
            "class_weights": list(class_weights) if class_weights is not None else None,
            "size": size,
            "render_size": render_size,
            "features": list(FEATURES),
            "box_convention": "(x0, y0, x1, y1) pixels of the size x size image, top-left origin, exclusive upper ends",
        },
        lock,
    )
    logger.info("wrote %d synthetic galaxies (%d test) to %s", n, n_test, root)
    return root


__all__ = [
    "GALAXY_CLASSES",
    "EXTRA_CLASSES",
    "ALL_CLASSES",
    "FEATURES",
    "GalaxyParams",
    "GalaxyBatch",
    "sersic_b",
    "sersic_radius_fraction",
    "exponential_radius_fraction",
    "sample_galaxy_params",
    "galaxy_rng",
    "GalaxyStream",
    "render_galaxies",
    "torch_threads",
    "resolve_threads",
    "generate_galaxies",
    "iter_galaxies",
    "galaxy_features",
    "write_galaxy_dataset",
    "pack_masks",
    "unpack_masks",
    "COUNTERFACTUAL_FEATURES",
    "without_feature",
    "galaxy_counterfactual_pairs",
]


# ----------------------------------------------------------------------------------------- counterfactual pairs

COUNTERFACTUAL_FEATURES: dict[str, tuple[str, tuple[str, ...]]] = {
    "bar": ("bar_amp", ("barred_spiral",)),
    "arms": ("arms_amp", ("unbarred_spiral", "barred_spiral")),
    "bulge": ("bulge_amp", ("unbarred_spiral", "barred_spiral", "featured_without_bar_or_spiral", "edge_on_disk")),
}
"""Feature -> (the amplitude set to 0 to remove it, the classes drawn because they carry it)."""

_RELABEL = {("bar", "barred_spiral"): "unbarred_spiral", ("arms", "unbarred_spiral"): "featured_without_bar_or_spiral"}


def without_feature(params: GalaxyParams, feature: str) -> GalaxyParams:
    """The same galaxy (same noise, shape, colours) without one feature: its amplitude set to 0, the class
    renamed where the feature defines it (a barred spiral without its bar is an unbarred spiral)."""
    if feature not in COUNTERFACTUAL_FEATURES:
        raise DataError(f"feature must be one of {sorted(COUNTERFACTUAL_FEATURES)}, got {feature!r}")
    amplitude, _ = COUNTERFACTUAL_FEATURES[feature]
    cls = _RELABEL.get((feature, params.cls), params.cls)
    changes: dict[str, Any] = {amplitude: 0.0, "cls": cls}
    return dataclasses.replace(params, **changes)


def galaxy_counterfactual_pairs(
    n: int, seed: int = 0, feature: str = "bar", *, size: int = 224, noise: bool = True, start: int = 0
) -> tuple[GalaxyBatch, GalaxyBatch]:
    """n matched pairs (with, without) `feature` ("bar", "arms" or "bulge"): images ``start ..`` of the seeded
    stream restricted to the classes that carry the feature, rendered twice from the same parameters with only
    that feature's amplitude set to 0 in the second. The first batch's ``masks[feature]`` is where they differ
    before the PSF (and, with noise, the Poisson noise of the changed light)."""
    if feature not in COUNTERFACTUAL_FEATURES:
        raise DataError(f"feature must be one of {sorted(COUNTERFACTUAL_FEATURES)}, got {feature!r}")
    if n <= 0:
        raise DataError(f"n must be positive, got {n}")
    _, classes = COUNTERFACTUAL_FEATURES[feature]
    params = GalaxyStream(seed, classes).params(n, start)
    with_feature = render_galaxies(params, size=size, noise=noise)
    without = render_galaxies([without_feature(p, feature) for p in params], size=size, noise=noise)
    return with_feature, without
