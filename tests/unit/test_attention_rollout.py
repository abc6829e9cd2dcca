"""The rollout family against plain loops on real cached patterns, closed forms and vit-explain's semantics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers.models import seeded_images, tiny_model
from tests.helpers.typecheck import runtime_checks_off
from vitmech.analysis.attention import collect_patterns
from vitmech.analysis.rollout import (
    RolloutSettings,
    attention_flow,
    attention_gradients,
    discard_lowest,
    fuse_heads,
    gmar,
    gmar_head_weights,
    gradient_rollout,
    max_flow_values,
    residual_attention,
    rollout,
)


@pytest.fixture(scope="module")
def model_and_images():
    return tiny_model(seed=2), seeded_images(3, 32, seed=7)


@pytest.fixture(scope="module")
def cached(model_and_images):
    model, images = model_and_images
    with torch.no_grad():
        _, cache = model.run_with_cache(images, names_filter=lambda n: n.endswith("hook_pattern"))
    return [cache["pattern", layer].double().numpy() for layer in range(model.cfg.n_layers)]


def numpy_rollout(layers: list[np.ndarray], alpha: float, fuse=np.mean) -> np.ndarray:
    """R = A_L ... A_1 for each image by a plain loop (A_l = rownorm(alpha fused + (1 - alpha) I))."""
    out = []
    for b in range(layers[0].shape[0]):
        r = np.eye(layers[0].shape[-1])
        for pattern in layers:  # layer 0 first: later layers multiply on the left
            a = alpha * fuse(pattern[b], axis=0) + (1 - alpha) * np.eye(pattern.shape[-1])
            a = a / a.sum(-1, keepdims=True)
            r = a @ r
        out.append(r)
    return np.stack(out)


@pytest.mark.parametrize(
    ("alpha", "fusion", "fuse"), [(0.5, "mean", np.mean), (0.8, "max", np.max), (0.3, "min", np.min)]
)
def test_rollout_equals_a_plain_loop_over_layers_on_cached_patterns(cached, alpha, fusion, fuse):
    patterns = torch.stack([torch.from_numpy(p) for p in cached], 1)
    expected = numpy_rollout(cached, alpha, fuse)
    result = rollout(patterns, alpha=alpha, head_fusion=fusion)
    np.testing.assert_allclose(result.rows.numpy(), expected, atol=1e-12)
    cls_map = expected[:, 0, 1:] / expected[:, 0, 1:].sum(-1, keepdims=True)
    np.testing.assert_allclose(result.map(0).numpy(), cls_map, atol=1e-12)
    np.testing.assert_allclose(
        rollout(patterns, alpha, fusion, tokens=[5, 0]).map(5).numpy(),
        expected[:, 5, 1:] / expected[:, 5, 1:].sum(-1, keepdims=True),
        atol=1e-12,
    )
    assert result.grid(0).shape == (3, 4, 4)


def vit_explain_discard(fused: np.ndarray, ratio: float) -> np.ndarray:
    """vit-explain's discard for one matrix (argsort of the flattened matrix, CLS->CLS never zeroed)."""
    flat = fused.flatten().copy()
    idx = np.argsort(flat, kind="stable")[: int(flat.size * ratio)]
    idx = idx[idx != 0]
    flat[idx] = 0
    return flat.reshape(fused.shape)


def test_discard_ratio_is_applied_per_batch_item_and_layer(cached):
    patterns = torch.stack([torch.from_numpy(p) for p in cached], 1)
    fused = fuse_heads(patterns, "mean")
    for ratio in (0.3, 0.6):  # both branches: zero the lowest / keep the highest
        kept = discard_lowest(fused, ratio)
        for b in range(fused.shape[0]):
            for layer in range(fused.shape[1]):
                expected = vit_explain_discard(fused[b, layer].numpy(), ratio)
                np.testing.assert_array_equal(kept[b, layer].numpy(), expected)
    # the CLS->CLS entry survives even when it is among the lowest
    tiny_cls = fused.clone()
    tiny_cls[..., 0, 0] = 0.0 + 1e-9
    assert (discard_lowest(tiny_cls, 0.9)[..., 0, 0] == tiny_cls[..., 0, 0]).all()
    # and the rollout uses it: rows of R still sum to 1, the maps differ from plain rollout
    r = rollout(patterns, discard_ratio=0.6)
    assert torch.allclose(r.rows.sum(-1), torch.ones(()).double())
    assert not torch.allclose(r.map(0), rollout(patterns).map(0))


def test_alpha_one_with_everything_discarded_keeps_tokens_as_identity_rows():
    fused = torch.zeros(1, 1, 3, 3)
    fused[0, 0, 0, 0] = 1.0
    m = residual_attention(fused, alpha=1.0)
    assert torch.equal(m[0, 0], torch.eye(3))


# ----------------------------------------------------------------------------------- attention flow


def test_flow_of_one_layer_is_the_attention_row_and_of_two_layers_the_sum_of_path_minima():
    gen = torch.Generator().manual_seed(3)
    caps = torch.softmax(torch.randn(2, 10, 10, generator=gen, dtype=torch.float64) * 2, -1).numpy()
    for backend in ("scipy", "networkx"):
        np.testing.assert_allclose(max_flow_values(caps[:1], token=4, backend=backend), caps[0, 4], atol=1e-7)
        # two layers: the paths t -> k -> j share no edge, so the max-flow is sum_k min(A2[t, k], A1[k, j])
        expected = np.minimum(caps[1, 4][:, None], caps[0]).sum(0)
        np.testing.assert_allclose(max_flow_values(caps, token=4, backend=backend), expected, atol=1e-6)


def test_flow_scipy_equals_networkx_on_a_model(cached):
    patterns = torch.stack([torch.from_numpy(p) for p in cached], 1)[:1]
    fast = attention_flow(patterns, token=0, progress=False)
    exact = attention_flow(patterns, token=0, backend="networkx", progress=False)
    np.testing.assert_allclose(fast.rows.numpy(), exact.rows.numpy(), atol=1e-6)
    assert fast.rows.sum() == pytest.approx(1.0) and fast.method == "flow"
    assert fast.map(0).shape == (1, 16) and fast.settings["backend"] == "scipy"


# ----------------------------------------------------------------------------------- gradients


def test_attention_gradients_equal_gradients_through_an_added_zero(model_and_images):
    """Independent route: add a zero leaf tensor to each pattern and differentiate w.r.t. it."""
    model, images = model_and_images
    result = attention_gradients(model, images, target=None, batch_size=2, progress=False)
    assert all(p.grad is None for p in model.parameters()), "parameters' .grad must stay untouched"
    deltas = [torch.zeros(images.shape[0], 4, 17, 17, requires_grad=True) for _ in range(3)]
    hooks = [(f"blocks.{layer}.attn.hook_pattern", lambda p, hook, d=deltas[layer]: p + d) for layer in range(3)]
    with model.hooks(fwd_hooks=hooks):
        logits = model(images)
    logits.gather(1, logits.argmax(-1, keepdim=True)).sum().backward()
    for layer in range(3):
        torch.testing.assert_close(result.gradients[:, layer], deltas[layer].grad, atol=1e-6, rtol=1e-5)
    assert torch.equal(result.targets, logits.argmax(-1))
    assert result.gradients[:, -1, :, 1:].abs().max() == 0, "only the CLS query of the last layer reaches the logits"
    model.zero_grad(set_to_none=True)


def test_gradient_targets_int_tensor_and_callable(model_and_images):
    model, images = model_and_images
    by_int = attention_gradients(model, images, target=1, progress=False)
    by_tensor = attention_gradients(model, images, target=torch.tensor([1, 1, 1]), progress=False)
    by_callable = attention_gradients(model, images, target=lambda out: out[:, 1], progress=False)
    torch.testing.assert_close(by_int.gradients, by_tensor.gradients)
    torch.testing.assert_close(by_int.gradients, by_callable.gradients)
    assert by_callable.targets is None and by_int.targets.tolist() == [1, 1, 1]
    with pytest.raises(IndexError, match="out of range"):
        attention_gradients(model, images, target=5, progress=False)
    with pytest.raises(ValueError, match="callable"):
        attention_gradients(model, images, target=lambda out: out, progress=False)


def test_gradient_rollout_equals_a_plain_loop(model_and_images):
    model, images = model_and_images
    g = attention_gradients(model, images, progress=False)
    a, d = g.patterns.double().numpy(), g.gradients.double().numpy()
    result = gradient_rollout(g.patterns.double(), g.gradients.double())
    for b in range(a.shape[0]):
        r = np.eye(17)
        for layer in range(a.shape[1]):
            cam = np.maximum(d[b, layer] * a[b, layer], 0).mean(0)
            r = r + cam @ r
        np.testing.assert_allclose(result.rows[b].numpy(), r, atol=1e-10)
    assert result.map(0).shape == (3, 16) and result.method == "gradient_rollout"


def test_gmar_weights_are_normalised_gradient_norms_and_feed_a_weighted_rollout(model_and_images):
    model, images = model_and_images
    g = attention_gradients(model, images, progress=False)
    patterns, grads = g.patterns.double(), g.gradients.double()
    for norm, ord_ in (("l1", 1), ("l2", 2)):
        weights = gmar_head_weights(grads, norm)
        scores = np.linalg.norm(grads.numpy().reshape(*grads.shape[:3], -1), ord=ord_, axis=-1)
        np.testing.assert_allclose(weights.numpy(), scores / scores.sum(-1, keepdims=True), atol=1e-12)
        result = gmar(patterns, grads, norm=norm)
        fused = [
            np.einsum("bhqk,bh->bqk", patterns[:, layer].numpy(), weights[:, layer].numpy())[:, None]
            for layer in range(3)
        ]
        expected = numpy_rollout(fused, 0.5)
        np.testing.assert_allclose(result.rows.numpy(), expected, atol=1e-12)
    # the chunked L1 norm gives the same weights with ragged chunks
    import vitmech.analysis.rollout as rollout_module

    whole = gmar_head_weights(grads, "l1")
    try:
        rollout_module._CHUNK_ELEMENTS = 289 * 5
        torch.testing.assert_close(gmar_head_weights(grads, "l1"), whole)
    finally:
        rollout_module._CHUNK_ELEMENTS = 1 << 20
    # equal gradient norms in every head: GMAR is the mean-fused rollout
    torch.testing.assert_close(gmar(patterns, torch.ones_like(grads)).rows, rollout(patterns).rows)
    assert torch.equal(gmar_head_weights(torch.zeros_like(grads)), torch.full(grads.shape[:3], 0.25).double())


# ----------------------------------------------------------------------------------- bad input


def test_bad_rollout_input_gets_clear_errors(cached, unchecked_types):
    patterns = torch.stack([torch.from_numpy(p) for p in cached], 1)
    with pytest.raises(ValueError, match="alpha"):
        rollout(patterns, alpha=0.0)
    with pytest.raises(ValueError, match="discard_ratio"):
        rollout(patterns, discard_ratio=1.0)
    with runtime_checks_off(), pytest.raises(ValueError, match="head_fusion"):
        RolloutSettings(head_fusion="median")
    with pytest.raises(IndexError, match="tokens"):
        rollout(patterns, tokens=[17])
    with pytest.raises(ValueError, match="layer, head"):
        rollout(patterns[:, 0])
    with pytest.raises(ValueError, match="differ in shape"):
        gradient_rollout(patterns, patterns[:, :2])
    with pytest.raises(ValueError, match="norm"):
        gmar(patterns, patterns, norm="l3")
    with pytest.raises(ValueError, match="backend"):
        attention_flow(patterns[:1], backend="igraph", progress=False)
    with pytest.raises(KeyError, match="tokens"):
        rollout(patterns, tokens=[0]).map(3)


def test_collect_and_rollout_run_from_images(model_and_images):
    model, images = model_and_images
    patterns = collect_patterns(model, images, progress=False)
    r = rollout(patterns, tokens=[0])
    assert r.rows.shape == (3, 1, 17) and r.entropy(0).shape == (3,)
    assert (r.entropy(0) <= np.log(16) + 1e-6).all()
    assert list(r.to_frame().columns) == ["image", "token", "method", "entropy", "top10"]
