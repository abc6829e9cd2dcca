"""Path patching against a hand-built two-run hook version (full forwards, no suffix engine)."""

from __future__ import annotations

import pytest
import torch
from einops import einsum

from tests.helpers.models import seeded_images, tiny_model
from tests.helpers.typecheck import runtime_checks_off
from vitmech.analysis.ablation.metrics import logit_diff
from vitmech.analysis.path_patching import path_patching
from vitmech.errors import PatchingError

B = 3


@pytest.fixture(scope="module")
def setup():
    model = tiny_model(seed=2)
    return model, seeded_images(B, 32, seed=11), seeded_images(B, 32, seed=12)


def hand_built(model, clean, corrupted, sender, receiver, component, freeze_mlps=False):
    """Wang et al.'s recipe with plain hooks: clean activations into the corrupted run through one path."""
    _, clean_cache = model.run_with_cache(clean)
    _, bad_cache = model.run_with_cache(corrupted)
    saved = {}

    def freeze_z(z, hook):
        z = bad_cache[hook.name].clone()
        if hook.name == f"blocks.{sender[0]}.attn.hook_z":
            z[:, :, sender[1]] = clean_cache[hook.name][:, :, sender[1]]
        return z

    def freeze_mlp(out, hook):
        return bad_cache[hook.name]

    def save(x, hook):
        saved["x"] = x.clone()

    receiver_hook = f"blocks.{receiver[0]}.attn.hook_{component}"
    hooks = [(f"blocks.{layer}.attn.hook_z", freeze_z) for layer in range(model.cfg.n_layers)]
    hooks.append((receiver_hook, save))
    if freeze_mlps:
        hooks += [(f"blocks.{layer}.hook_mlp_out", freeze_mlp) for layer in range(model.cfg.n_layers)]
    model.run_with_hooks(corrupted, fwd_hooks=hooks)

    def patch_receiver(x, hook):
        x = x.clone()
        x[:, :, receiver[1]] = saved["x"][:, :, receiver[1]]
        return x

    return model.run_with_hooks(corrupted, fwd_hooks=[(receiver_hook, patch_receiver)])


@pytest.mark.parametrize("component", ["q", "k", "v"])
@pytest.mark.parametrize("freeze_mlps", [False, True])
def test_path_patching_equals_the_hand_built_two_run_version(setup, component, freeze_mlps):
    model, clean, corrupted = setup
    metric = logit_diff(0, 1)
    senders = [(0, 1), (0, 3), (1, 2)]
    receivers = [(1, 0), (2, 1), (2, 3)]
    result = path_patching(
        model, clean, corrupted, metric, senders, receivers, component=component, freeze_mlps=freeze_mlps
    )
    assert result.values.shape == (3, 3, B)
    clean_m, bad_m = metric(model(clean)), metric(model(corrupted))
    for i, sender in enumerate(senders):
        for j, receiver in enumerate(receivers):
            if receiver[0] <= sender[0]:
                assert torch.isnan(result.values[i, j]).all()
                continue
            expected = metric(hand_built(model, clean, corrupted, sender, receiver, component, freeze_mlps))
            torch.testing.assert_close(result.values[i, j], expected, atol=1e-5, rtol=0)
            restored = (expected.mean() - bad_m.mean()) / (clean_m.mean() - bad_m.mean())
            assert result.restored[i, j].item() == pytest.approx(restored.item(), abs=1e-4)
    frame = result.to_frame()
    assert list(frame.index) == ["L0H1", "L0H3", "L1H2"] and frame.columns[0] == f"L1H0.{component}"


def test_direct_path_to_the_logits_and_sender_groups(setup):
    model, clean, corrupted = setup
    metric = logit_diff(0, 2)
    result = path_patching(model, clean, corrupted, metric, [(1, 1), [(0, 2), (2, 0)]], "logits")
    _, clean_cache = model.run_with_cache(clean)
    _, bad_cache = model.run_with_cache(corrupted)
    # closed form: final residual of the corrupted run plus the senders' change through W_O, then unembed
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    for row, group in enumerate([[(1, 1)], [(0, 2), (2, 0)]]):
        resid = bad_cache[last].clone()
        for layer, head in group:
            name = f"blocks.{layer}.attn.hook_z"
            diff = clean_cache[name][:, :, head] - bad_cache[name][:, :, head]
            resid += einsum(diff, model.blocks[layer].attn.W_O[head], "b p e, e d -> b p d")
        torch.testing.assert_close(result.values[row, 0], metric(model.unembed(resid)), atol=1e-5, rtol=0)
    assert result.senders == ["L1H1", "L0H2+L2H0"] and result.receivers == ["logits"]


def test_a_sender_patched_into_its_own_run_changes_nothing(setup):
    model, clean, corrupted = setup
    metric = logit_diff(0, 1)
    result = path_patching(model, clean, corrupted, metric, [(0, 0)], [(1, 1), (2, 2)], "k", source="corrupted")
    torch.testing.assert_close(result.restored, torch.zeros(1, 2), atol=1e-5, rtol=0)


def test_bad_requests(setup):
    model, clean, corrupted = setup
    with runtime_checks_off(), pytest.raises(PatchingError, match="component"):
        path_patching(model, clean, corrupted, "kl_to_clean", [(0, 0)], [(1, 0)], component="z")
    with pytest.raises(PatchingError, match="not in this model"):
        path_patching(model, clean, corrupted, "kl_to_clean", [(0, 9)], [(1, 0)])
    with runtime_checks_off(), pytest.raises(PatchingError, match="logits"):
        path_patching(model, clean, corrupted, "kl_to_clean", [(0, 0)], "resid")
