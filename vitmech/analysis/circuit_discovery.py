"""Circuit discovery over the graph of a ViT's components: edge attribution patching (EAP; Syed et al. 2023,
arXiv 2310.10348), EAP with integrated gradients (EAP-IG; Hanna et al. 2024, arXiv 2403.17806), exact edge
patching, and ACDC-style pruning (Conmy et al. 2023, arXiv 2304.14997) with faithfulness measured by
running the circuit.

The graph. Senders write to the residual stream: the embeddings ("embed": class token, patches and
positions), every head (its z @ W_O) and every MLP. Receivers read it: every head's query, key and value
input (separately), every MLP's input and the logits (the final LayerNorm's input). An edge joins a sender to
every receiver that reads the stream after the sender wrote to it. The residual stream entering a receiver is
the sum of its senders' outputs (plus constant biases), so an edge can be patched on its own: the receiver
reads `its input - (sender's output - sender's output on the corrupted images)`. This needs the per-head
input copies of `HookedViT.set_use_split_qkv_input` and `set_use_hook_mlp_in`, switched on while a function
here runs and restored after.

Conventions (as ACDC): the clean run is the model; an edge outside the circuit carries its sender's corrupted
value. The effect of an edge is m(clean run with that edge corrupted) - m(clean run); EAP approximates it to
first order by (sender_corrupted - sender_clean) . d m / d(receiver input), from one forward and one
backward pass; EAP-IG averages that gradient over inputs interpolated between the corrupted and the clean
embeddings. Faithfulness of a circuit = (m(circuit) - m(corrupted)) / (m(clean) - m(corrupted)): 1 for the
full graph, 0 for the empty one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from einops import einsum
from jaxtyping import Bool, Float
from transformer_lens.utilities import get_act_name

from vitmech.analysis.ablation.metrics import Metric, MetricLike, resolve_metric
from vitmech.analysis.patching import Hooks, check_pair
from vitmech.errors import PatchingError
from vitmech.model.hooked_vit import HookedViT

logger = logging.getLogger(__name__)

COMPONENTS: tuple[str, ...] = ("q", "k", "v")


# ---------------------------------------------------------------------------------------------- the graph
@dataclass(frozen=True)
class Graph:
    """Node and edge indexing of a model's computational graph.

    Senders: 0 = "embed", then per layer l its heads "L{l}H{h}" and "MLP{l}". Receivers: per layer l each head's
    "L{l}H{h}.q", ".k", ".v", then "MLP{l}"; last "logits". `valid[s, r]` is True where s writes before r reads.
    """

    n_layers: int
    n_heads: int

    @classmethod
    def of(cls, model: HookedViT) -> Graph:
        if not model.cfg.uniform_heads:
            raise PatchingError("circuit discovery needs the same number of heads in every layer (not a pruned model)")
        if model.cfg.pre_norm:
            raise PatchingError(
                "circuit discovery needs the residual stream to be the sum of the embeddings and the blocks' outputs; "
                "a pre-norm model (ln_pre) normalises the embeddings first"
            )
        return cls(model.cfg.n_layers, model.cfg.n_heads)

    @property
    def n_senders(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    @property
    def n_receivers(self) -> int:
        return self.n_layers * (3 * self.n_heads + 1) + 1

    def head_sender(self, layer: int, head: int) -> int:
        return 1 + layer * (self.n_heads + 1) + head

    def mlp_sender(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def head_receiver(self, layer: int, head: int, component: str) -> int:
        return layer * (3 * self.n_heads + 1) + COMPONENTS.index(component) * self.n_heads + head

    def mlp_receiver(self, layer: int) -> int:
        return layer * (3 * self.n_heads + 1) + 3 * self.n_heads

    @property
    def logits_receiver(self) -> int:
        return self.n_receivers - 1

    @cached_property
    def _sender_names(self) -> tuple[str, ...]:
        names = ["embed"]
        for layer in range(self.n_layers):
            names += [f"L{layer}H{h}" for h in range(self.n_heads)] + [f"MLP{layer}"]
        return tuple(names)

    @cached_property
    def _receiver_names(self) -> tuple[str, ...]:
        names = []
        for layer in range(self.n_layers):
            names += [f"L{layer}H{h}.{c}" for c in COMPONENTS for h in range(self.n_heads)] + [f"MLP{layer}"]
        return (*names, "logits")

    @cached_property
    def _receiver_nodes(self) -> tuple[str, ...]:
        return tuple(name.split(".")[0] for name in self._receiver_names)

    @property
    def sender_names(self) -> list[str]:
        return list(self._sender_names)

    @property
    def receiver_names(self) -> list[str]:
        return list(self._receiver_names)

    def senders_before_attention(self, layer: int) -> int:
        """Number of senders written before layer `layer`'s attention reads (a prefix of the sender order)."""
        return 1 + layer * (self.n_heads + 1)

    def senders_before_mlp(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    @property
    def valid(self) -> Bool[torch.Tensor, "sender receiver"]:
        return self._valid.clone()

    @cached_property
    def _valid(self) -> Bool[torch.Tensor, "sender receiver"]:
        valid = torch.zeros(self.n_senders, self.n_receivers, dtype=torch.bool)
        for layer in range(self.n_layers):
            for c in COMPONENTS:
                for h in range(self.n_heads):
                    valid[: self.senders_before_attention(layer), self.head_receiver(layer, h, c)] = True
            valid[: self.senders_before_mlp(layer), self.mlp_receiver(layer)] = True
        valid[:, self.logits_receiver] = True
        return valid

    def sender_node(self, s: int) -> str:
        """The node a sender index belongs to ("embed", "L{l}H{h}", "MLP{l}")."""
        return self._sender_names[s]

    def receiver_node(self, r: int) -> str:
        """The node a receiver index belongs to (q, k and v inputs of a head share its node)."""
        return self._receiver_nodes[r]


@contextmanager
def _edge_hooks_on(model: HookedViT) -> Iterator[None]:
    """Per-head input copies (split q/k/v) and hook_mlp_in on; the caller's switches restored after."""
    saved = (model.cfg.use_split_qkv_input, model.cfg.use_attn_in, model.cfg.use_hook_mlp_in)
    try:
        model.set_use_attn_in(False)
        model.set_use_split_qkv_input(True)
        model.set_use_hook_mlp_in(True)
        yield
    finally:
        model.set_use_split_qkv_input(False)
        model.set_use_attn_in(saved[1])
        model.set_use_split_qkv_input(saved[0])
        model.set_use_hook_mlp_in(saved[2])


def _sender_hooks(graph: Graph, store: dict[int, torch.Tensor], detach: bool) -> Hooks:
    """Forward hooks recording every sender's output [B, P, d] into store[sender index]."""

    def keep(s: int):
        def hook(x: torch.Tensor, hook: Any) -> None:
            store[s] = x.detach() if detach else x

        return hook

    def keep_heads(layer: int):
        def hook(result: torch.Tensor, hook: Any) -> None:
            for h in range(graph.n_heads):
                store[graph.head_sender(layer, h)] = result[:, :, h].detach() if detach else result[:, :, h]

        return hook

    hooks: Hooks = [("hook_full_embed", keep(0))]
    for layer in range(graph.n_layers):
        hooks.append((get_act_name("result", layer), keep_heads(layer)))
        hooks.append((get_act_name("mlp_out", layer), keep(graph.mlp_sender(layer))))
    return hooks


@torch.no_grad()
def sender_outputs(model: HookedViT, images: torch.Tensor) -> Float[torch.Tensor, "sender batch pos d_model"]:
    """Every sender's output on `images`, stacked in the graph's sender order."""
    graph = Graph.of(model)
    store: dict[int, torch.Tensor] = {}
    model.run_with_hooks(images, return_type=None, fwd_hooks=_sender_hooks(graph, store, detach=True))
    return torch.stack([store[s] for s in range(graph.n_senders)])


# ---------------------------------------------------------------------------------------------- circuit runs
@dataclass(frozen=True)
class _Plan:
    """How one receiver group's removed-edge sum is formed: over `senders` with `weights` [S, ...] (the removed
    edges), or, when `complement`, as the sum over all `n` senders before it minus `senders` (the kept edges)."""

    complement: bool
    weights: torch.Tensor
    senders: list[int]
    n: int
    pattern: str

    @classmethod
    def of(cls, removed: torch.Tensor, pattern: str) -> _Plan:
        n = removed.shape[0]
        flat = removed.reshape(n, -1)
        removed_rows, kept_rows = flat.any(dim=-1).nonzero()[:, 0], (~flat).any(dim=-1).nonzero()[:, 0]
        if len(removed_rows) <= len(kept_rows):
            return cls(False, removed[removed_rows], removed_rows.tolist(), n, pattern)
        return cls(True, ~removed[kept_rows], kept_rows.tolist(), n, pattern)


class _Differences:
    """Per run: each sender's (actual - corrupted) output, computed once, and prefix sums over senders."""

    def __init__(self, actual: dict[int, torch.Tensor], corrupted: torch.Tensor) -> None:
        self.actual, self.corrupted = actual, corrupted
        self.diffs: dict[int, torch.Tensor] = {}
        self.totals: dict[int, torch.Tensor] = {}

    def diff(self, s: int) -> torch.Tensor:
        if s not in self.diffs:
            self.diffs[s] = self.actual[s] - self.corrupted[s]
        return self.diffs[s]

    def total(self, n: int) -> Float[torch.Tensor, "batch pos d_model"]:
        """Sum of the differences of senders 0..n-1 (prefixes grow as the forward pass goes on)."""
        if n not in self.totals:
            start = max((m for m in self.totals if m < n), default=0)
            acc = self.totals[start].clone() if start else torch.zeros_like(self.diff(0))
            for s in range(start, n):
                acc += self.diff(s)
            self.totals[n] = acc
        return self.totals[n]

    def removed_sum(self, plan: _Plan) -> torch.Tensor:
        """Sum over the plan's removed edges of the sender differences, [B, P, d] (or [B, P, H, d] per head)."""
        everything = None
        if plan.complement:
            everything = self.total(plan.n)[:, :, None] if "h" in plan.pattern else self.total(plan.n)
            if not plan.senders:  # every edge into these receivers removed
                return everything
        stacked = torch.stack([self.diff(s) for s in plan.senders])
        summed = einsum(plan.weights.to(stacked.dtype), stacked, plan.pattern)
        return summed if everything is None else everything - summed


def _receiver_hooks(
    graph: Graph,
    removed: Bool[torch.Tensor, "sender receiver"],
    actual: dict[int, torch.Tensor],
    corrupted: torch.Tensor,
) -> Hooks:
    """Hooks making each receiver read `input - sum over its removed edges of (actual - corrupted sender output)`.

    Each sender's difference is computed once per run. A receiver's sum runs over the senders with a removed edge
    into it, or, when fewer senders keep an edge, is the sum over all of its senders minus the kept ones (a
    near-empty circuit then costs as little as a near-full one)."""
    hooks: Hooks = []
    differences = _Differences(actual, corrupted)

    def edit(plan):  # unannotated: the hook is made per receiver group and run, not worth a runtime check
        def hook(x, hook):
            return x - differences.removed_sum(plan)

        return hook

    for layer in range(graph.n_layers):
        n_attn = graph.senders_before_attention(layer)
        for c in COMPONENTS:
            cols = [graph.head_receiver(layer, h, c) for h in range(graph.n_heads)]
            weights = removed[:n_attn, cols]  # [S, H]
            if bool(weights.any()):
                hooks.append((get_act_name(f"{c}_input", layer), edit(_Plan.of(weights, "s h, s b p d -> b p h d"))))
        weights = removed[: graph.senders_before_mlp(layer), graph.mlp_receiver(layer)]
        if bool(weights.any()):
            hooks.append((get_act_name("mlp_in", layer), edit(_Plan.of(weights, "s, s b p d -> b p d"))))
    weights = removed[:, graph.logits_receiver]
    if bool(weights.any()):
        hooks.append((get_act_name("resid_post", graph.n_layers - 1), edit(_Plan.of(weights, "s, s b p d -> b p d"))))
    return hooks


@torch.no_grad()
def run_circuit(
    model: HookedViT,
    clean: Float[torch.Tensor, "batch c h w"],
    corrupted_senders: Float[torch.Tensor, "sender batch pos d_model"],
    circuit: Bool[torch.Tensor, "sender receiver"],
    output: Literal["logits", "features", "embeddings", "tokens"] = "logits",
) -> torch.Tensor:
    """The model on `clean` images with every edge outside `circuit` carrying its sender's corrupted value."""
    graph = Graph.of(model)
    if circuit.shape != (graph.n_senders, graph.n_receivers):
        raise PatchingError(f"circuit mask must be [{graph.n_senders}, {graph.n_receivers}], got {list(circuit.shape)}")
    removed = graph.valid & ~circuit.cpu()
    actual: dict[int, torch.Tensor] = {}
    hooks = _sender_hooks(graph, actual, detach=True) + _receiver_hooks(graph, removed, actual, corrupted_senders)
    with _edge_hooks_on(model):
        return model.run_with_hooks(clean, return_type=output, fwd_hooks=hooks)


@dataclass
class EdgeScores:
    """Per-edge scores [n_senders, n_receivers] (NaN on invalid edges), in units of the metric.

    Attributes:
        scores: estimated (or exact) m(edge corrupted) - m(clean), mean over images.
        method: "eap", "eap-ig" or "exact". gap: mean m(clean) - mean m(corrupted).
    """

    graph: Graph
    scores: Float[torch.Tensor, "sender receiver"]
    method: str
    gap: float
    metric: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    def edge_values(self) -> Float[torch.Tensor, " edge"]:
        """Scores of the valid edges, in the graph's (sender, receiver) row-major order."""
        return self.scores[self.graph.valid]

    def to_frame(self) -> pd.DataFrame:
        """One row per valid edge, sorted by |score|."""
        senders, receivers = self.graph.valid.nonzero(as_tuple=True)
        s_names, r_names = self.graph.sender_names, self.graph.receiver_names
        frame = pd.DataFrame(
            {
                "sender": [s_names[i] for i in senders.tolist()],
                "receiver": [r_names[i] for i in receivers.tolist()],
                "score": self.scores[senders, receivers].numpy(),
            }
        )
        frame["share_of_gap"] = -frame["score"] / self.gap if self.gap else np.nan
        return frame.reindex(frame["score"].abs().sort_values(ascending=False).index).reset_index(drop=True)


def _metric_runs(model: HookedViT, clean: torch.Tensor, corrupted: torch.Tensor, metric: MetricLike, targets):
    metric_obj: Metric = resolve_metric(metric)
    metric_obj.check_model(model)
    check_pair(model, clean, corrupted)
    with torch.no_grad():
        clean_out = model(clean, return_type=metric_obj.output)
        corrupted_out = model(corrupted, return_type=metric_obj.output)

    def score(out: torch.Tensor) -> torch.Tensor:
        return metric_obj(out, clean=clean_out, targets=targets)

    return metric_obj, score, float(score(clean_out).mean()), float(score(corrupted_out).mean())


def _receiver_gradients(
    model: HookedViT, graph: Graph, clean: torch.Tensor, score: Any, output: str, embed: torch.Tensor | None = None
) -> Float[torch.Tensor, "receiver batch pos d_model"]:
    """d mean(metric) / d(each receiver's input) on the clean images (or with `embed` as the embeddings)."""
    inputs: dict[str, torch.Tensor] = {}

    def keep(x: torch.Tensor, hook: Any) -> torch.Tensor:
        if not x.requires_grad:  # e.g. layer 0's inputs when the embeddings are given
            x = x.detach().requires_grad_(True)
        x.retain_grad()
        inputs[hook.name] = x
        return x

    def set_embed(x: torch.Tensor, hook: Any) -> torch.Tensor:
        assert embed is not None
        return embed

    names = [get_act_name(f"{c}_input", layer) for layer in range(graph.n_layers) for c in COMPONENTS]
    names += [get_act_name("mlp_in", layer) for layer in range(graph.n_layers)]
    names.append(get_act_name("resid_post", graph.n_layers - 1))
    hooks: Hooks = [(name, keep) for name in names]
    if embed is not None:
        hooks.insert(0, ("hook_full_embed", set_embed))
    with torch.enable_grad(), _edge_hooks_on(model):
        out = model.run_with_hooks(clean, return_type=output, fwd_hooks=hooks)
        score(out).mean().backward()

    def grad(name: str) -> torch.Tensor:
        value = inputs[name].grad
        if value is None:
            raise PatchingError(f"no gradient reached {name}: does the metric depend on the model's output?")
        return value

    grads = []
    for layer in range(graph.n_layers):
        for c in COMPONENTS:
            g = grad(get_act_name(f"{c}_input", layer))
            grads += [g[:, :, h] for h in range(graph.n_heads)]
        grads.append(grad(get_act_name("mlp_in", layer)))
    grads.append(grad(get_act_name("resid_post", graph.n_layers - 1)))
    model.zero_grad(set_to_none=True)
    return torch.stack(grads).detach()


def edge_attribution_patching(
    model: HookedViT,
    clean: Float[torch.Tensor, "batch c h w"],
    corrupted: Float[torch.Tensor, "batch c h w"],
    metric: MetricLike,
    targets: torch.Tensor | None = None,
    method: Literal["eap", "eap-ig"] = "eap",
    ig_steps: int = 5,
) -> EdgeScores:
    """EAP (or EAP-IG) score of every edge: (sender_corrupted - sender_clean) . grad of the metric at the receiver.

    EAP-IG averages the gradient over `ig_steps` runs whose embeddings are corrupted + k/ig_steps (clean -
    corrupted), k = 1..ig_steps (a Riemann sum of the integrated gradient from the corrupted to the clean input).
    """
    graph = Graph.of(model)
    metric_obj, score, m_clean, m_corrupted = _metric_runs(model, clean, corrupted, metric, targets)
    if method not in ("eap", "eap-ig"):
        raise PatchingError(f"method must be 'eap' or 'eap-ig', got {method!r}")
    if method == "eap-ig" and ig_steps < 1:
        raise PatchingError(f"ig_steps must be >= 1, got {ig_steps}")
    clean_senders = sender_outputs(model, clean)
    corrupted_senders = sender_outputs(model, corrupted)
    diff = corrupted_senders - clean_senders
    output = metric_obj.output
    was_training = model.training
    model.eval()
    try:
        if method == "eap":
            grads = _receiver_gradients(model, graph, clean, score, output)
        else:
            grads = torch.zeros(graph.n_receivers, *clean_senders.shape[1:], dtype=clean_senders.dtype)
            for k in range(1, ig_steps + 1):
                embed = corrupted_senders[0] + (k / ig_steps) * (clean_senders[0] - corrupted_senders[0])
                grads += _receiver_gradients(model, graph, clean, score, output, embed=embed) / ig_steps
    finally:
        model.train(was_training)
    scores = einsum(diff, grads, "s b p d, r b p d -> s r")  # grads already carry the 1/B of the mean
    scores = torch.where(graph.valid, scores.cpu(), torch.tensor(float("nan")))
    return EdgeScores(graph, scores, method, m_clean - m_corrupted, metric_obj.to_dict(), {"ig_steps": ig_steps})


@torch.no_grad()
def exact_edge_patching(
    model: HookedViT,
    clean: Float[torch.Tensor, "batch c h w"],
    corrupted: Float[torch.Tensor, "batch c h w"],
    metric: MetricLike,
    targets: torch.Tensor | None = None,
    edges: Sequence[tuple[int, int]] | None = None,
) -> EdgeScores:
    """m(clean run with one edge corrupted) - m(clean run) for every valid edge (or the given (sender,
    receiver) index pairs): one forward per edge; the reference that EAP approximates."""
    graph = Graph.of(model)
    metric_obj, score, m_clean, m_corrupted = _metric_runs(model, clean, corrupted, metric, targets)
    corrupted_senders = sender_outputs(model, corrupted)
    valid = graph.valid
    chosen = valid.nonzero().tolist() if edges is None else [tuple(e) for e in edges]
    scores = torch.full(valid.shape, float("nan"))
    for s, r in chosen:
        if not valid[s, r]:
            raise PatchingError(f"edge ({s}, {r}) is not in the graph")
        circuit = valid.clone()
        circuit[s, r] = False
        out = run_circuit(model, clean, corrupted_senders, circuit, output=metric_obj.output)
        scores[s, r] = float(score(out).mean()) - m_clean
    return EdgeScores(graph, scores, "exact", m_clean - m_corrupted, metric_obj.to_dict())


# ---------------------------------------------------------------------------------------------- pruning
def reaching_logits(
    graph: Graph, circuit: Bool[torch.Tensor, "sender receiver"]
) -> Bool[torch.Tensor, "sender receiver"]:
    """The circuit without edges into nodes that no longer reach the logits (their output is fully corrupted
    wherever it is read, so their inputs cannot matter: dropping these edges changes no output)."""
    circuit = circuit & graph.valid
    sender_of = {name: i for i, name in enumerate(graph.sender_names)}
    receiver_nodes = [graph.receiver_node(r) for r in range(graph.n_receivers)]
    alive = torch.zeros(graph.n_senders, dtype=torch.bool)
    # senders in reverse order: a sender reaches the logits if an edge goes to the logits or to a live node
    for s in reversed(range(graph.n_senders)):
        targets = circuit[s].nonzero()[:, 0].tolist()
        alive[s] = any(
            receiver_nodes[r] == "logits" or (receiver_nodes[r] in sender_of and alive[sender_of[receiver_nodes[r]]])
            for r in targets
        )
    keep = circuit.clone()
    for r in range(graph.n_receivers):
        node = receiver_nodes[r]
        if node != "logits" and not alive[sender_of[node]]:
            keep[:, r] = False
    return keep


@dataclass
class Circuit:
    """A circuit: its edges, its faithfulness (measured by running it) and how it was found.

    Attributes:
        edges: [n_senders, n_receivers] mask. faithfulness: (m(circuit) - m(corrupted)) / gap.
        curve: (n_edges, faithfulness) of every circuit evaluated on the way.
    """

    graph: Graph
    edges: Bool[torch.Tensor, "sender receiver"]
    faithfulness: float
    method: str
    metric_value: float
    clean_value: float
    corrupted_value: float
    curve: list[tuple[int, float]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_edges(self) -> int:
        return int(self.edges.sum())

    @property
    def nodes(self) -> list[str]:
        """Nodes touched by an edge of the circuit."""
        senders, receivers = self.edges.nonzero(as_tuple=True)
        names = {self.graph.sender_node(s) for s in senders.tolist()}
        names |= {self.graph.receiver_node(r) for r in receivers.tolist()}
        return sorted(names)

    @property
    def fraction_of_edges(self) -> float:
        return self.n_edges / int(self.graph.valid.sum())

    def to_frame(self) -> pd.DataFrame:
        senders, receivers = self.edges.nonzero(as_tuple=True)
        s_names, r_names = self.graph.sender_names, self.graph.receiver_names
        return pd.DataFrame(
            {
                "sender": [s_names[i] for i in senders.tolist()],
                "receiver": [r_names[i] for i in receivers.tolist()],
            }
        )


def circuit_faithfulness(
    model: HookedViT,
    clean: torch.Tensor,
    corrupted: torch.Tensor,
    metric: MetricLike,
    circuit: Bool[torch.Tensor, "sender receiver"],
    targets: torch.Tensor | None = None,
) -> tuple[float, float, float, float]:
    """(faithfulness, m(circuit), m(clean), m(corrupted)), the circuit actually run on the clean images."""
    metric_obj, score, m_clean, m_corrupted = _metric_runs(model, clean, corrupted, metric, targets)
    out = run_circuit(model, clean, sender_outputs(model, corrupted), circuit, output=metric_obj.output)
    value = float(score(out).mean())
    gap = m_clean - m_corrupted
    return ((value - m_corrupted) / gap if gap else float("nan")), value, m_clean, m_corrupted


@torch.no_grad()
def prune_to_faithfulness(
    model: HookedViT,
    clean: Float[torch.Tensor, "batch c h w"],
    corrupted: Float[torch.Tensor, "batch c h w"],
    metric: MetricLike,
    scores: EdgeScores,
    target: float = 0.8,
    targets: torch.Tensor | None = None,
    max_steps: int | None = None,
) -> Circuit:
    """The smallest top-|score| set of edges whose circuit, actually run, reaches `target` faithfulness.

    Binary search over the number k of top edges (faithfulness is usually, not always, monotone in k; every
    evaluated circuit is kept in `curve` and the returned one was measured, never interpolated).

    max_steps: stop the bisection after this many halvings (None: until it is down to one edge, about
    log2(number of edges) forward passes). The returned circuit still reaches the target; its k is then at most
    ceil(n_edges / 2**max_steps) - 1 above the one the full search returns, since the full search takes the same
    first steps and ends inside the bracket left here: `meta["bracket"]` = (lo, hi), the full search's k in
    (lo, hi] and hi the k returned.
    """
    if max_steps is not None and max_steps < 0:
        raise PatchingError(f"max_steps must be None or >= 0, got {max_steps}")
    graph = scores.graph
    metric_obj, score, m_clean, m_corrupted = _metric_runs(model, clean, corrupted, metric, targets)
    gap = m_clean - m_corrupted
    if gap == 0:
        raise PatchingError("the metric is the same on the clean and corrupted images: nothing to explain")
    corrupted_senders = sender_outputs(model, corrupted)
    order = scores.scores.nan_to_num(0.0).abs().flatten().argsort(descending=True)
    n_valid = int(graph.valid.sum())
    order = order[:n_valid]
    evaluated: dict[int, tuple[float, float, torch.Tensor]] = {}

    def evaluate(k: int) -> float:
        if k not in evaluated:
            mask = torch.zeros(graph.n_senders * graph.n_receivers, dtype=torch.bool)
            mask[order[:k]] = True
            circuit = reaching_logits(graph, mask.view(graph.n_senders, graph.n_receivers))
            value = float(score(run_circuit(model, clean, corrupted_senders, circuit, metric_obj.output)).mean())
            evaluated[k] = ((value - m_corrupted) / gap, value, circuit)
        return evaluated[k][0]

    lo, hi = 0, n_valid
    if evaluate(hi) < target:
        logger.warning("even the full graph has faithfulness %.3f < target %.3f", evaluate(hi), target)
    else:
        steps = 0
        while hi - lo > 1 and (max_steps is None or steps < max_steps):
            mid = (lo + hi) // 2
            if evaluate(mid) >= target:
                hi = mid
            else:
                lo = mid
            steps += 1
    faith, value, circuit = evaluated[hi]
    curve = sorted((int(evaluated[k][2].sum()), evaluated[k][0]) for k in evaluated)
    meta = {"target": target, "k": hi, "bracket": (lo, hi), "max_steps": max_steps}
    return Circuit(graph, circuit, faith, f"top-{scores.method}", value, m_clean, m_corrupted, curve, meta)


@torch.no_grad()
def acdc(
    model: HookedViT,
    clean: Float[torch.Tensor, "batch c h w"],
    corrupted: Float[torch.Tensor, "batch c h w"],
    metric: MetricLike,
    threshold: float = 0.01,
    targets: torch.Tensor | None = None,
) -> Circuit:
    """ACDC (Conmy et al. 2023) on this graph: visit receivers from the logits backwards and, for each, its
    incoming edges from the latest sender back; drop an edge for good when dropping it moves the circuit's
    metric away from the clean model's by less than `threshold` of the gap (ACDC's KL criterion with the
    distance |1 - faithfulness| in its place). One forward per edge: for small models."""
    graph = Graph.of(model)
    metric_obj, score, m_clean, m_corrupted = _metric_runs(model, clean, corrupted, metric, targets)
    gap = m_clean - m_corrupted
    if gap == 0:
        raise PatchingError("the metric is the same on the clean and corrupted images: nothing to explain")
    corrupted_senders = sender_outputs(model, corrupted)
    circuit = graph.valid.clone()

    def faithfulness(mask: torch.Tensor) -> float:
        value = float(score(run_circuit(model, clean, corrupted_senders, mask, metric_obj.output)).mean())
        return (value - m_corrupted) / gap

    current = faithfulness(circuit)
    curve = [(int(circuit.sum()), current)]
    for r in reversed(range(graph.n_receivers)):
        node = graph.receiver_node(r)
        if node != "logits" and not bool(reaching_logits(graph, circuit)[:, r].any()):
            circuit[:, r] = False  # its node no longer reaches the logits
            continue
        for s in reversed(circuit[:, r].nonzero()[:, 0].tolist()):
            trial = circuit.clone()
            trial[s, r] = False
            value = faithfulness(trial)
            if abs(1 - value) - abs(1 - current) < threshold:
                circuit, current = trial, value
                curve.append((int(circuit.sum()), current))
    circuit = reaching_logits(graph, circuit)
    final = faithfulness(circuit)
    value = final * gap + m_corrupted
    return Circuit(graph, circuit, final, "acdc", value, m_clean, m_corrupted, curve, {"threshold": threshold})
