"""Fine-tuning tiers on a tiny model and generated data: each lowers the loss; the linear probe leaves the
backbone bit-identical; LoRA (merged) changes only W_Q, W_V and the head; full uses differential rates."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.models import seeded_images, tiny_model
from tests.helpers.typecheck import runtime_checks_off
from vitmech import HookedViT
from vitmech.data.procedural import generate_procedural
from vitmech.train import (
    ArrayDataset,
    LoRAConfig,
    TierConfig,
    TrainConfig,
    apply_lora,
    fine_tune,
    fit,
    has_lora,
    lora_parameters,
    merge_lora,
    prepare_tier,
    with_new_head,
)
from vitmech.train.evaluate import predict
from vitmech.train.loop import task_loss


def procedural_set(n: int = 48, seed: int = 3, n_classes: int = 4) -> ArrayDataset:
    """Tiny 32 px procedural scenes, labels folded to `n_classes` (shape index mod n_classes)."""
    batch = generate_procedural(n, seed, size=32)
    labels = torch.from_numpy(batch.labels) // 4 % n_classes
    return ArrayDataset(torch.from_numpy(batch.images), labels, [f"c{i}" for i in range(n_classes)], "classification")


def full_loss(model: HookedViT, data: ArrayDataset) -> float:
    with torch.no_grad():
        return float(task_loss(predict(model, data), data.targets, data.task))


@pytest.fixture(scope="module")
def data() -> ArrayDataset:
    return procedural_set()


@pytest.mark.parametrize("tier", ["linear_probe", "lora", "full"])
def test_each_tier_lowers_the_loss(tiny_vit, tier, data):
    base = with_new_head(tiny_vit, data.n_outputs, data.names)
    before = full_loss(base, data)
    result = fine_tune(
        base,
        data,
        TierConfig(tier, head_lr=3e-2, backbone_lr=3e-3),
        TrainConfig(steps=25, batch_size=16),
        new_head=False,
        cache_features=False,
        progress=False,
    )
    after = full_loss(result.model, data)
    assert after < before - 0.05, (tier, before, after)


def test_linear_probe_leaves_the_backbone_bit_identical(data):
    base = tiny_model(1)
    for cache in (True, False):
        result = fine_tune(
            base,
            data,
            TierConfig("linear_probe", head_lr=3e-2),
            TrainConfig(steps=10, batch_size=16),
            cache_features=cache,
            progress=False,
        )
        before, after = base.state_dict(), result.model.state_dict()
        backbone = [k for k in after if not k.startswith("head.")]
        assert backbone and all(torch.equal(before[k], after[k]) for k in backbone)
        assert not torch.equal(after["head.W_H"], torch.zeros_like(after["head.W_H"]))


def test_linear_probe_feature_cache_matches_the_generic_loop(data):
    """The fast path (features computed once) takes the same steps as the full loop with a frozen backbone."""
    base = tiny_model(2)
    runs = [
        fine_tune(
            base,
            data,
            TierConfig("linear_probe", head_lr=1e-2),
            TrainConfig(steps=8, batch_size=16, clip_norm=None),
            cache_features=cache,
            progress=False,
        ).model
        for cache in (True, False)
    ]
    assert torch.allclose(runs[0].head.W_H, runs[1].head.W_H, atol=1e-5)


def test_lora_merged_changes_only_query_value_and_head(data):
    base = tiny_model(3)
    result = fine_tune(
        base,
        data,
        TierConfig("lora", head_lr=3e-2, backbone_lr=1e-2, lora=LoRAConfig(rank=4, alpha=8)),
        TrainConfig(steps=10, batch_size=16),
        progress=False,
    )
    assert not has_lora(result.model)
    before, after = base.state_dict(), result.model.state_dict()
    assert set(after) == set(before)
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    expected = {f"blocks.{i}.attn.W_{n}" for i in range(base.cfg.n_layers) for n in "QV"} | {"head.W_H", "head.b_H"}
    assert changed == expected
    # the merged model is a plain HookedViT again: it exports to timm with the same logits
    from vitmech.loading import to_timm

    x = seeded_images(2, 32, seed=9)
    with torch.no_grad():
        assert (to_timm(result.model).eval()(x) - result.model(x)).abs().max() < 1e-5
    # rank of each block's merged update is at most the LoRA rank
    for i in range(base.cfg.n_layers):
        delta = after[f"blocks.{i}.attn.W_Q"] - before[f"blocks.{i}.attn.W_Q"]
        full = delta.permute(1, 0, 2).reshape(base.cfg.d_model, -1)
        assert torch.linalg.matrix_rank(full, atol=1e-6) <= 4


def test_lora_starts_at_the_base_model_and_merge_keeps_outputs():
    model = tiny_model(4)
    x = seeded_images(3, 32, seed=1)
    with torch.no_grad():
        reference = model(x).clone()
    apply_lora(model, LoRAConfig(rank=2, alpha=4, targets=("q", "k", "v")), seed=0)
    with torch.no_grad():
        assert torch.equal(model(x), reference)  # B starts at zero
        for p in lora_parameters(model):
            if p.shape[0] == 2:  # B matrices [rank, H * d_head]
                p.normal_(0, 0.3)
        adapted = model(x).clone()
    assert (adapted - reference).abs().max() > 1e-2
    # the hooks still carry their names and see the adapted queries
    _, cache = model.run_with_cache(x, names_filter="blocks.0.attn.hook_q")
    assert "blocks.0.attn.hook_q" in cache
    merge_lora(model)
    assert not has_lora(model) and set(model.state_dict()) == set(tiny_model(4).state_dict())
    with torch.no_grad():
        assert torch.allclose(model(x), adapted, atol=1e-5)


def test_lora_update_matches_a_naive_per_head_computation():
    model = tiny_model(5)
    apply_lora(model, LoRAConfig(rank=3, alpha=6, targets=("v",), layers=(1,)), seed=2)
    attn = model.blocks[1].attn
    with torch.no_grad():
        attn.lora_B["v"].normal_(0, 0.5)
    x = torch.randn(2, model.cfg.n_tokens, model.cfg.d_model)
    _, _, v = attn.qkv(x)
    scaling = 6 / 3
    for h in range(model.cfg.n_heads):
        cols = slice(h * model.cfg.d_head, (h + 1) * model.cfg.d_head)
        w = attn.W_V[h] + scaling * attn.lora_A["v"] @ attn.lora_B["v"][:, cols]
        assert torch.allclose(v[:, :, h], x @ w + attn.b_V[h], atol=1e-5)
    assert model.blocks[0].attn.__class__.__name__ == "Attention"  # layer 0 untouched


def test_lora_matches_peft_on_a_hf_vit():
    """Independent reference: peft's LoRA on a HF ViT's query/value equals native LoRA on its port."""
    peft = pytest.importorskip("peft")
    from transformers import ViTConfig as HFViTConfig
    from transformers import ViTForImageClassification

    from tests.helpers.models import randomize_source_

    cfg = HFViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=3,
        layer_norm_eps=1e-12,
    )
    cfg._attn_implementation = "eager"
    hf = randomize_source_(ViTForImageClassification(cfg), seed=1).eval()
    hooked = HookedViT.from_hf(hf)
    apply_lora(hooked, LoRAConfig(rank=4, alpha=8, targets=("q", "v")), seed=0)
    names = [n for n, _ in hf.named_modules()]
    q_name, v_name = (
        ("q_proj", "v_proj") if any(n.endswith("q_proj") for n in names) else ("query", "value")
    )  # v5 / v4 layout
    peft_model = peft.get_peft_model(
        hf, peft.LoraConfig(r=4, lora_alpha=8, target_modules=[q_name, v_name], lora_dropout=0.0)
    )
    adapted = {n: m for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and n.endswith((q_name, v_name))}
    assert len(adapted) == 4
    g = torch.Generator().manual_seed(7)
    for name, module in sorted(adapted.items()):
        layer = int(name.split(".layers." if ".layers." in name else ".layer.")[1].split(".")[0])
        t = "q" if name.endswith(q_name) else "v"
        a, b = torch.randn(32, 4, generator=g), torch.randn(4, 32, generator=g) * 0.3
        with torch.no_grad():
            module.lora_A["default"].weight.copy_(a.T)
            module.lora_B["default"].weight.copy_(b.T)
            hooked.blocks[layer].attn.lora_A[t].copy_(a)
            hooked.blocks[layer].attn.lora_B[t].copy_(b)
    x = seeded_images(2, 32, seed=3)
    with torch.no_grad():
        ref = peft_model(pixel_values=x).logits
        ours = hooked(x)
        merge_lora(hooked)
        merged = hooked(x)
    assert (ref - ours).abs().max() < 1e-4
    assert (ref - merged).abs().max() < 1e-4


def test_full_tier_uses_differential_learning_rates(data):
    model = with_new_head(tiny_model(6), data.n_outputs, data.names)
    groups = prepare_tier(model, TierConfig("full", head_lr=1e-3, backbone_lr=1e-5))
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == {"head": 1e-3, "head_no_decay": 1e-3, "backbone": 1e-5, "backbone_no_decay": 1e-5}
    n_grouped = sum(p.numel() for g in groups for p in g["params"])
    assert n_grouped == model.n_params and all(p.requires_grad for p in model.parameters())
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(model.pos_embed.W_pos) not in decayed and id(model.blocks[0].attn.b_Q) not in decayed
    assert id(model.blocks[0].attn.W_Q) in decayed


def test_full_tier_head_moves_faster_than_backbone_when_its_rate_is_higher(data):
    model = with_new_head(tiny_model(7), data.n_outputs, data.names, init="trunc_normal")
    start = {k: v.clone() for k, v in model.state_dict().items()}
    groups = prepare_tier(model, TierConfig("full", head_lr=1e-2, backbone_lr=1e-6))
    fit(model, groups, data, TrainConfig(steps=5, batch_size=16, clip_norm=None), progress=False)
    head_move = (model.head.W_H - start["head.W_H"]).abs().max()
    body_move = (model.blocks[0].attn.W_Q - start["blocks.0.attn.W_Q"]).abs().max()
    assert head_move > 1e-3 and body_move < 1e-4


@pytest.mark.parametrize(
    "kwargs",
    [dict(rank=0), dict(alpha=0), dict(dropout=1.0), dict(targets=("o",)), dict(targets=())],
)
def test_bad_lora_configs_are_refused(kwargs):
    with pytest.raises(ValueError):
        LoRAConfig(**kwargs)


def test_bad_tier_and_double_lora_are_refused():
    with runtime_checks_off(), pytest.raises(ValueError, match="tier"):
        TierConfig("partial")
    model = tiny_model(0)
    apply_lora(model)
    with pytest.raises(ValueError, match="already"):
        apply_lora(model)
    with pytest.raises(ValueError, match="out of range"):
        apply_lora(tiny_model(0), LoRAConfig(layers=(7,)))


def test_lora_tier_groups_hold_only_adapters_and_head(data):
    model = with_new_head(tiny_model(8), data.n_outputs, data.names)
    groups = prepare_tier(model, TierConfig("lora", head_lr=1e-3, backbone_lr=5e-4, weight_decay=0.1))
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"head", "head_no_decay", "lora"}
    assert {id(p) for p in by_name["lora"]["params"]} == {id(p) for p in lora_parameters(model)}
    assert by_name["lora"]["lr"] == 5e-4 and by_name["lora"]["weight_decay"] == 0.1
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert (
        trainable == {n for n in trainable if n.startswith("head.") or ".lora_" in n}
        and len(trainable) == 2 + 2 * 2 * 3
    )
