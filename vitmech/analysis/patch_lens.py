"""A per-patch logit lens: every token of the residual stream, at every layer, read through the final
LayerNorm and the classifier head as if it were the class token (nostalgebraist 2020's logit lens, per token as
ViT-Prisma shows it), so each layer gives a map of class evidence on the patch grid.

Stages: 0 = the embeddings entering block 0, l + 1 = the output of block l. At the last stage the class token's
row is the model's logits exactly; patch rows are what the head would read there (the head never reads them,
so they are a lens, not the model's output).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from transformer_lens.utilities import get_act_name

from vitmech.errors import InputError, PatchingError
from vitmech.model.hooked_vit import HookedViT
from vitmech.tokens import token_layout


@dataclass
class PatchLogitLens:
    """Logits of every token at every stage.

    Attributes:
        logits: [batch, stage, pos, n_classes] (stage 0 = embeddings, stage l + 1 = after block l).
        labels: stage names ("embed", "L0", ...). grid, n_prefix: the token layout. class_names: if known.
    """

    logits: Float[torch.Tensor, "batch stage pos n_classes"]
    labels: list[str]
    grid: tuple[int, int]
    n_prefix: int
    class_names: list[str] | None = None

    def patch_logits(self) -> Float[torch.Tensor, "batch stage rows cols n_classes"]:
        """The patch tokens' logits on the grid."""
        patches = self.logits.narrow(2, self.n_prefix, self.logits.shape[2] - self.n_prefix)
        return rearrange(patches, "b s (r c) k -> b s r c k", r=self.grid[0], c=self.grid[1])

    def class_grid(self, cls: int) -> Float[np.ndarray, "batch stage rows cols"]:
        """Logit of class `cls` at every patch and stage."""
        if not 0 <= cls < self.logits.shape[-1]:
            raise PatchingError(f"class {cls} out of range [0, {self.logits.shape[-1]})")
        return self.patch_logits()[..., cls].numpy()

    def probability_grid(self, cls: int) -> Float[np.ndarray, "batch stage rows cols"]:
        """Softmax probability of class `cls` at every patch and stage."""
        return torch.softmax(self.patch_logits(), -1)[..., cls].numpy()

    def agreement(self, final_classes: torch.Tensor) -> Float[np.ndarray, " stage"]:
        """Share of patch tokens (over images and patches) whose arg-max class is the image's final prediction."""
        predicted = self.patch_logits().argmax(-1)  # [b, s, r, c]
        return (predicted == final_classes.view(-1, 1, 1, 1)).float().mean((0, 2, 3)).numpy()


@torch.no_grad()
def patch_logit_lens(
    model: HookedViT, images: Float[torch.Tensor, "batch c h w"], batch_size: int = 32
) -> PatchLogitLens:
    """The per-patch logit lens of `images` [B, C, S, S] (see the module docstring)."""
    head = model._require_head()
    if model.cfg.pool in ("flatten", "rowcol"):
        raise InputError(
            f"the per-patch logit lens reads each patch with the head's [d_model, K] map; pool={model.cfg.pool!r} has none"
        )
    model.check_images(images)
    layout = token_layout(model)
    n_layers = model.cfg.n_layers
    names = [get_act_name("resid_pre", 0)] + [get_act_name("resid_post", layer) for layer in range(n_layers)]
    chunks = []
    for start in range(0, images.shape[0], batch_size):
        _, cache = model.run_with_cache(images[start : start + batch_size], names_filter=names, return_type=None)
        stages = torch.stack([cache[name] for name in names], dim=1)  # [b, s, p, d]
        chunks.append(F.linear(model.ln_final(stages), head.W_H.T, head.b_H).float().cpu())
    return PatchLogitLens(
        logits=torch.cat(chunks),
        labels=["embed"] + [f"L{layer}" for layer in range(n_layers)],
        grid=layout.grid,
        n_prefix=layout.n_prefix,
        class_names=model.class_names,
    )
