"""explain(): Grad-CAM through the grad-cam package (CNN and ViT), Chefer et al. 2021's LRP transformer
attribution against a naive loop over the published rules, captum called through captum."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import timm
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from tests.helpers.models import seeded_images, tiny_model
from vitmech.analysis.explain import METHODS, explain
from vitmech.analysis.explain_lrp import attention_relevance, transformer_attribution
from vitmech.errors import InputError


def tiny_cnn(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("resnet10t", pretrained=False, num_classes=3, channels=(4, 8, 8, 8), stem_width=4).eval()


# ----------------------------------------------------------------------------------------- Grad-CAM


def test_cnn_gradcam_is_the_packages_output_on_the_image_grid() -> None:
    model = tiny_cnn()
    images = seeded_images(3, 128, seed=1)  # a 4 x 4 grid at the last stage (stride 32)
    target = torch.tensor([0, 2, 1])
    ours = explain(model, images, ["gradcam"], target=target).maps["gradcam"]
    with GradCAM(model=model, target_layers=[model.layer4]) as cam:
        theirs = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in target])
    assert ours.shape == (3, 128, 128)
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=0, atol=1e-6)
    assert ours.std() > 0  # not a constant map


def _hand_vit_gradcam(model, images, target) -> np.ndarray:
    """Grad-CAM by hand on the last block's ln1: patch activations (the prefix tokens counted from the
    config), gradient mean over patches as channel weights, ReLU; then the package's output convention:
    min-max scaling, cv2 resize to the image, min-max scaling again (its mean over target layers)."""
    store = {}

    def keep(module, inputs, output):
        output.retain_grad()
        store["a"] = output

    handle = model.blocks[-1].ln1.register_forward_hook(keep)
    logits = model(images.clone(), return_type="logits")
    handle.remove()
    logits.gather(1, target[:, None]).sum().backward()
    cfg = model.cfg
    n_prefix = int(cfg.class_token) + int(cfg.distill_token) + cfg.n_register_tokens
    g = cfg.image_size // cfg.patch_size
    acts = store["a"][:, n_prefix:].detach()  # [B, N, d]
    grads = store["a"].grad[:, n_prefix:]
    weights = grads.mean(1)  # [B, d]
    cam = torch.relu((acts * weights[:, None]).sum(-1)).reshape(-1, g, g).numpy()
    out = []
    for c in cam:
        c = c - c.min()
        c = c / (1e-7 + c.max())
        c = cv2.resize(np.float32(c), (cfg.image_size, cfg.image_size))
        c = c - c.min()
        out.append(c / (1e-7 + c.max()))
    return np.stack(out)


@pytest.mark.parametrize("prefix", [{}, {"n_register_tokens": 2}, {"distill_token": True, "n_classes": 5}])
def test_vit_gradcam_equals_a_hand_computation(prefix) -> None:
    model = tiny_model(seed=2, **prefix)
    images = seeded_images(2, 32, seed=3)
    target = torch.tensor([1, 4])
    ours = explain(model, images, ["gradcam"], target=target).maps["gradcam"]
    np.testing.assert_allclose(ours.numpy(), _hand_vit_gradcam(model, images, target), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------- LRP reference


def _sdiv(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a / (b + 1e-9), 0 where b == 0 (the published code's stabiliser)."""
    out = torch.zeros_like(a)
    nz = b != 0
    out[nz] = a[nz] / (b[nz] + 1e-9)
    return out


def _ref_linear(x, w, r):
    """z+ rule, one token at a time: contributions z_ij = x_i w_ij, positive part, shared by output j."""
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        zp = (x[t][:, None] * w).clamp(min=0)  # [d_in, d_out]
        out[t] = (zp * _sdiv(r[t], zp.sum(0))[None, :]).sum(1)
    return out


def _ref_matmul(a, b, r):
    """Relevance of a and b in a @ b: R_a[i, j] = sum_d a_ij b_jd R_id / z_id (halved), likewise b."""
    s = _sdiv(r, a @ b)
    ra = torch.zeros_like(a)
    rb = torch.zeros_like(b)
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            ra[i, j] = (a[i, j] * b[j] * s[i]).sum()
            rb[j] += a[i, j] * s[i] * b[j]
    return ra / 2, rb / 2


def _ref_add(a, b, r):
    s = _sdiv(r, a + b)
    ra, rb = a * s, b * s
    sa, sb, total = ra.sum(), rb.sum(), r.sum()
    ra = ra * _sdiv(_sdiv(sa.abs(), sa.abs() + sb.abs()) * total, sa)
    rb = rb * _sdiv(_sdiv(sb.abs(), sa.abs() + sb.abs()) * total, sb)
    return ra, rb


def _ln(x, ln):
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), ln.w, ln.b, ln.eps)


def _reference_attribution(model, image, target):
    """Chefer et al. 2021 on one image, written as a plain forward then a loop down the layers."""
    cfg = model.cfg
    n_prefix = int(cfg.class_token) + int(cfg.distill_token) + cfg.n_register_tokens
    gelu = torch.nn.functional.gelu
    # forward, keeping everything (pattern as a leaf of the graph for its gradient)
    x = model.embed_images(image[None])[0]
    saved, patterns = [], []
    for block in model.blocks:
        a = block.attn
        h1 = _ln(x, block.ln1)
        q = torch.einsum("pd,hde->hpe", h1, a.W_Q) + a.b_Q[:, None]
        k = torch.einsum("pd,hde->hpe", h1, a.W_K) + a.b_K[:, None]
        v = torch.einsum("pd,hde->hpe", h1, a.W_V) + a.b_V[:, None]
        pattern = torch.softmax(q @ k.transpose(-1, -2) / cfg.d_head**0.5, -1)
        pattern.retain_grad()
        z = pattern @ v  # [H, P, e]
        attn_out = torch.einsum("hpe,hed->pd", z, a.W_O) + a.b_O
        mid = x + attn_out
        h2 = _ln(mid, block.ln2)
        post = gelu(h2 @ block.mlp.W_in + block.mlp.b_in)
        mlp_out = post @ block.mlp.W_out + block.mlp.b_out
        saved.append(
            dict(
                x=x,
                h1=h1,
                q=q,
                k=k,
                v=v,
                pattern=pattern,
                z=z,
                attn_out=attn_out,
                mid=mid,
                h2=h2,
                post=post,
                mlp_out=mlp_out,
            )
        )
        patterns.append(pattern)
        x = mid + mlp_out
    tokens = _ln(x, model.ln_final)
    pooled = tokens[0] if cfg.pool == "cls" else tokens[n_prefix:].mean(0)
    logits = pooled @ model.head.W_H + model.head.b_H
    logits[target].backward()
    # relevance, down the layers
    r_logits = torch.zeros_like(logits).detach()
    r_logits[target] = 1.0
    pooled, tokens = pooled.detach(), tokens.detach()
    r_pooled = _ref_linear(pooled[None], model.head.W_H.detach(), r_logits[None])[0]
    r = torch.zeros_like(tokens)
    if cfg.pool == "cls":
        r[0] = tokens[0] * _sdiv(r_pooled, tokens[0])
    else:
        n = tokens.shape[0] - n_prefix
        r[n_prefix:] = tokens[n_prefix:] * _sdiv(r_pooled, tokens[n_prefix:].mean(0))[None] / n
    cams = [None] * cfg.n_layers
    with torch.no_grad():
        for layer in reversed(range(cfg.n_layers)):
            s, block = saved[layer], model.blocks[layer]
            s = {k: v.detach() for k, v in s.items()}
            r_skip, r_mlp = _ref_add(s["mid"], s["mlp_out"], r)
            r_h2 = _ref_linear(s["h2"], block.mlp.W_in, _ref_linear(s["post"], block.mlp.W_out, r_mlp))
            r = s["mid"] * (_sdiv(r_skip, s["mid"]) + _sdiv(r_h2, s["mid"]))
            r_skip, r_attn = _ref_add(s["x"], s["attn_out"], r)
            z_flat = s["z"].permute(1, 0, 2).reshape(s["z"].shape[1], -1)
            r_z = _ref_linear(z_flat, block.attn.W_O.reshape(-1, cfg.d_model), r_attn)
            r_z = r_z.reshape(-1, cfg.n_heads, cfg.d_head).permute(1, 0, 2)
            r_h1 = torch.zeros_like(s["h1"])
            r_pattern = torch.zeros_like(s["pattern"])
            for h in range(cfg.n_heads):
                r_pattern[h], r_v = _ref_matmul(s["pattern"][h], s["v"][h], r_z[h])
                r_q, r_kt = _ref_matmul(s["q"][h], s["k"][h].T, r_pattern[h])
                for w, rr in ((block.attn.W_Q[h], r_q), (block.attn.W_K[h], r_kt.T), (block.attn.W_V[h], r_v)):
                    r_h1 += _ref_linear(s["h1"], w, rr)
            cams[layer] = r_pattern
            r = s["x"] * (_sdiv(r_skip, s["x"]) + _sdiv(r_h1, s["x"]))
        n_tokens = tokens.shape[0]
        joint = torch.eye(n_tokens, dtype=tokens.dtype)
        for layer in range(cfg.n_layers):
            cam = (patterns[layer].grad * cams[layer]).clamp(min=0).mean(0)
            joint = (torch.eye(n_tokens, dtype=tokens.dtype) + cam) @ joint
        if cfg.pool == "cls":
            row = joint[0]
        else:
            row = joint[n_prefix:].mean(0)
    g = cfg.image_size // cfg.patch_size
    return row[n_prefix:].reshape(g, g), torch.stack(cams)


@pytest.mark.parametrize("overrides", [{}, {"n_register_tokens": 2, "class_token": True, "pool": "avg"}])
def test_lrp_transformer_attribution_matches_a_naive_reference(overrides) -> None:
    model = tiny_model(seed=4, n_layers=2, n_heads=2, d_model=16, d_head=8, d_mlp=32, n_classes=3, **overrides)
    model = model.double()
    images = seeded_images(2, 32, seed=5).double()
    target = torch.tensor([2, 0])
    ours = transformer_attribution(model, images, target)
    relevance = attention_relevance(model, images, target)
    for b in range(2):
        ref_map, ref_cams = _reference_attribution(model, images[b], int(target[b]))
        scale = ref_map.abs().max()
        assert scale > 0
        torch.testing.assert_close(ours[b], ref_map, rtol=0, atol=1e-5 * scale)
        torch.testing.assert_close(relevance[b], ref_cams, rtol=0, atol=1e-5 * ref_cams.abs().max())
    assert not torch.allclose(ours[0] / ours[0].sum(), ours[1] / ours[1].sum())


def test_lrp_refuses_models_outside_the_published_rules() -> None:
    model = tiny_model(seed=0, gated_mlp=True)
    with pytest.raises(InputError, match="gated MLP"):
        transformer_attribution(model, seeded_images(1, 32), 0)


# ----------------------------------------------------------------------------------------- captum


@pytest.mark.parametrize(
    ("method", "cls", "reduce"),
    [
        ("integrated_gradients", "IntegratedGradients", lambda a: a.sum(1)),
        ("saliency", "Saliency", lambda a: a.amax(1)),
    ],
)
def test_captum_methods_are_computed_by_captum(monkeypatch, method, cls, reduce) -> None:
    import captum.attr

    original = getattr(captum.attr, cls).attribute
    calls = []

    def spy(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls.append((kwargs, out.detach().clone()))
        return out

    monkeypatch.setattr(getattr(captum.attr, cls), "attribute", spy)
    for model in (tiny_model(seed=1), tiny_cnn()):
        images = seeded_images(2, 32, seed=6)
        ex = explain(model, images, [method], target=torch.tensor([1, 2]), ig_steps=8)
        kwargs, out = calls[-1]
        assert kwargs["target"].tolist() == [1, 2]
        torch.testing.assert_close(ex.maps[method], reduce(out).float())
    assert len(calls) == 2


# ----------------------------------------------------------------------------------------- explain()


def test_explain_returns_every_method_on_the_image_grid_with_registers() -> None:
    model = tiny_model(seed=3, n_register_tokens=2)
    images = seeded_images(3, 32, seed=7)
    ex = explain(model, images, list(METHODS), ig_steps=4, batch_size=2)
    assert set(ex.maps) == set(METHODS)
    for name, maps in ex.maps.items():
        assert maps.shape == (3, 32, 32) and maps.dtype == torch.float32, name
        assert torch.isfinite(maps).all(), name
    torch.testing.assert_close(ex.targets, ex.logits.argmax(-1))
    assert len(ex.to_frame()) == 3 * len(METHODS)


def test_explain_target_changes_class_specific_maps_only() -> None:
    model = tiny_model(seed=3)
    images = seeded_images(2, 32, seed=8)
    a = explain(model, images, ["rollout", "transformer_attribution"], target=0)
    b = explain(model, images, ["rollout", "transformer_attribution"], target=1)
    torch.testing.assert_close(a.maps["rollout"], b.maps["rollout"])
    assert not torch.allclose(a.maps["transformer_attribution"], b.maps["transformer_attribution"])


def test_explain_refuses_attention_methods_on_a_cnn_and_unknown_names() -> None:
    with pytest.raises(InputError, match="HookedViT"):
        explain(tiny_cnn(), seeded_images(1, 32), ["rollout"])
    with pytest.raises(InputError, match="unknown explanation methods"):
        explain(tiny_model(), seeded_images(1, 32), ["gradcam", "nope"])


def test_figure_has_one_column_per_method_and_stamps_random_weights() -> None:
    from vitmech.viz.explain import plot_explanations

    model = tiny_model(seed=3)
    images = seeded_images(2, 32, seed=9)
    ex = explain(model, images, ["rollout", "gradcam"], random_weights=True)
    rgb = np.random.default_rng(0).integers(0, 255, (2, 48, 48, 3), dtype=np.uint8)
    fig = plot_explanations(list(rgb), {"tiny": ex})
    panels = [ax for ax in fig.axes if ax.get_title() in ("image", "rollout", "gradcam")]
    assert len(panels) == 3  # titles on the first row: image + 2 methods
    assert "RANDOM WEIGHTS" in [t.get_text() for t in fig.texts]
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_shipped_cnn_loads_and_classifies_held_out_galaxies() -> None:
    from vitmech.data.galaxies import generate_galaxies
    from vitmech.preprocessing import preprocess
    from vitmech.train.cnn import load_cnn, zoo_cnns

    if "vitmech/mini-cnn" not in zoo_cnns():
        pytest.skip("shipped CNN not in this checkout")
    model = load_cnn("vitmech/mini-cnn")
    card = model.card
    assert card["metrics"]["test"]["n"] == 568 and not card["random_init"]
    batch = generate_galaxies(24, seed=12345, size=224)  # not the training stream (seed 0)
    with torch.no_grad():
        predicted = model(preprocess(list(batch.images), model.preprocessing)).argmax(-1)
    assert (predicted.numpy() == np.asarray(batch.labels)).mean() >= 0.8
    ex = explain(model, preprocess(list(batch.images[:2]), model.preprocessing), ["gradcam"])
    assert ex.maps["gradcam"].shape == (2, 112, 112)
