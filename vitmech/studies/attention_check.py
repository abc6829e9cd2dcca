"""Verify the attention math of a ViT by hand.

Runs the model with a cache on a demo image, recomputes one layer's attention pattern from the cached
normalised residual and W_Q, W_K, b_Q, b_K, and checks it equals `hook_pattern` (exit status 1 if not).

    vitmech attention-check --model vit_base_patch16_224 --layer 5
"""

from __future__ import annotations

import argparse

from vitmech.cli.args import PRETRAINED, add_models, add_run

QUICK = {"layer": 0}


def demo_image(size: int = 224, seed: int = 0) -> object:
    """A bright elliptical blob with a bar on a noisy dark sky: [size, size, 3] uint8."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    blob = np.exp(-((x / 0.35) ** 2 + (y / 0.2) ** 2) * 2.0) + 0.6 * np.exp(-((x / 0.5) ** 2 + (y / 0.04) ** 2))
    img = np.clip(blob[..., None] * np.array([1.0, 0.85, 0.7]) + 0.05 * rng.standard_normal((size, size, 3)), 0, 1)
    return (img * 255).astype(np.uint8)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_models(parser, [PRETRAINED])
    parser.add_argument("--layer", type=int, default=5, help="layer whose attention is recomputed by hand")
    add_run(parser)


def run(args: argparse.Namespace) -> int:
    import math

    import torch
    from einops import einsum

    from vitmech.cli.args import models_from
    from vitmech.studies._common import models, start
    from vitmech.tokens import token_layout

    names = models_from(args)
    out = start(args)
    loaded = models(args, names[:1])
    model, weights = loaded[0].model, loaded[0].note
    cfg = model.cfg
    if not 0 <= args.layer < cfg.n_layers:
        args.parser.error(f"--layer must be in [0, {cfg.n_layers})")
    images = model.preprocess(demo_image(cfg.image_size))
    with torch.no_grad():
        output, cache = model.run_with_cache(images)
    layer = args.layer
    ln1 = model.blocks[layer].ln1
    x = cache["normalized", layer, "ln1"] * ln1.w + ln1.b  # [1, P, d] = LN1(resid_pre): the hook is before gain, bias
    attn = model.blocks[layer].attn
    q = einsum(x, attn.W_Q, "b p d, h d e -> b p h e") + attn.b_Q
    k = einsum(x, attn.W_K, "b p d, h d e -> b p h e") + attn.b_K
    scores = einsum(q, k, "b q h e, b k h e -> b h q k") / math.sqrt(cfg.d_head)
    manual = torch.softmax(scores, dim=-1)
    cached = cache["pattern", layer]
    err = (manual - cached).abs().max().item()
    layout = token_layout(model)
    cls_row = layout.patches(layout.readout(cached[0], dim=-2), -1)  # [H, N]
    p = cls_row / cls_row.sum(-1, keepdim=True)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(-1)
    ok = err < 1e-5
    lines = [
        f"model      : {names[0]} ({weights}); {cfg.n_layers} layers x {cfg.n_heads} heads, "
        f"{cfg.n_tokens} tokens, {model.n_params / 1e6:.1f}M parameters",
        f"output     : {tuple(output.shape)}; {len(cache)} cached activations",
        f"layer {layer:<4} : manual softmax(QK^T/sqrt(d_head)) vs hook_pattern, max |diff| = {err:.2e}",
        f"{layout.readout_name}->patch entropy by head (nats, max ln {cfg.n_patches} = {math.log(cfg.n_patches):.3f}): "
        + " ".join(f"{e:.2f}" for e in entropy.tolist()),
        "PASS: hand-computed attention equals the cached pattern" if ok else "FAIL: attention mismatch",
    ]
    if loaded[0].random:
        lines.insert(0, "RANDOM WEIGHTS (--random-init)")
    text = "\n".join(lines)
    (out / "report.md").write_text("# Attention by hand\n\n```\n" + text + "\n```\n")
    print(text)
    return 0 if ok else 1
