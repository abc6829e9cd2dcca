"""The seed 000 stand-in metrics against closed forms and a naive per-head loop; card pages."""

from __future__ import annotations

import math

import torch

from tests.helpers.models import seeded_images, tiny_model
from vitmech.train.attention_check import before_after_rows, cls_attention_summary, entropy, topk_mass
from vitmech.train.cards import card_table, model_card_page


def test_uniform_distribution_closed_forms():
    p = torch.full((196,), 1 / 196, dtype=torch.float64)
    assert math.isclose(float(entropy(p)), math.log(196), rel_tol=1e-12)  # 5.2781 nats
    assert math.isclose(float(topk_mass(p, 10)), 10 / 196, rel_tol=1e-12)  # 0.0510
    one_hot = torch.zeros(196, dtype=torch.float64)
    one_hot[3] = 1
    assert float(entropy(one_hot)) == 0.0 and float(topk_mass(one_hot, 10)) == 1.0


def test_summary_matches_a_naive_loop():
    model = tiny_model(0)
    x = seeded_images(3, 32, seed=2)
    summary = cls_attention_summary(model, x, layer=-1, k=3)
    _, cache = model.run_with_cache(x, names_filter="blocks.2.attn.hook_pattern")
    pattern = cache["blocks.2.attn.hook_pattern"].double()
    per_head_h, per_head_top, mean_h, mean_top = [], [], [], []
    for b in range(3):
        dists = []
        for h in range(model.cfg.n_heads):
            row = pattern[b, h, 0, 1:]
            p = [float(v) / float(row.sum()) for v in row]
            dists.append(p)
            per_head_h.append(-sum(v * math.log(v) for v in p if v > 0))
            per_head_top.append(sum(sorted(p, reverse=True)[:3]))
        avg = [sum(col) / len(col) for col in zip(*dists)]
        mean_h.append(-sum(v * math.log(v) for v in avg if v > 0))
        mean_top.append(sum(sorted(avg, reverse=True)[:3]))
    assert math.isclose(summary.entropy_per_head, sum(per_head_h) / len(per_head_h), rel_tol=1e-9)
    assert math.isclose(summary.topk_per_head, sum(per_head_top) / len(per_head_top), rel_tol=1e-9)
    assert math.isclose(summary.entropy_head_mean, sum(mean_h) / 3, rel_tol=1e-9)
    assert math.isclose(summary.topk_head_mean, sum(mean_top) / 3, rel_tol=1e-9)
    assert summary.entropy_head_mean >= summary.entropy_per_head - 1e-12  # concavity
    rows = before_after_rows(summary, summary)
    assert len(rows) == 4 and all(r["change"] == 0 for r in rows)


def test_card_page_lists_every_card_entry():
    card = {"tier": "full", "metrics": {"accuracy": 0.8123456}, "hardware": {"cpu": "x", "cpu_cores": 2}}
    table = card_table(card)
    assert "| tier | full |" in table and "| metrics.accuracy | 0.8123 |" in table and "cpu=x" in table
    config = dict(n_layers=12, n_heads=12, d_model=96, d_head=8, d_mlp=384, image_size=224, patch_size=16, n_classes=6)
    page = model_card_page("vitmech/x", config, card, "Intro.", "```bash\nrun\n```")
    assert page.startswith("# vitmech/x") and "n_heads 12" in page and table in page and page.rstrip().endswith("```")


def test_card_page_results_put_the_model_beside_its_probe_and_baselines():
    from vitmech.train.cards import results_section

    classification = {
        "tier": "full",
        "train_seconds": 12.0,
        "hardware": {"cpu": "x", "cpu_cores": 2, "torch_threads": 1, "gpu": None},
        "metrics": {
            "test": {"accuracy": 0.9, "class_names": ["a", "b"], "confusion": [[4, 1], [0, 5]]},
            "linear_probe_test": {"accuracy": 0.6},
            "baselines": {"uniform": 0.5},
        },
    }
    text = results_section(classification)
    assert (
        "| full fine-tune (this model) | 0.9 |" in text
        and "| linear probe, same backbone and training images | 0.6 |" in text
    )
    assert "| chance (uniform) | 0.5 |" in text and "| a | 4 | 1 |" in text
    assert "training 12 s" in text and "no GPU" in text
    regression = {
        "tier": "lora",
        "metrics": {
            "test": {"mean_mse": 0.2, "pearson_r": {"t0": 0.95, "f0": 0.9}},
            "linear_probe_test": {"mean_mse": 0.7, "pearson_r": {"t0": 0.5, "f0": 0.4}},
            "baselines": {"mean_predictor_mse": [1.0, 1.0]},
        },
    }
    text = results_section(regression)
    assert "Pearson r, t0 | Pearson r, f0" in text
    assert (
        "| lora fine-tune (this model) | 0.2 | 0.95 | 0.9 |" in text
        and "| mean predictor (training mean) | 1 | - | - |" in text
    )


def test_shipped_name_only_for_models_saved_into_the_zoo():
    from vitmech.train.cards import shipped_name

    assert shipped_name("vitmech/zoo/mini-chirp") == shipped_name("vitmech/zoo/mini-chirp/") == "vitmech/mini-chirp"
    assert shipped_name("/repo/vitmech/zoo/mini-galaxy") == "vitmech/mini-galaxy"
    assert shipped_name("runs/fine_tune_chirp/model") is None and shipped_name("zoo/mini-chirp") is None
