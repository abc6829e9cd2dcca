"""Rule builders shared by the families (vitmech keys on the right, TransformerLens layout)."""

from __future__ import annotations

from vitmech.config import ViTConfig
from vitmech.loading.keymap import KeyMap, Rule, optional, rule


def layer_norm(src: str, dst: str, weight: str = "weight", bias: str = "bias") -> KeyMap:
    return [rule(f"{src}.{weight}", f"{dst}.w"), rule(f"{src}.{bias}", f"{dst}.b")]


def linear(src: str, dst_w: str, dst_b: str | None, *, bias_optional_shape: int | None = None) -> KeyMap:
    """nn.Linear [out, in] -> x @ W [in, out] (+ bias)."""
    rules = [rule(f"{src}.weight", dst_w, "o i -> i o")]
    if dst_b is not None:
        b = rule(f"{src}.bias", dst_b)
        rules.append(b if bias_optional_shape is None else optional(b, (bias_optional_shape,)))
    return rules


def heads_in(src: str, name: str, dst: str, cfg: ViTConfig, n_heads: int, bias: bool | None = True) -> KeyMap:
    """A q, k or v projection [H*e, d] -> W_X [H, d, e] and b_X [H, e]; bias None: zero-filled when absent."""
    rules = [rule(f"{src}.weight", f"{dst}.W_{name}", "(h e) d -> h d e", h=n_heads)]
    b = rule(f"{src}.bias", f"{dst}.b_{name}", "(h e) -> h e", h=n_heads)
    if bias is None:
        rules.append(optional(b, (n_heads, cfg.d_head)))
    elif bias:
        rules.append(b)
    return rules


def heads_out(src: str, dst: str, n_heads: int) -> KeyMap:
    """The output projection [d, H*e] -> W_O [H, e, d], b_O [d]."""
    return [rule(f"{src}.weight", f"{dst}.W_O", "m (h e) -> h e m", h=n_heads), rule(f"{src}.bias", f"{dst}.b_O")]


def fused_heads(
    src: str, dst: str, names: str, cfg: ViTConfig, n_heads: int, weight: str = ".weight", bias: str = ".bias"
) -> KeyMap:
    """A fused projection [(n H e), d] (timm qkv; torch MultiheadAttention's in_proj with weight="_weight",
    bias="_bias") -> W_X per name; its bias (zero-filled when the source has none)."""
    n = len(names)
    w = rule(src + weight, [f"{dst}.W_{c}" for c in names], "(n h e) d -> n h d e", n=n, h=n_heads)
    b = rule(src + bias, [f"{dst}.b_{c}" for c in names], "(n h e) -> n h e", n=n, h=n_heads)
    return [w, optional(b, (n, n_heads, cfg.d_head))]


def patch_embed(src_w: str, src_b: str | None, cfg: ViTConfig) -> KeyMap:
    """A stride-p convolution [d, C, p, p] -> W_E [C*p*p, d]; its bias (zero-filled when absent, CLIP)."""
    p = cfg.patch_size
    rules = [rule(src_w, "embed.W_E", "d c p1 p2 -> (c p1 p2) d", p1=p, p2=p)]
    if src_b is not None:
        rules.append(optional(rule(src_b, "embed.b_E"), (cfg.d_model,)))
    return rules


def vector(src: str, dst: str, unit_axes: int = 2) -> Rule:
    """A learned vector stored with leading unit axes (cls_token [1, 1, d] for unit_axes=2) -> [d]."""
    if unit_axes == 0:
        return rule(src, dst)
    names = " ".join(f"u{i}" for i in range(unit_axes))
    return rule(src, dst, f"{names} d -> ({names} d)", **{f"u{i}": 1 for i in range(unit_axes)})


def rows(src: str, dst: str, unit_axes: int = 1) -> Rule:
    """[1, n, d] -> [n, d] (position embeddings, register tokens); unit_axes=0 for a plain [n, d]."""
    if unit_axes == 0:
        return rule(src, dst)
    return rule(src, dst, "a n d -> (a n) d", a=1)
