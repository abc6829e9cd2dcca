"""Layers ranked per image by how much of their attention lands on the annotated object.

A rollout lab report ranks a ViT's layers by the heat on the object ("most-focused layers"). Here:

    maps = head_mean_grid(cls_attention_grid(model, collect_patterns(model, images, rows="cls"), rows="cls"))
    ranking = rank_layers(maps, regions, "union")   # [B, L] focus, order, rank
    ranking.top(3)                                  # [B, 3] the three most-focused layers of each image
    ranking.to_frame()                              # image x layer: focus, rank

Focus of layer l on image b = the share of its map (non-negative, e.g. the head-mean class-token attention)
that lands on the object's pixels under nearest upsampling (the alignment "energy",
docs/alignment.md#definitions); chance (a uniform map) is the object's area share. Layers are ranked by
focus, highest first; ties keep the lower layer first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from vitmech.analysis.alignment import RegionMasks
from vitmech.analysis.taxonomy import region_mass
from vitmech.errors import InputError

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class LayerRanking:
    """focus [batch, layer]: share of each layer's map on the object; order [batch, layer]: layer indices,
    most focused first; area_share [batch]: the object's share of the pixels (the uniform map's focus)."""

    focus: Float[Tensor, "batch layer"]
    order: Int[Tensor, "batch layer"]
    area_share: Float[Tensor, " batch"]
    region: str
    layers: tuple[int, ...]

    @property
    def rank(self) -> Int[Tensor, "batch layer"]:
        """rank[b, l]: 1 for the most-focused layer of image b, n_layers for the least."""
        out = torch.empty_like(self.order)
        positions = torch.arange(1, self.order.shape[1] + 1).expand_as(self.order)
        return out.scatter_(1, self.order, positions)

    def top(self, k: int = 3) -> Int[Tensor, "batch k"]:
        """The model layer numbers of the k most-focused layers of each image."""
        if not 1 <= k <= len(self.layers):
            raise InputError(f"k must be in [1, {len(self.layers)}], got {k}")
        return torch.as_tensor(self.layers)[self.order[:, :k]]

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        b, n = self.focus.shape
        image, index = np.meshgrid(np.arange(b), np.arange(n), indexing="ij")
        return pd.DataFrame(
            {
                "image": image.ravel(),
                "layer": np.asarray(self.layers)[index.ravel()],
                "focus": self.focus.double().cpu().numpy().ravel(),
                "chance": self.area_share.double().cpu().numpy()[image.ravel()],
                "rank": self.rank.cpu().numpy().ravel(),
            }
        )

    def summary(self) -> pd.DataFrame:
        """Per layer: mean focus, how often it is the most-focused and how often in the top three."""
        frame = self.to_frame()
        top3 = min(3, len(self.layers))
        return (
            frame.groupby("layer")
            .agg(
                mean_focus=("focus", "mean"),
                mean_rank=("rank", "mean"),
                share_first=("rank", lambda r: float((r == 1).mean())),
                share_top3=("rank", lambda r: float((r <= top3).mean())),
            )
            .reset_index()
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "layers": list(self.layers),
            "focus": self.focus.tolist(),
            "order": self.order.tolist(),
            "area_share": self.area_share.tolist(),
        }


def rank_layers(
    maps: Float[Tensor, "batch layer gh gw"],
    regions: RegionMasks,
    region: str,
    layers: tuple[int, ...] | None = None,
) -> LayerRanking:
    """Rank the layers of each image by the share of their map on `region` of `regions` (one map per layer,
    e.g. `head_mean_grid` of class-token attention; `layers` names them, default 0..L-1)."""
    if maps.ndim != 4:
        raise InputError(f"maps must be [batch, layer, gh, gw], got {list(maps.shape)}")
    layers = tuple(range(maps.shape[1])) if layers is None else tuple(int(x) for x in layers)
    if len(layers) != maps.shape[1]:
        raise InputError(f"{len(layers)} layer numbers for {maps.shape[1]} maps per image")
    selected = regions.select([region])
    mass, area = region_mass(maps, selected)  # [B, L, 1], [B, 1]
    focus = mass[..., 0]
    order = torch.sort(focus, dim=1, descending=True, stable=True).indices
    return LayerRanking(focus, order, area[:, 0], region, layers)


__all__ = ["LayerRanking", "rank_layers"]
