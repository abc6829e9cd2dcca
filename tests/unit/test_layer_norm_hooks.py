"""vitmech's LayerNorm hooks mean what transformer_lens 4's normalization component's hooks mean.

transformer_lens' NormalizationBridge (wrapping a torch LayerNorm) hooks `hook_scale` = sqrt(var + eps) and
`hook_normalized` = (x - mean) / scale, before the gain and bias; an edit of either reaches the output.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from transformer_lens.model_bridge.generalized_components.normalization import NormalizationBridge

from vitmech.model.layer_norm import LayerNorm


def _pair(d: int = 8, eps: float = 1e-6, seed: int = 0) -> tuple[LayerNorm, NormalizationBridge]:
    g = torch.Generator().manual_seed(seed)
    torch_ln = torch.nn.LayerNorm(d, eps=eps)
    with torch.no_grad():
        torch_ln.weight.copy_(1 + 0.3 * torch.randn(d, generator=g))
        torch_ln.bias.copy_(0.3 * torch.randn(d, generator=g))
    bridge = NormalizationBridge(name="ln", config=SimpleNamespace(eps=eps))
    bridge.set_original_component(torch_ln)
    ours = LayerNorm(d, eps)
    with torch.no_grad():
        ours.w.copy_(torch_ln.weight)
        ours.b.copy_(torch_ln.bias)
    return ours, bridge


def _run(module, x, edit=None):
    seen = {}

    def keep(name):
        def hook(t, hook):
            seen[name] = t.detach().clone()
            return edit(name, t) if edit else None

        return hook

    module.hook_scale.add_hook(keep("scale"))
    module.hook_normalized.add_hook(keep("normalized"))
    try:
        out = module(x)
    finally:
        module.hook_scale.remove_hooks()
        module.hook_normalized.remove_hooks()
    return out, seen


def test_hook_values_and_output_match_transformer_lens():
    ours, bridge = _pair()
    x = 3 * torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(1)) + 1
    out, seen = _run(ours, x)
    out_tl, seen_tl = _run(bridge, x)
    torch.testing.assert_close(out, out_tl, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(seen["scale"], seen_tl["scale"], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(seen["normalized"], seen_tl["normalized"], atol=1e-6, rtol=1e-6)
    # before gain and bias: zero mean, unit variance per token
    torch.testing.assert_close(seen["normalized"].mean(-1), torch.zeros(2, 5), atol=1e-6, rtol=0)
    torch.testing.assert_close(ours(x), torch.nn.functional.layer_norm(x, (8,), ours.w, ours.b, 1e-6))


def test_an_edit_of_hook_normalized_reaches_the_output_the_same_way():
    ours, bridge = _pair(seed=2)
    x = torch.randn(1, 3, 8, generator=torch.Generator().manual_seed(3))

    def zero_first_feature(name, t):
        if name != "normalized":
            return None
        t = t.clone()
        t[..., 0] = 0
        return t

    out, _ = _run(ours, x, zero_first_feature)
    out_tl, _ = _run(bridge, x, zero_first_feature)
    torch.testing.assert_close(out, out_tl, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out[..., 0], ours.b[0].expand(1, 3).detach())  # only the bias is left
