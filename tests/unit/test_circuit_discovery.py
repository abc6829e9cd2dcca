"""Circuit discovery: the edge graph, circuit runs (full graph = clean, empty = corrupted, one edge = a
hand-built hook), EAP / EAP-IG against exact edge patching, ACDC and pruning to a faithfulness."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr

from tests.helpers.models import seeded_images, tiny_model
from vitmech.analysis.ablation.metrics import logit_diff
from vitmech.analysis.circuit_discovery import (
    Graph,
    acdc,
    circuit_faithfulness,
    edge_attribution_patching,
    exact_edge_patching,
    prune_to_faithfulness,
    reaching_logits,
    run_circuit,
    sender_outputs,
)
from vitmech.data.counterfactual import masked_counterfactual
from vitmech.errors import PatchingError

SMALL = dict(n_layers=2, n_heads=2, d_model=16, d_head=8, d_mlp=32)


@pytest.fixture(scope="module")
def small():
    model = tiny_model(seed=1, **SMALL)
    clean = seeded_images(8, 32, seed=1)
    return model, clean


def test_graph_indexing():
    graph = Graph.of(tiny_model(**SMALL))
    assert graph.n_senders == 1 + 2 * 3 and graph.n_receivers == 2 * 7 + 1
    assert graph.sender_names[graph.head_sender(1, 1)] == "L1H1" and graph.sender_names[graph.mlp_sender(0)] == "MLP0"
    assert graph.receiver_names[graph.head_receiver(1, 0, "k")] == "L1H0.k"
    valid = graph.valid
    assert valid[graph.head_sender(0, 1), graph.head_receiver(1, 0, "v")]
    assert not valid[graph.head_sender(1, 0), graph.head_receiver(1, 1, "q")]  # same layer: no edge
    assert valid[graph.head_sender(1, 0), graph.mlp_receiver(1)]  # attention feeds its own layer's MLP
    assert not valid[graph.mlp_sender(1), graph.mlp_receiver(1)]
    assert int(valid.sum()) == 46
    with pytest.raises(PatchingError, match="pre-norm"):
        Graph.of(tiny_model(pre_norm=True))


def test_sender_outputs_sum_to_the_residual_stream(small):
    model, clean = small
    senders = sender_outputs(model, clean)
    _, cache = model.run_with_cache(clean)
    final = cache["blocks.1.hook_resid_post"]
    torch.testing.assert_close(
        senders.sum(0) + model.accumulated_bias(2, include_mlp_biases=False), final, atol=1e-5, rtol=0
    )


def test_full_and_empty_circuits_reproduce_clean_and_corrupted(small):
    model, clean = small
    corrupted = masked_counterfactual(clean, (8, 8, 24, 24), "noise")
    graph = Graph.of(model)
    bad = sender_outputs(model, corrupted)
    torch.testing.assert_close(run_circuit(model, clean, bad, graph.valid), model(clean), atol=1e-5, rtol=0)
    empty = torch.zeros_like(graph.valid)
    torch.testing.assert_close(run_circuit(model, clean, bad, empty), model(corrupted), atol=1e-5, rtol=0)
    assert not model.cfg.use_split_qkv_input and not model.cfg.use_hook_mlp_in  # switches restored


def test_one_removed_edge_matches_a_hand_built_hook(small):
    """Edge L0H1 -> L1H0.k corrupted: head 0 of layer 1 reads keys from resid_pre + (corrupted - clean) L0H1 output."""
    model, clean = small
    corrupted = masked_counterfactual(clean, (0, 0, 16, 16), "mean")
    graph = Graph.of(model)
    circuit = graph.valid.clone()
    circuit[graph.head_sender(0, 1), graph.head_receiver(1, 0, "k")] = False
    got = run_circuit(model, clean, sender_outputs(model, corrupted), circuit)
    _, c = model.run_with_cache(clean)
    _, x = model.run_with_cache(corrupted)
    delta = (x["blocks.0.attn.hook_z"][:, :, 1] - c["blocks.0.attn.hook_z"][:, :, 1]) @ model.blocks[0].attn.W_O[1]
    model.set_use_split_qkv_input(True)

    def edit(k_input, hook):
        k_input[:, :, 0] += delta
        return k_input

    expected = model.run_with_hooks(clean, fwd_hooks=[("blocks.1.hook_k_input", edit)])
    model.set_use_split_qkv_input(False)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def _direct_circuit_run(model, clean, bad, circuit):
    """Reference: every receiver reads its input minus, edge by edge, (this run's sender output - its corrupted
    output) for each removed edge into it (one term per edge, in a plain loop)."""
    graph = Graph.of(model)
    removed = graph.valid & ~circuit
    live: dict[int, torch.Tensor] = {}

    def keep(s):
        def hook(x, hook):
            live[s] = x.detach()

        return hook

    def keep_heads(layer):
        def hook(result, hook):
            for h in range(graph.n_heads):
                live[graph.head_sender(layer, h)] = result[:, :, h].detach()

        return hook

    def edit(receivers):
        def hook(x, hook):
            x = x.clone()
            for i, r in enumerate(receivers):
                for s in removed[:, r].nonzero()[:, 0].tolist():
                    if x.dim() == 4:
                        x[:, :, i] -= live[s] - bad[s]
                    else:
                        x -= live[s] - bad[s]
            return x

        return hook

    hooks = [("hook_full_embed", keep(0))]
    for layer in range(graph.n_layers):
        for c in ("q", "k", "v"):
            heads = [graph.head_receiver(layer, h, c) for h in range(graph.n_heads)]
            hooks.append((f"blocks.{layer}.hook_{c}_input", edit(heads)))
        hooks.append((f"blocks.{layer}.attn.hook_result", keep_heads(layer)))
        hooks.append((f"blocks.{layer}.hook_mlp_in", edit([graph.mlp_receiver(layer)])))
        hooks.append((f"blocks.{layer}.hook_mlp_out", keep(graph.mlp_sender(layer))))
    hooks.append((f"blocks.{graph.n_layers - 1}.hook_resid_post", edit([graph.logits_receiver])))
    model.set_use_split_qkv_input(True)
    model.set_use_hook_mlp_in(True)
    try:
        return model.run_with_hooks(clean, fwd_hooks=hooks)
    finally:
        model.set_use_split_qkv_input(False)
        model.set_use_hook_mlp_in(False)


@pytest.mark.parametrize("density", [0.1, 0.3, 0.7, 0.9])
def test_circuits_of_any_density_match_an_edge_by_edge_reference(small, density):
    """Sparse circuits sum over the kept senders (the complement), dense ones over the removed: both as the loop."""
    model, clean = small
    corrupted = masked_counterfactual(clean, (8, 8, 24, 24), "noise")
    graph = Graph.of(model)
    circuit = graph.valid & (torch.rand(graph.valid.shape, generator=torch.Generator().manual_seed(3)) < density)
    bad = sender_outputs(model, corrupted)
    assert 0 < int(circuit.sum()) < int(graph.valid.sum())
    expected = _direct_circuit_run(model, clean, bad, circuit)
    assert not torch.allclose(expected, model(clean), atol=1e-4) and not torch.allclose(expected, model(corrupted))
    torch.testing.assert_close(run_circuit(model, clean, bad, circuit), expected, atol=1e-5, rtol=0)


def test_eap_ranks_edges_like_exact_edge_patching(small):
    """Spearman of EAP vs exact edge patching over all 46 edges. Measured (this model, 8 images):
    small perturbation (noise x 0.3): EAP 0.970, EAP-IG 0.985; a quarter of the image set to 0:
    EAP 0.82, EAP-IG 0.91 (first-order EAP degrades with the size of the change; IG recovers it)."""
    model, clean = small
    metric = logit_diff(0, 1)
    near = clean + 0.3 * seeded_images(8, 32, seed=9)
    exact = exact_edge_patching(model, clean, near, metric)
    eap = edge_attribution_patching(model, clean, near, metric)
    rho = spearmanr(eap.edge_values(), exact.edge_values()).statistic
    assert rho >= 0.9, rho
    far = clean.clone()
    far[:, :, 8:24, 8:24] = 0.0
    exact_far = exact_edge_patching(model, clean, far, metric)
    rho_eap = spearmanr(edge_attribution_patching(model, clean, far, metric).edge_values(), exact_far.edge_values())
    ig = edge_attribution_patching(model, clean, far, metric, method="eap-ig", ig_steps=5)
    rho_ig = spearmanr(ig.edge_values(), exact_far.edge_values()).statistic
    assert rho_ig >= 0.9 and rho_ig > rho_eap.statistic, (rho_ig, rho_eap.statistic)
    frame = eap.to_frame()
    assert len(frame) == 46 and frame["score"].abs().is_monotonic_decreasing


def test_pruning_reaches_the_target_faithfulness_measured_by_running_the_circuit(small):
    model, clean = small
    metric = logit_diff(0, 1)
    corrupted = clean + 0.3 * seeded_images(8, 32, seed=9)
    scores = edge_attribution_patching(model, clean, corrupted, metric)
    circuit = prune_to_faithfulness(model, clean, corrupted, metric, scores, target=0.8)
    assert circuit.faithfulness >= 0.8 and 0 < circuit.n_edges < 46
    measured, *_ = circuit_faithfulness(model, clean, corrupted, metric, circuit.edges)
    assert measured == pytest.approx(circuit.faithfulness, abs=1e-5)
    assert torch.equal(reaching_logits(circuit.graph, circuit.edges), circuit.edges)
    assert circuit.nodes and "logits" in circuit.nodes


def test_a_step_limited_search_brackets_the_full_searchs_circuit(small):
    """max_steps takes the full search's first steps: its circuit reaches the target (re-measured), has at most
    ceil(46 / 2**steps) - 1 more top edges than the full search's, whose k lies inside the bracket it reports."""
    model, clean = small
    metric = logit_diff(0, 1)
    corrupted = clean + 0.3 * seeded_images(8, 32, seed=9)
    scores = edge_attribution_patching(model, clean, corrupted, metric)
    full = prune_to_faithfulness(model, clean, corrupted, metric, scores, target=0.8)
    assert full.meta["bracket"][1] - full.meta["bracket"][0] == 1
    for steps in (0, 1, 2, 3):
        cut = prune_to_faithfulness(model, clean, corrupted, metric, scores, target=0.8, max_steps=steps)
        lo, hi = cut.meta["bracket"]
        assert len(cut.curve) == 1 + steps and set(cut.curve) <= set(full.curve)  # the same first evaluations
        assert cut.meta["k"] == hi and lo < full.meta["k"] <= hi and hi - lo <= -(-46 // 2**steps)
        assert cut.faithfulness >= 0.8 and cut.n_edges >= full.n_edges
        measured, *_ = circuit_faithfulness(model, clean, corrupted, metric, cut.edges)
        assert measured == pytest.approx(cut.faithfulness, abs=1e-5)
    assert prune_to_faithfulness(model, clean, corrupted, metric, scores, max_steps=0).meta["k"] == 46
    with pytest.raises(PatchingError, match="max_steps"):
        prune_to_faithfulness(model, clean, corrupted, metric, scores, max_steps=-1)


def test_acdc_keeps_the_circuit_close_to_the_model(small):
    model, clean = small
    metric = logit_diff(0, 1)
    corrupted = clean + 0.3 * seeded_images(8, 32, seed=9)
    circuit = acdc(model, clean, corrupted, metric, threshold=0.02)
    measured, *_ = circuit_faithfulness(model, clean, corrupted, metric, circuit.edges)
    assert measured == pytest.approx(circuit.faithfulness, abs=1e-5)
    assert circuit.n_edges < 46
    # each accepted removal moved |1 - f| by less than the threshold
    assert abs(1 - circuit.faithfulness) < 0.02 * 46


def test_patching_study_refuses_negative_search_steps_before_running():
    from vitmech.analysis.patching_study import PatchingStudyConfig

    with pytest.raises(PatchingError, match="search_steps must be None or >= 0, got -1"):
        PatchingStudyConfig.quick(search_steps=-1)
    assert PatchingStudyConfig.quick(search_steps=0).search_steps == 0
    assert PatchingStudyConfig().search_steps is None
