"""Alignment of attribution maps with annotated regions: top-q IoU, energy share, pointing game.

    regions = RegionMasks.from_galaxies(batch, features=("bar", "arms", "bulge")).with_union()
    patterns = collect_patterns(model, images, rows="cls")                 # [B, L, H, P] CLS rows
    maps = cls_attention_grid(model, patterns)                             # [B, L, H, g, g]
    result = alignment_scores(maps, regions)                               # AlignmentResult
    result.to_frame()                                                      # image x layer x head x region
    result.summary(["layer", "region"])                                    # means over images

Definitions (docs/alignment.md#definitions). A map M [g, g] is upsampled to the mask's pixel grid
(`upsample="nearest"`: each patch value covers its patch's pixels; "bilinear": torch's bilinear
interpolation, align_corners=False). With N pixels, region R of |R| pixels (area share a = |R| / N) and
k = round(q N) (q given) or k = |R| (q None: the mask's own area):

- IoU = |T ∩ R| / (k + |R| - |T ∩ R|), T the k highest pixels. Ties at the k-th value are shared
  evenly: the pixels above the threshold count fully and the remaining k - n_above places are spread
  over the tied pixels (the expected overlap under random tie-breaking), so |T| is exactly k.
  Chance level: a map that ranks pixels at random has E|T ∩ R| = k a, IoU_chance = k a / (k + |R| - k a).
- energy = sum_{R} M+ / sum M+ over the upsampled pixels (M+ = max(M, 0)); chance (uniform map): a.
- pointing game = share of the argmax pixels inside R (1 or 0 unless the maximum is tied); chance: a.

All three depend on the map only through its ranking (IoU, pointing) or up to a positive factor
(energy), so a map and any positive multiple of it score the same.

With `upsample="nearest"` every metric is computed on the patch grid from per-patch pixel counts
(exact, and about 200 times less work than the pixel grid); the whole table for 144 heads x 64 images is
a few tensor operations, never a loop over heads (benchmarks/alignment.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from jaxtyping import Bool, Float, Int
from torch import Tensor

from vitmech.errors import InputError, PathNotFoundError, UnknownNameError
from vitmech.tokens import READOUT, token_layout

if TYPE_CHECKING:
    import pandas as pd

    from vitmech.analysis.rollout import Query, Rollout

Upsample = Literal["nearest", "bilinear"]
UNION = "union"
GALAXY_REGIONS: tuple[str, ...] = ("bar", "arms", "bulge")
"""Galaxy features the study scores by default (the generator also masks disk, ring, clumps, dust lane)."""
CHIRP_REGIONS: dict[str, tuple[str, ...]] = {
    "chirp": ("chirp",),
    "text": ("title", "xlabel", "ylabel", "xticklabels", "yticklabels", "colorbar_ticklabels", "colorbar_label"),
    "axis": ("axes",),
    "colorbar": ("colorbar",),
}
"""Chirp regions: the chirp track, and the figure's text, axes and colour bar (distractors)."""


# ----------------------------------------------------------------------------------------- regions


def _box_mask(boxes: Sequence[Sequence[float]], height: int, width: int) -> Bool[Tensor, "height width"]:
    """Union of (x0, y0, x1, y1) boxes (exclusive upper ends) as a bool mask; clipped to the image."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    for box in boxes:
        if len(box) != 4:
            raise InputError(f"a box is (x0, y0, x1, y1), got {box!r}")
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        mask[max(y0, 0) : max(min(y1, height), 0), max(x0, 0) : max(min(x1, width), 0)] = True
    return mask


@dataclass
class RegionMasks:
    """Annotated regions of a batch of images.

    Attributes:
        masks: bool [batch, region, height, width] in image pixels (top-left origin).
        names: one name per region axis entry (feature types, "union", ...).
    """

    masks: Bool[Tensor, "batch region height width"]
    names: tuple[str, ...]
    _counts: dict[tuple[int, int], tuple[Tensor, Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self.masks = torch.as_tensor(self.masks)
        self.names = tuple(self.names)
        if self.masks.dtype != torch.bool or self.masks.ndim != 4:
            raise InputError(
                f"masks must be bool [batch, region, height, width], got {self.masks.dtype} {list(self.masks.shape)}"
            )
        if len(self.names) != self.masks.shape[1] or len(set(self.names)) != len(self.names):
            raise InputError(f"need {self.masks.shape[1]} distinct region names, got {list(self.names)}")

    def __len__(self) -> int:
        return self.masks.shape[0]

    def grid_counts(self, grid: tuple[int, int]) -> tuple[Float[Tensor, "batch region cell"], Float[Tensor, " cell"]]:
        """`grid_counts(self.masks, grid)`, computed once per grid and kept (masks are not to be changed in place)."""
        if grid not in self._counts:
            self._counts[grid] = grid_counts(self.masks, grid)
        return self._counts[grid]

    @property
    def size(self) -> tuple[int, int]:
        return self.masks.shape[2], self.masks.shape[3]

    def area_share(self) -> Float[Tensor, "batch region"]:
        """|R| / N per image and region."""
        return self.masks.flatten(2).float().mean(-1)

    def select(self, names: Sequence[str]) -> RegionMasks:
        missing = [n for n in names if n not in self.names]
        if missing:
            raise UnknownNameError(f"no regions {missing}; these masks hold {list(self.names)}")
        return RegionMasks(self.masks[:, [self.names.index(n) for n in names]], tuple(names))

    def subset(self, rows: Sequence[int] | Int[np.ndarray, " rows"] | Int[Tensor, " rows"]) -> RegionMasks:
        """The masks of some images (rows of the batch axis)."""
        return RegionMasks(self.masks[torch.as_tensor(rows, dtype=torch.long)], self.names)

    def with_union(self, of: Sequence[str] | None = None, name: str = UNION) -> RegionMasks:
        """Add the union of regions `of` (default: all) as one more region called `name`."""
        union = self.select(list(of) if of is not None else list(self.names)).masks.any(1, keepdim=True)
        return RegionMasks(torch.cat([self.masks, union], 1), (*self.names, name))

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_dict(cls, masks: Mapping[str, Any]) -> RegionMasks:
        """From {name: bool [batch, H, W]} (numpy or torch)."""
        if not masks:
            raise InputError("give at least one region")
        stacked = torch.stack([torch.as_tensor(np.asarray(m, dtype=bool)) for m in masks.values()], 1)
        return cls(stacked, tuple(masks))

    @classmethod
    def from_galaxies(cls, batch: Any, features: Sequence[str] = GALAXY_REGIONS) -> RegionMasks:
        """Feature masks of a `vitmech.data.GalaxyBatch` (bar, arms, bulge by default)."""
        missing = [f for f in features if f not in batch.masks]
        if missing:
            raise UnknownNameError(f"the galaxy batch has no masks {missing}; it has {sorted(batch.masks)}")
        return cls.from_dict({f: batch.masks[f] for f in features})

    @classmethod
    def from_boxes(
        cls, boxes: Sequence[Mapping[str, Sequence[Sequence[float]] | None]], size: int | tuple[int, int]
    ) -> RegionMasks:
        """From per-image {region: [box, ...]} (x0, y0, x1, y1 pixels, exclusive upper ends) on a `size` image."""
        height, width = (size, size) if isinstance(size, int) else size
        names = sorted({name for image in boxes for name in image})
        if not names:
            raise InputError("no boxes given")
        masks = torch.zeros(len(boxes), len(names), height, width, dtype=torch.bool)
        for i, image in enumerate(boxes):
            for j, name in enumerate(names):
                masks[i, j] = _box_mask(image.get(name) or [], height, width)
        return cls(masks, tuple(names))

    @classmethod
    def from_chirps(cls, samples: Sequence[Any], regions: Mapping[str, Sequence[str]] = CHIRP_REGIONS) -> RegionMasks:
        """Boxes of `vitmech.data.ChirpSample`s grouped into regions (chirp, text, axis, colour bar by default);
        an element switched off in an image adds nothing to its region."""
        if not samples:
            raise InputError("no chirp samples given")
        size = samples[0].image.shape[:2]
        per_image = [
            {name: [s.boxes[e] for e in elements if s.boxes.get(e) is not None] for name, elements in regions.items()}
            for s in samples
        ]
        out = cls.from_boxes(per_image, (int(size[0]), int(size[1])))
        return out.select(list(regions))

    @classmethod
    def from_png_folder(cls, folder: str | Path, image_names: Sequence[str] | None = None) -> RegionMasks:
        """Masks from PNG files `<image>_<region>.png` (non-zero = inside); `image_names` fixes the image order
        (default: sorted). An image without a file for a region gets an empty mask for it."""
        from PIL import Image

        root = Path(folder)
        files = sorted(root.glob("*.png"))
        if not files:
            raise PathNotFoundError(f"no mask PNGs (<image>_<region>.png) in {root}")
        table: dict[str, dict[str, Path]] = {}
        for f in files:
            if "_" not in f.stem:
                raise InputError(f"{f.name}: mask files are named <image>_<region>.png")
            image, region = f.stem.rsplit("_", 1)
            table.setdefault(image, {})[region] = f
        images = list(image_names) if image_names is not None else sorted(table)
        unknown = [i for i in images if i not in table]
        if unknown:
            raise UnknownNameError(f"no masks for images {unknown[:5]} in {root}")
        names = sorted({r for i in images for r in table[i]})
        first = np.asarray(Image.open(table[images[0]][next(iter(table[images[0]]))]))
        height, width = first.shape[:2]
        masks = torch.zeros(len(images), len(names), height, width, dtype=torch.bool)
        for i, image in enumerate(images):
            for j, name in enumerate(names):
                if name in table[image]:
                    array = np.asarray(Image.open(table[image][name]).convert("L"))
                    if array.shape != (height, width):
                        raise InputError(f"{table[image][name]}: {array.shape} pixels, expected {(height, width)}")
                    masks[i, j] = torch.from_numpy(array > 0)
        return cls(masks, tuple(names))

    @classmethod
    def from_coco(
        cls, path: str | Path, size: int | tuple[int, int] | None = None, image_ids: Sequence[int] | None = None
    ) -> tuple[RegionMasks, list[dict[str, Any]]]:
        """Boxes from a COCO-style JSON ("images", "annotations" with [x, y, width, height] "bbox" and
        "category_id", "categories"). Regions are the categories; boxes are scaled to `size` when given
        (the model's input size), else each image must share one width and height. Returns the masks and
        the COCO image records in mask order."""
        data = json.loads(Path(path).read_text())
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise InputError(f"{path}: a COCO file needs an {key!r} list")
        images = {im["id"]: im for im in data["images"]}
        ids = list(image_ids) if image_ids is not None else sorted(images)
        unknown = [i for i in ids if i not in images]
        if unknown:
            raise UnknownNameError(f"{path}: no images with ids {unknown[:5]}")
        categories = {c["id"]: c["name"] for c in data["categories"]}
        if size is None:
            shapes = {(images[i]["height"], images[i]["width"]) for i in ids}
            if len(shapes) != 1:
                raise InputError(f"{path}: images differ in size {sorted(shapes)}; give size= to rescale the boxes")
            height, width = shapes.pop()
        else:
            height, width = (size, size) if isinstance(size, int) else size
        per_image: dict[int, dict[str, list[list[float]]]] = {i: {} for i in ids}
        for ann in data["annotations"]:
            if ann["image_id"] not in per_image:
                continue
            im = images[ann["image_id"]]
            sx, sy = width / im["width"], height / im["height"]
            x, y, w, h = ann["bbox"]
            box = [x * sx, y * sy, (x + w) * sx, (y + h) * sy]
            per_image[ann["image_id"]].setdefault(categories[ann["category_id"]], []).append(box)
        names = [categories[c] for c in sorted(categories)]
        masks = torch.zeros(len(ids), len(names), height, width, dtype=torch.bool)
        for i, image_id in enumerate(ids):
            for j, name in enumerate(names):
                masks[i, j] = _box_mask(per_image[image_id].get(name, []), height, width)
        return cls(masks, tuple(names)), [images[i] for i in ids]


# ----------------------------------------------------------------------------------------- maps


def cls_attention_grid(
    model_or_cfg: Any,
    patterns: Float[Tensor, "*lead key"],
    rows: Literal["all", "cls"] = "all",
    renormalise: bool = True,
) -> Float[Tensor, "*maps gh gw"]:
    """Class-token attention over the patches on the patch grid.

    `patterns`: full patterns [..., query, key] (rows="all": the class token's row is taken; maps [...]) or
    class-token rows [..., key] (rows="cls", as `collect_patterns(..., rows="cls")` keeps them). Renormalised
    over the patches by default."""
    layout = token_layout(model_or_cfg)
    cls_index = layout.require_class_token("class-token attention maps")
    if rows not in ("all", "cls"):
        raise InputError(f"rows must be 'all' or 'cls', got {rows!r}")
    if patterns.shape[-1] != layout.n_tokens or (rows == "all" and patterns.shape[-2] != layout.n_tokens):
        raise InputError(
            f"patterns {list(patterns.shape)} do not end in this model's {layout.n_tokens} tokens (rows={rows!r})"
        )
    row = patterns.select(-2, cls_index) if rows == "all" else patterns
    values = layout.patches(row, dim=-1)
    if renormalise:
        values = values / values.sum(-1, keepdim=True).clamp_min(torch.finfo(values.dtype).tiny)
    gh, gw = layout.grid
    return rearrange(values, "... (gh gw) -> ... gh gw", gh=gh, gw=gw)


def head_mean_grid(maps: Float[Tensor, "batch layer head gh gw"]) -> Float[Tensor, "batch layer gh gw"]:
    """Mean over heads of per-head maps (one map per layer)."""
    return maps.mean(2)


def rollout_grid(
    model_or_cfg: Any, result: Rollout, renormalise: bool = True, token: Query = READOUT
) -> Float[Tensor, "batch gh gw"]:
    """One query's row of a rollout-style result (rollout, gradient rollout, GMAR) on the patch grid: by default
    the readout query (the class token, or the mean patch row where the model reads its patch tokens), which
    `result` must hold (`tokens=` when it was computed)."""
    return cls_attention_grid(model_or_cfg, result.row(token), rows="cls", renormalise=renormalise)


def patch_grid(model_or_cfg: Any, values: Float[Tensor, "*batch patch"]) -> Float[Tensor, "*batch gh gw"]:
    """Per-patch values (row-major, e.g. a Grad-CAM map over the patch tokens) on the patch grid."""
    gh, gw = token_layout(model_or_cfg).grid
    return rearrange(values, "... (gh gw) -> ... gh gw", gh=gh, gw=gw)


# ----------------------------------------------------------------------------------------- scores


@dataclass
class AlignmentSettings:
    """q: top fraction of pixels binarised for the IoU (None: the region's own area share);
    upsample: how the map reaches the mask's pixels."""

    q: float | None = None
    upsample: Upsample = "nearest"

    def __post_init__(self) -> None:
        if self.q is not None and not 0 < self.q <= 1:
            raise InputError(f"q must be in (0, 1] or None (the region's own area), got {self.q!r}")
        if self.upsample not in ("nearest", "bilinear"):
            raise InputError(f"upsample must be 'nearest' or 'bilinear', got {self.upsample!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "q": self.q if self.q is not None else "region area",
            "upsample": self.upsample,
            "ties": "shared evenly at the k-th value (expected overlap under random tie-breaking)",
            "energy": "positive part of the map",
        }


@dataclass
class AlignmentResult:
    """Scores of maps [batch, *units] against regions.

    Attributes:
        iou, energy, pointing: [batch, *units, region]; NaN where the region is empty in that image.
        area_share: [batch, region] |R| / N; also the chance level of energy and pointing.
        iou_chance: [batch, region] IoU of a randomly ranked map (k a / (k + |R| - k a)).
        k: [batch, region] pixels binarised for the IoU.
        unit_names: names of the unit axes (e.g. ("layer", "head")).
        region_names: names along the region axis.
        settings: the choices (q, upsample, tie rule).
        source: what the maps are (e.g. "cls attention", "rollout").
    """

    iou: Float[Tensor, "batch *units region"]
    energy: Float[Tensor, "batch *units region"]
    pointing: Float[Tensor, "batch *units region"]
    area_share: Float[Tensor, "batch region"]
    iou_chance: Float[Tensor, "batch region"]
    k: Float[Tensor, "batch region"]
    unit_names: tuple[str, ...]
    region_names: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    source: str = "map"

    METRICS: ClassVar[tuple[str, ...]] = ("iou", "energy", "pointing")

    def metric(self, name: str) -> Tensor:
        if name not in self.METRICS:
            raise UnknownNameError(f"metric must be one of {self.METRICS}, got {name!r}")
        return getattr(self, name)

    def region(self, name: str) -> int:
        if name not in self.region_names:
            raise UnknownNameError(f"no region {name!r}; regions: {list(self.region_names)}")
        return self.region_names.index(name)

    def per_image(self, metric: str = "iou", region: str = UNION, unit: Sequence[int] = ()) -> Float[Tensor, " batch"]:
        """One value per image (NaN where the region is empty) for one unit (e.g. (layer, head))."""
        index: tuple[Any, ...] = (slice(None), *unit)
        values = self.metric(metric)[index]
        if values.ndim != 2:
            raise InputError(f"give one index per unit axis {self.unit_names}, got {tuple(unit)}")
        return values[:, self.region(region)]

    def to_frame(self) -> pd.DataFrame:
        """Long table: one row per image x unit x region with iou, energy, pointing and their chance levels."""
        import pandas as pd

        b, *units, r = self.iou.shape
        grids = np.meshgrid(*[np.arange(n) for n in (b, *units, r)], indexing="ij")
        frame = pd.DataFrame({name: g.ravel() for name, g in zip(("image", *self.unit_names, "region"), grids)})
        frame["region"] = np.asarray(self.region_names, dtype=object)[frame["region"].to_numpy()]
        for name in self.METRICS:
            frame[name] = self.metric(name).detach().double().cpu().numpy().ravel()
        expand = (slice(None), *([None] * len(units)), slice(None))
        for name, values in (("area_share", self.area_share), ("iou_chance", self.iou_chance)):
            frame[name] = values[expand].expand_as(self.iou).double().cpu().numpy().ravel()
        frame.insert(0, "source", self.source)
        return frame

    def summary(self, by: Sequence[str] = ("region",)) -> pd.DataFrame:
        """Means over the rows where the region is present, grouped by `by`, with the number of images."""
        frame = self.to_frame().dropna(subset=["iou"])
        columns = [*self.METRICS, "area_share", "iou_chance"]
        out = frame.groupby(list(by), sort=False)[columns].mean()
        out["n_images"] = frame.groupby(list(by), sort=False)["image"].nunique()
        return out.reset_index()

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "unit_names": list(self.unit_names),
            "region_names": list(self.region_names),
            "settings": dict(self.settings),
            **{name: self.metric(name).tolist() for name in self.METRICS},
            "area_share": self.area_share.tolist(),
            "iou_chance": self.iou_chance.tolist(),
            "k": self.k.tolist(),
        }


def _default_unit_names(n: int) -> tuple[str, ...]:
    names = {0: (), 1: ("layer",), 2: ("layer", "head")}
    return names.get(n, tuple(f"unit{i}" for i in range(n)))


def _assignment(n_pixels: int, n_cells: int) -> Float[Tensor, "cell pixel"]:
    """One-hot [cell, pixel] of nearest upsampling along one axis (pixel y reads cell floor(y * g / n))."""
    cell = torch.div(torch.arange(n_pixels) * n_cells, n_pixels, rounding_mode="floor")
    return F.one_hot(cell, n_cells).T.float()


def grid_counts(
    masks: Bool[Tensor, "batch region height width"], grid: tuple[int, int]
) -> tuple[Float[Tensor, "batch region cell"], Float[Tensor, " cell"]]:
    """Region pixels per patch cell (c) and pixels per cell (n) under nearest upsampling of a `grid` map
    (float32 counts, exact below 2**24 pixels per cell)."""
    height, width = masks.shape[-2:]
    gy, gx = grid
    if height % gy == 0 and width % gx == 0:  # whole patches: a reshape and a sum (numpy: one thread)
        array = masks.cpu().numpy().reshape(*masks.shape[:2], gy, height // gy, gx, width // gx)
        counts = torch.from_numpy(array.sum(axis=(3, 5), dtype=np.int32).astype(np.float32))
        cells = torch.full((gy, gx), float((height // gy) * (width // gx)))
    else:
        ay, ax = _assignment(height, gy), _assignment(width, gx)
        counts = einsum(ay, masks.cpu().float(), ax, "gy y, b r y x, gx x -> b r gy gx")
        cells = einsum(ay.sum(1), ax.sum(1), "gy, gx -> gy gx")
    return counts.flatten(-2), cells.flatten()


def _scores(
    values: Float[Tensor, "batch unit cell"],
    counts: Float[Tensor, "batch region cell"],
    cells: Float[Tensor, " cell"],
    k: Float[Tensor, "batch region"],
    area: Float[Tensor, "batch region"],
) -> tuple[Tensor, Tensor, Tensor]:
    """IoU, energy, pointing [batch, unit, region] of maps whose cell j covers cells[j] pixels, counts[b, r, j]
    of them inside region r (cells are pixels for the pixel path, patches for the nearest path).

    Each map is sorted once; the pixels above and at the k-th value, and the region pixels among them, are
    read from prefix sums in that order, so nothing of size [batch, unit, region, cell] is compared or
    multiplied. Computed with numpy: its kernels run on one thread, and on a shared CPU torch's parallel
    kernels on these small arrays wait for their slowest thread (2-3x slower here). Sums of counts are exact
    in float32 (integers below 2**24); products with map values carry float32 rounding (relative 1e-7)."""
    v = values.detach().cpu().numpy()
    region_pixels = counts.detach().cpu().numpy().astype(v.dtype)
    cell_pixels = cells.detach().cpu().numpy().astype(v.dtype)
    n_units, n_cells = v.shape[1], v.shape[2]
    k_units = np.broadcast_to(k.cpu().numpy().astype(v.dtype)[:, None, :], (len(v), n_units, k.shape[1])).copy()
    order = np.argsort(-v, axis=-1)  # [B, U, C], highest first (order within ties does not matter)
    ordered = np.take_along_axis(v, order, -1)
    cum_pixels = np.cumsum(cell_pixels[order], -1)  # pixels covered down to each rank
    rank = torch.searchsorted(torch.from_numpy(cum_pixels), torch.from_numpy(k_units)).numpy()  # first cum >= k
    threshold = np.take_along_axis(ordered, np.clip(rank, 0, n_cells - 1), -1)  # [B, U, R] the k-th highest value
    ascending = torch.from_numpy(np.flip(ordered, -1).copy())
    below_or_tied = torch.searchsorted(ascending, torch.from_numpy(threshold), right=True).numpy()
    below = torch.searchsorted(ascending, torch.from_numpy(threshold)).numpy()
    n_above, n_at_least = n_cells - below_or_tied, n_cells - below  # cells strictly above / at or above t

    def prefix(cumulative: np.ndarray, count: np.ndarray) -> np.ndarray:
        """cumulative[..., count - 1], 0 where count is 0."""
        taken = np.take_along_axis(cumulative, np.clip(count - 1, 0, None), -1)
        return np.where(count > 0, taken, 0)

    pixels_above, pixels_at_least = prefix(cum_pixels, n_above), prefix(cum_pixels, n_at_least)
    in_region = np.cumsum(np.take_along_axis(region_pixels[:, None], order[:, :, None], -1), -1)  # [B, U, R, C]
    in_above = prefix(in_region, n_above[..., None])[..., 0]
    in_at_least = prefix(in_region, n_at_least[..., None])[..., 0]
    k_r, area_r = k_units, area.cpu().numpy().astype(v.dtype)[:, None, :]
    overlap = in_above + (k_r - pixels_above) * (in_at_least - in_above) / (pixels_at_least - pixels_above)
    iou = overlap / (k_r + area_r - overlap)
    positive = np.clip(v, 0, None)
    with np.errstate(invalid="ignore", divide="ignore"):  # a map without positive mass has no energy share: NaN
        mass = np.einsum("buc,c->bu", positive, cell_pixels)[..., None]
        energy = np.einsum("buc,brc->bur", positive, region_pixels) / mass
    is_max = (v == v.max(-1, keepdims=True)).astype(v.dtype)
    pointing = np.einsum("buc,brc->bur", is_max, region_pixels) / np.einsum("buc,c->bu", is_max, cell_pixels)[..., None]
    # rounding can overshoot [0, 1] by an ulp: clamp
    return tuple(torch.from_numpy(np.clip(t.astype(np.float64), 0, 1)) for t in (iou, energy, pointing))  # type: ignore[return-value]


def alignment_scores(
    maps: Float[Tensor, "batch *units gh gw"],
    regions: RegionMasks,
    *,
    q: float | None = None,
    upsample: Upsample = "nearest",
    unit_names: Sequence[str] | None = None,
    source: str = "map",
    chunk: int = 16,
) -> AlignmentResult:
    """IoU of the top-q pixels, energy share and pointing game of every map against every region.

    Args:
        maps: any attribution maps on a grid [batch, *units, gh, gw] (units e.g. layer, head); each image's
            maps are scored against that image's regions.
        regions: masks [batch, region, H, W] in the pixels of the image the model saw.
        q: binarised fraction of the pixels for the IoU (None: each region's own area, k = |R|).
        upsample: "nearest" (computed exactly on the patch grid) or "bilinear" (on the pixel grid, in chunks
            of `chunk` units).
        unit_names: names of the unit axes (default: (), ("layer",), ("layer", "head")).
    Returns:
        AlignmentResult (float64 scores; NaN where a region is empty in an image).
    """
    settings = AlignmentSettings(q, upsample)
    if not isinstance(maps, Tensor) or not maps.is_floating_point() or maps.ndim < 3:
        raise InputError(f"maps must be a float tensor [batch, *units, gh, gw], got {getattr(maps, 'shape', maps)!r}")
    if maps.shape[0] != len(regions):
        raise InputError(f"{maps.shape[0]} images of maps but {len(regions)} images of masks")
    flat_maps = maps.detach().cpu().reshape(maps.shape[0], -1, maps.shape[-2] * maps.shape[-1])  # [B, U, C]
    if not np.isfinite(flat_maps.numpy()).all():
        raise InputError("maps must be finite")
    units = tuple(maps.shape[1:-2])
    names = tuple(unit_names) if unit_names is not None else _default_unit_names(len(units))
    if len(names) != len(units):
        raise InputError(f"unit_names {names} do not match the {len(units)} unit axes of maps {list(maps.shape)}")
    grid = (maps.shape[-2], maps.shape[-1])
    height, width = regions.size
    n_pixels = height * width
    # the pixel path works in float64 so that pixels tied in exact arithmetic stay tied after interpolation
    work = torch.float64 if maps.dtype == torch.float64 or upsample == "bilinear" else torch.float32
    flat = flat_maps.to(work)
    with torch.no_grad():
        counts, cells = regions.grid_counts(grid)
        area_pixels = counts.double().sum(-1)  # [B, R] exact: integer counts
        k_value = area_pixels if q is None else torch.full_like(area_pixels, max(1, round(q * n_pixels)))
        k_safe = k_value.clamp_min(1)
        if upsample == "nearest":
            iou, energy, pointing = _scores(flat, counts.to(work), cells.to(work), k_safe, area_pixels)
        else:
            masks = regions.masks.cpu()
            ones = torch.ones(n_pixels, dtype=work)
            rows = []  # pixel path: one image at a time, `chunk` units at a time, to bound memory
            for b in range(flat.shape[0]):
                pixels = masks[b : b + 1].flatten(2).to(work)
                parts = []
                for start in range(0, flat.shape[1], chunk):
                    part = flat[b : b + 1, start : start + chunk]
                    up = F.interpolate(
                        part.reshape(-1, 1, *grid), size=(height, width), mode="bilinear", align_corners=False
                    ).reshape(1, part.shape[1], n_pixels)
                    parts.append(_scores(up, pixels, ones, k_safe[b : b + 1], area_pixels[b : b + 1]))
                rows.append(tuple(torch.cat([p[i] for p in parts], 1) for i in range(3)))
            iou, energy, pointing = (torch.cat([r[i] for r in rows]) for i in range(3))
    empty = (area_pixels == 0).numpy()[:, None, :]
    iou, energy, pointing = (torch.from_numpy(np.where(empty, np.nan, t.numpy())) for t in (iou, energy, pointing))
    share = area_pixels / n_pixels
    expected = k_value * share
    chance = torch.from_numpy(np.where(empty[:, 0], np.nan, (expected / (k_value + area_pixels - expected)).numpy()))
    shape = (maps.shape[0], *units, len(regions.names))
    return AlignmentResult(
        iou=iou.reshape(shape),
        energy=energy.reshape(shape),
        pointing=pointing.reshape(shape),
        area_share=share,
        iou_chance=chance,
        k=k_value,
        unit_names=names,
        region_names=regions.names,
        settings={**settings.to_dict(), "mask_size": [height, width], "grid": list(grid)},
        source=source,
    )


__all__ = [
    "CHIRP_REGIONS",
    "GALAXY_REGIONS",
    "UNION",
    "AlignmentResult",
    "AlignmentSettings",
    "RegionMasks",
    "alignment_scores",
    "cls_attention_grid",
    "grid_counts",
    "head_mean_grid",
    "patch_grid",
    "rollout_grid",
]
