"""Verify the attention math of a ViT by hand (the first step of the Galaxy Zoo fine-tuning study, docs/attention.md#the-galaxy-zoo-fine-tuning-table-and-the-scripts).

Loads a ViT (pretrained where a hub is reachable, otherwise a seeded random init, and says so),
runs it with a cache, recomputes one layer's attention pattern from the cached normalised
residual and W_Q, W_K, b_Q, b_K, and checks it equals `hook_pattern`.

    python experiments/01_manual_attention.py --model vit_base_patch16_224 --layer 5
"""

from __future__ import annotations

import argparse
import logging
import math
import sys

import numpy as np
import torch
from einops import einsum

from vitmech.cli import load_model
from vitmech.tokens import token_layout


def demo_image(size: int = 224, seed: int = 0) -> np.ndarray:
    """A bright elliptical blob with a bar on a noisy dark sky: [size, size, 3] uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    blob = np.exp(-((x / 0.35) ** 2 + (y / 0.2) ** 2) * 2.0) + 0.6 * np.exp(-((x / 0.5) ** 2 + (y / 0.04) ** 2))
    img = np.clip(blob[..., None] * np.array([1.0, 0.85, 0.7]) + 0.05 * rng.standard_normal((size, size, 3)), 0, 1)
    return (img * 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_base_patch16_224", help="timm name, hub id, shipped name or path")
    parser.add_argument("--layer", type=int, default=5, help="layer whose attention is recomputed by hand")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    model, weights = load_model(args.model)
    cfg = model.cfg
    if not 0 <= args.layer < cfg.n_layers:
        parser.error(f"--layer must be in [0, {cfg.n_layers})")
    images = model.preprocess(demo_image(cfg.image_size))
    with torch.no_grad():
        out, cache = model.run_with_cache(images)

    layer = args.layer
    ln1, attn = model.blocks[layer].ln1, model.blocks[layer].attn
    x = cache["normalized", layer, "ln1"] * ln1.w + ln1.b  # [1, P, d] = LN1(resid_pre); the hook is before w, b
    q = einsum(x, attn.W_Q, "b p d, h d e -> b p h e") + attn.b_Q
    k = einsum(x, attn.W_K, "b p d, h d e -> b p h e") + attn.b_K
    scores = einsum(q, k, "b q h e, b k h e -> b h q k") / math.sqrt(cfg.d_head)
    manual = torch.softmax(scores, dim=-1)
    cached = cache["pattern", layer]
    err = (manual - cached).abs().max().item()

    layout = token_layout(model)
    cls_to_patches = layout.patches(layout.readout(cached[0], dim=-2), -1)  # [H, N]
    p = cls_to_patches / cls_to_patches.sum(-1, keepdim=True)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(-1)

    print(
        f"model      : {args.model} ({weights}); {cfg.n_layers} layers x {cfg.n_heads} heads, "
        f"{cfg.n_tokens} tokens, {model.n_params / 1e6:.1f}M parameters"
    )
    print(f"output     : {tuple(out.shape)}; {len(cache)} cached activations")
    print(f"layer {layer:<4} : manual softmax(QK^T/sqrt(d_head)) vs hook_pattern, max |diff| = {err:.2e}")
    print(
        f"{layout.readout_name}->patch entropy by head (nats, max ln {cfg.n_patches} = {math.log(cfg.n_patches):.3f}): "
        + " ".join(f"{e:.2f}" for e in entropy.tolist())
    )
    ok = err < 1e-5
    print("PASS: hand-computed attention equals the cached pattern" if ok else "FAIL: attention mismatch")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
