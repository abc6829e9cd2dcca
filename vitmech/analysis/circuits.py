"""Reading attention heads through their weights: QK/OV circuits, positional QK, composition.

All functions take a HookedViT and read its current weights; none runs the model on images.
Conventions (docs/circuits.md#conventions): weights right-multiply (`x @ W`), so for head h

    QK[h] = W_Q[h] W_K[h]^T     [d_model, d_model]   score(x_q, x_k) = x_q QK x_k^T (+ bias terms)
    OV[h] = W_V[h] W_O[h]       [d_model, d_model]   the head writes (attention-weighted x) @ OV

both kept factored (rank <= d_head) as transformer_lens `FactoredMatrix`. Every head reads LN1 of the
residual stream; run `vitmech.weight_processing.process_weights` first to fold the LayerNorm gains into
W_Q/W_K/W_V (as TransformerLens does on load) when the circuits should include them.

    qk, ov = qk_circuits(model), ov_circuits(model)            # FactoredMatrix [L, H, d, d]
    positional_qk(model).query_grid(layer=3, head=0, query=(7, 7))   # [g, g] scores of one query patch
    composition_scores(model, subtract_baseline=True).top_pairs("K", k=10)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd
import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from jaxtyping import Complex, Float
from transformer_lens import FactoredMatrix

from vitmech.analysis.attention import mean_attention_distance, patch_distances
from vitmech.errors import IndexOutOfRangeError, InputError, InputTypeError, UnsupportedModelError
from vitmech.model.attention import Attention
from vitmech.model.hooked_vit import HookedViT
from vitmech.model.layer_norm import LayerNorm
from vitmech.tokens import TokenLayout, layout_for, token_layout

PositionalMode = Literal["ln1", "raw"]
CompositionMode = Literal["Q", "K", "V"]
COMPOSITION_MODES: tuple[str, ...] = ("Q", "K", "V")


# ---------------------------------------------------------------------------------------------- QK / OV
def qk_circuits(model: HookedViT) -> FactoredMatrix:
    """W_Q W_K^T of every head: FactoredMatrix [n_layers, n_heads, d_model, d_model] (query side on the left)."""
    return FactoredMatrix(model.W_Q, model.W_K.transpose(-2, -1))


def ov_circuits(model: HookedViT) -> FactoredMatrix:
    """W_V W_O of every head: FactoredMatrix [n_layers, n_heads, d_model, d_model] (read on the left, write on the right)."""
    return FactoredMatrix(model.W_V, model.W_O)


@dataclass
class SingularDirections:
    """Top-k singular triplets of a per-head circuit M = sum_i s_i u_i v_i^T.

    For a right-multiplying map x -> x M, `input_directions` u_i are what the head reads and
    `output_directions` v_i what it writes (for QK: query-side and key-side directions).

    Attributes:
        circuit: "QK", "OV" or a caller's label.
        values: singular values s_i, [n_layers, n_heads, k], descending.
        input_directions: u_i as columns, [n_layers, n_heads, d_model, k] (unit norm).
        output_directions: v_i as columns, [n_layers, n_heads, d_model, k] (unit norm).
        total_norm_sq: ||M||_F^2 per head, [n_layers, n_heads] (to express s_i^2 as a share).
    """

    circuit: str
    values: Float[torch.Tensor, "layer head k"]
    input_directions: Float[torch.Tensor, "layer head d_model k"]
    output_directions: Float[torch.Tensor, "layer head d_model k"]
    total_norm_sq: Float[torch.Tensor, "layer head"]

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, head, rank index): singular value and its share of ||M||_F^2."""
        n_layers, n_heads, k = self.values.shape
        share = self.values.pow(2) / self.total_norm_sq.clamp_min(1e-30)[..., None]
        rows = [
            {
                "circuit": self.circuit,
                "layer": layer,
                "head": h,
                "index": i,
                "singular_value": float(self.values[layer, h, i]),
                "share_of_norm_sq": float(share[layer, h, i]),
            }
            for layer in range(n_layers)
            for h in range(n_heads)
            for i in range(k)
        ]
        return pd.DataFrame(rows)


def top_singular_directions(circuit: FactoredMatrix, k: int = 3, name: str = "") -> SingularDirections:
    """The k largest singular values and their input/output directions of a [L, H, d, d] FactoredMatrix.

    Computed from the factors (transformer_lens' factored SVD), never from the d x d product.
    """
    if circuit.ndim != 4:
        raise InputError(f"expected a per-head FactoredMatrix [layer, head, d, d], got shape {tuple(circuit.shape)}")
    if not 1 <= k <= circuit.mdim:
        raise InputError(f"k must be in [1, {circuit.mdim}] (the circuit's rank is at most d_head), got {k}")
    with torch.no_grad():
        U, S, V = circuit.svd()
    return SingularDirections(
        circuit=name,
        values=S[..., :k].detach(),
        input_directions=U[..., :k].detach(),
        output_directions=V[..., :k].detach(),
        total_norm_sq=S.pow(2).sum(-1).detach(),
    )


@dataclass
class OVCopyingScores:
    """Eigenvalue copying score of each head's OV circuit in the residual basis (Elhage et al. 2021).

    score = sum_i Re(lambda_i) / sum_i |lambda_i| over the eigenvalues of W_V W_O (equal, apart from
    zeros, to those of W_O W_V [d_head, d_head]); +1 when the head writes back (a positive multiple of)
    what it reads, -1 when it writes the negative, near 0 for a rotation or mixing.

    Attributes:
        eigenvalues: [n_layers, n_heads, d_head] complex.
        scores: [n_layers, n_heads], in [-1, 1].
    """

    eigenvalues: Complex[torch.Tensor, "layer head d_head"]
    scores: Float[torch.Tensor, "layer head"]

    def to_frame(self) -> pd.DataFrame:
        n_layers, n_heads = self.scores.shape
        return pd.DataFrame(
            [
                {"layer": layer, "head": h, "copying_score": float(self.scores[layer, h])}
                for layer in range(n_layers)
                for h in range(n_heads)
            ]
        )


def eigenvalue_copying_score(eigenvalues: Complex[torch.Tensor, "... n"]) -> Float[torch.Tensor, "..."]:
    """sum Re(lambda) / sum |lambda| over the last axis (0 where every eigenvalue is 0)."""
    total = eigenvalues.abs().sum(-1)
    return torch.where(total > 0, eigenvalues.real.sum(-1) / total.clamp_min(1e-30), torch.zeros_like(total))


def ov_copying_scores(model: HookedViT) -> OVCopyingScores:
    """Copying score of every head's OV circuit, from the eigenvalues of the small W_O W_V."""
    with torch.no_grad():
        eigenvalues = ov_circuits(model).eigenvalues
    return OVCopyingScores(eigenvalues=eigenvalues, scores=eigenvalue_copying_score(eigenvalues))


# ---------------------------------------------------------------------------------------------- scores
def qk_scores(
    attn: Attention,
    queries_from: Float[torch.Tensor, "... pos_q d_model"],
    keys_from: Float[torch.Tensor, "... pos_k d_model"] | None = None,
    scale: bool = True,
) -> Float[torch.Tensor, "... head pos_q pos_k"]:
    """Attention scores of one layer from LN1-output vectors: (x W_Q + b_Q)(y W_K + b_K)^T [/ sqrt(d_head)].

    With `queries_from` = the cached `ln1.hook_normalized` times ln1.w plus ln1.b (the LayerNorm output; the hook
    itself is taken before gain and bias) and scale=True this is `hook_attn_scores`, qk-norm included; rotary
    embeddings are left out (they depend on the tokens' grid positions, docs/circuits.md#qk-norm-and-rotary-embeddings).
    """
    keys_from = queries_from if keys_from is None else keys_from
    q = einsum(queries_from, attn.W_Q, "... p d, h d e -> ... h p e") + attn.b_Q[:, None, :]
    k = einsum(keys_from, attn.W_K, "... p d, h d e -> ... h p e") + attn.b_K[:, None, :]
    if attn.q_norm is not None and attn.k_norm is not None:
        q, k = _layer_norm(attn.q_norm, q), _layer_norm(attn.k_norm, k)
    scores = einsum(q, k, "... h q e, ... h k e -> ... h q k")
    return scores * attn.scale if scale else scores


def head_results(attn: Attention, z: Float[torch.Tensor, "... head d_head"]) -> Float[torch.Tensor, "... head d_model"]:
    """Each head's write to the residual stream, z[h] @ W_O[h] (what `attn.hook_result` holds; b_O excluded)."""
    return einsum(z, attn.W_O, "... h e, h e d -> ... h d")


# ---------------------------------------------------------------------------------------------- positions
@dataclass
class PositionalLocality:
    """How near the patches are that each head's positional scores favour.

    Attributes:
        mean_distance_px: [n_layers, n_heads], the mean attention distance of softmax(positional scores)
            over patch keys, per query patch, averaged over query patches (pixels).
        uniform_distance_px: the same for uniform attention over the patches (116.49 px for 14x14
            patches of 16 px); a head at this value has no positional preference.
        locality: 1 - mean_distance / uniform_distance: 1 = attends to its own patch, 0 = no preference,
            < 0 = prefers distant patches.
        renormalise: whether the CLS key was dropped (softmax over patch keys only).
    """

    mean_distance_px: Float[torch.Tensor, "layer head"]
    uniform_distance_px: float
    renormalise: bool

    @property
    def locality(self) -> Float[torch.Tensor, "layer head"]:
        return 1 - self.mean_distance_px / self.uniform_distance_px

    def to_frame(self) -> pd.DataFrame:
        n_layers, n_heads = self.mean_distance_px.shape
        loc = self.locality
        return pd.DataFrame(
            [
                {
                    "layer": layer,
                    "head": h,
                    "positional_distance_px": float(self.mean_distance_px[layer, h]),
                    "uniform_distance_px": self.uniform_distance_px,
                    "locality": float(loc[layer, h]),
                }
                for layer in range(n_layers)
                for h in range(n_heads)
            ]
        )


@dataclass
class PositionalQK:
    """Positional attention scores of every head: what each head's query at position i gives position j's key
    from the position embeddings alone.

    Attributes:
        scores: [n_layers, n_heads, P, P] (query, key) over the rows of W_pos: its prefix tokens (`layout`),
            then the patches row-major on the g x g grid.
        mode: "ln1" (W_pos through the block's LN1 first; default) or "raw" (W_pos as it is; docs/circuits.md#positional-qk).
        scaled: whether scores include attention's 1/sqrt(d_head).
        grid_size, patch_size: the patch grid, to reshape and measure distances.
        layout: the token layout of the score rows (None: one class token + the grid).
    """

    scores: Float[torch.Tensor, "layer head pos pos"]
    mode: str
    scaled: bool
    grid_size: int
    patch_size: int
    layout: TokenLayout | None = None

    @property
    def token_layout(self) -> TokenLayout:
        return layout_for(self.scores.shape[-1], self.layout, "positional scores")

    def _query_index(self, query: int | tuple[int, int] | str) -> int:
        g, layout = self.grid_size, self.token_layout
        if query == "cls":
            return layout.require_class_token("the 'cls' query of positional scores")
        if query == "centre":
            return layout.patch_position(g // 2, g // 2)
        if isinstance(query, tuple) and len(query) == 2:
            return layout.patch_position(*query)
        if isinstance(query, int) and not isinstance(query, bool):
            if not 0 <= query < g * g:
                raise IndexOutOfRangeError(
                    f"query patch index {query} outside [0, {g * g}) (patch k sits at row k // g, col k % g)"
                )
            return layout.patch_position(query // g, query % g)
        raise InputTypeError(f"query must be a patch index, a (row, col) pair, 'centre' or 'cls'; got {query!r}")

    def query_patch(self, query: int | tuple[int, int] | str) -> int | None:
        """Row-major patch index of a query, or None for a prefix-token query (e.g. "cls")."""
        index = self._query_index(query) - self.token_layout.n_prefix
        return index if index >= 0 else None

    def query_grid(
        self, layer: int, head: int, query: int | tuple[int, int] | str = "centre", softmax: bool = False
    ) -> Float[torch.Tensor, "g g"]:
        """One query's scores over the patch keys, reshaped to the [g, g] patch grid.

        query: patch index k (0-based over patches), a (row, col) pair, "centre" or "cls".
        softmax=True gives the attention it implies over the patch keys (sums to 1) instead of scores.
        """
        row = self.token_layout.patches(self.scores[layer, head, self._query_index(query)], -1)
        if softmax:
            row = torch.softmax(row, -1)
        return rearrange(row, "(r c) -> r c", r=self.grid_size)

    def query_grids(
        self, query: int | tuple[int, int] | str = "centre", softmax: bool = True
    ) -> Float[torch.Tensor, "layer head g g"]:
        """`query_grid` for every head at once, [n_layers, n_heads, g, g]."""
        rows = self.token_layout.patches(self.scores[:, :, self._query_index(query)], -1)
        if softmax:
            rows = torch.softmax(rows, -1)
        return rearrange(rows, "l h (r c) -> l h r c", r=self.grid_size)

    def to_frame(self, query: int | tuple[int, int] | str = "centre") -> pd.DataFrame:
        """One query's row for every head: (layer, head, key row, key col, score, softmax over patch keys)."""
        scores, probs = self.query_grids(query, softmax=False), self.query_grids(query, softmax=True)
        n_layers, n_heads, g, _ = scores.shape
        return pd.DataFrame(
            [
                {
                    "query": str(query),
                    "layer": layer,
                    "head": h,
                    "key_row": r,
                    "key_col": c,
                    "score": float(scores[layer, h, r, c]),
                    "probability": float(probs[layer, h, r, c]),
                }
                for layer in range(n_layers)
                for h in range(n_heads)
                for r in range(g)
                for c in range(g)
            ]
        )

    def locality(self, renormalise: bool = True) -> PositionalLocality:
        """Mean attention distance (pixels) of the attention the positional scores alone would give.

        renormalise=True: softmax over the patch keys (the same as softmax over all keys, then renormalised
        over patches, the default of docs/attention.md#definitions-and-sources); False: softmax over all P keys, the CLS key at distance 0.
        """
        layout = self.token_layout
        if renormalise:
            probs = torch.softmax(layout.patches(layout.patches(self.scores, -1), -2), -1)
            probs = layout.pad_prefix(probs, dims=(-2, -1))
        else:
            probs = torch.softmax(self.scores, -1)
        dist = mean_attention_distance(probs, self.patch_size, renormalise=renormalise, layout=layout)
        uniform = uniform_distance_px(self.grid_size, self.patch_size)
        return PositionalLocality(mean_distance_px=dist, uniform_distance_px=uniform, renormalise=renormalise)


def _layer_norm(ln: LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """A vitmech LayerNorm's function without firing its hooks."""
    return F.layer_norm(x, (x.shape[-1],), ln.w, ln.b, ln.eps)


def positional_inputs(model: HookedViT, layer: int, mode: PositionalMode = "ln1") -> Float[torch.Tensor, "pos d_model"]:
    """What layer `layer`'s W_Q / W_K read when only the position embeddings are in the residual stream.

    "ln1": LN1_l(W_pos) (pre-norm models: LN1_l(ln_pre(W_pos))): exactly what block 0 reads for an input
    whose patch embeddings and CLS token are zero. "raw": W_pos itself (docs/circuits.md#positional-qk).
    """
    if mode == "raw":
        return model.W_pos
    if mode != "ln1":
        raise InputError(f"mode must be 'ln1' or 'raw', got {mode!r}")
    pos = model.W_pos
    if model.cfg.pre_norm:
        pos = _layer_norm(model.ln_pre, pos)
    return _layer_norm(model.blocks[layer].ln1, pos)


def positional_qk(
    model: HookedViT, mode: PositionalMode = "ln1", scale: bool = True, layers: Sequence[int] | None = None
) -> PositionalQK:
    """The [P, P] positional attention scores of every head (docs/circuits.md#positional-qk).

    scores[l, h] = (X W_Q[h] + b_Q[h]) (X W_K[h] + b_K[h])^T [/ sqrt(d_head)] with X = `positional_inputs`.

    mode="ln1" (default) passes W_pos through the block's LN1 first, because the head only ever sees LN1 of
    the residual stream: its centring, 1/scale and gain change which positions match, and the raw W_pos is on
    an arbitrary scale relative to what W_Q was trained on (so a softmax of raw scores has an arbitrary
    temperature). mode="raw" is the formula of docs/circuits.md#positional-qk on W_pos as stored. scale=True includes attention's
    1/sqrt(d_head), so scores are in the units of `hook_attn_scores` (that formula omits it; it
    only matters once a softmax is taken, as in `PositionalQK.locality`).
    """
    if mode not in ("ln1", "raw"):
        raise InputError(f"mode must be 'ln1' or 'raw', got {mode!r}")
    if model.cfg.rope != "none" or not model.cfg.pos_embed:
        feature = (
            f"rotary position embeddings (rope={model.cfg.rope!r})"
            if model.cfg.rope != "none"
            else "no learned positions"
        )
        raise UnsupportedModelError(
            f"positional_qk reads learned absolute position embeddings through W_Q, W_K; this model has {feature}, "
            "so its positional scores are not that bilinear form (docs/circuits.md#qk-norm-and-rotary-embeddings)"
        )
    layer_ids = (
        list(range(model.cfg.n_layers)) if layers is None else [model.cfg.layer_index(layer) for layer in layers]
    )
    with torch.no_grad():
        scores = torch.stack(
            [
                qk_scores(model.blocks[layer].attn, positional_inputs(model, layer, mode), scale=scale)
                for layer in layer_ids
            ]
        )
    return PositionalQK(
        scores=scores,
        mode=mode,
        scaled=scale,
        grid_size=model.cfg.grid_size,
        patch_size=model.cfg.patch_size,
        layout=_position_layout(model),
    )


def _position_layout(model: HookedViT) -> TokenLayout:
    """The token layout of W_pos's rows: the model's, or without the registers where the position table
    skips them (DINOv2 with registers adds no position embedding to its registers)."""
    return token_layout(model).for_rows(model.W_pos.shape[0], "W_pos")


# ---------------------------------------------------------------------------------------------- composition
def composition_score(left: FactoredMatrix, right: FactoredMatrix) -> Float[torch.Tensor, "..."]:
    """||L R||_F / (||L||_F ||R||_F) for FactoredMatrices with broadcastable leading dims (Elhage et al. 2021).

    In [0, 1] by submultiplicativity of the Frobenius norm; unchanged by rescaling L or R. Computed from
    the factors: with L = Q_L C_L and R = C_R Q_R^T (Q orthonormal columns, from QRs of the outer factors),
    ||L R|| = ||C_L C_R||, a d_head x d_head product.
    """
    if left.rdim != right.ldim:
        raise InputError(f"left's columns ({left.rdim}) must match right's rows ({right.ldim})")
    c_left, c_right = _collapse_left(left), _collapse_right(right)
    product = c_left @ c_right
    return product.norm(dim=(-2, -1)) / (c_left.norm(dim=(-2, -1)) * c_right.norm(dim=(-2, -1)))


def _collapse_left(m: FactoredMatrix) -> Float[torch.Tensor, "... mdim rdim"]:
    """C with M = Q C and Q orthonormal columns (A = Q R, C = R B): ||M X||_F = ||C X||_F. A QR, not an SVD."""
    _, r = torch.linalg.qr(m.A)
    return r @ m.B


def _collapse_right(m: FactoredMatrix) -> Float[torch.Tensor, "... ldim mdim"]:
    """C with M = C Q^T and Q orthonormal columns (B^T = Q R, C = A R^T): ||X M||_F = ||X C||_F."""
    _, r = torch.linalg.qr(m.B.transpose(-2, -1))
    return m.A @ r.transpose(-2, -1)


def _reader(model: HookedViT, mode: str) -> FactoredMatrix:
    """The later head's matrix that reads what an earlier OV writes, per mode (right-multiplying convention).

    Q: the query side reads x_q, score = (x_q OV_A) QK_B x_k^T -> OV_A QK_B.
    K: the key side reads x_k, score = x_q QK_B (x_k OV_A)^T -> OV_A QK_B^T (same norm as QK_B OV_A^T).
    V: the value side reads x_k, output = (x_k OV_A) OV_B -> OV_A OV_B.
    """
    if mode == "Q":
        return qk_circuits(model)
    if mode == "K":
        return qk_circuits(model).T
    if mode == "V":
        return ov_circuits(model)
    raise InputError(f"composition mode must be one of {COMPOSITION_MODES}, got {mode!r}")


def _scores_later_than(left: FactoredMatrix, right: FactoredMatrix) -> Float[torch.Tensor, "layer head layer head"]:
    """[L_src, H, L_dst, H] composition scores, NaN unless src layer < dst layer; one dst layer at a time."""
    c_left = _collapse_left(left)  # [L, H, d_head, d]
    c_right = _collapse_right(right)  # [L, H, d, d_head]
    n_left = c_left.norm(dim=(-2, -1))
    n_right = c_right.norm(dim=(-2, -1))
    n_layers, n_heads = n_left.shape
    out = torch.full((n_layers, n_heads, n_layers, n_heads), float("nan"), dtype=c_left.dtype, device=c_left.device)
    for dst in range(1, n_layers):
        product = einsum(c_left[:dst], c_right[dst], "la ha i d, hb d j -> la ha hb i j")
        norms = product.norm(dim=(-2, -1))
        out[:dst, :, dst, :] = norms / (n_left[:dst, :, None] * n_right[dst][None, None, :])
    return out


def random_composition_baseline(d_model: int, d_head: int, mode: str, n_samples: int = 64, seed: int = 0) -> float:
    """Mean composition score of random Gaussian factors of a head's shapes (Elhage et al.'s baseline).

    Left: W_V [d, dh] @ W_O [dh, d]; right: W_Q W_K^T (Q, K modes) or W_V W_O (V); i.i.d. N(0, 1) entries
    (the score is scale-free, so the variance does not matter), seeded. About 1/sqrt(d_model) for d_head << d.
    """
    if mode not in COMPOSITION_MODES:
        raise InputError(f"composition mode must be one of {COMPOSITION_MODES}, got {mode!r}")
    if n_samples < 1:
        raise InputError(f"n_samples must be >= 1, got {n_samples}")
    g = torch.Generator().manual_seed(seed)
    shape = (n_samples, d_model, d_head)
    w_v, w_o = torch.randn(shape, generator=g), torch.randn(shape, generator=g).transpose(-2, -1)
    left = FactoredMatrix(w_v, w_o)
    right = FactoredMatrix(torch.randn(shape, generator=g), torch.randn(shape, generator=g).transpose(-2, -1))
    right = right.T if mode == "K" else right  # (W_Q W_K^T)^T; for V the factors are W_V, W_O
    return float(composition_score(left, right).mean())


@dataclass
class CompositionScores:
    """Q-, K- and V-composition scores between every earlier head A (source) and later head B (destination).

    Attributes:
        scores: mode -> [n_layers, n_heads, n_layers, n_heads] indexed [src_layer, src_head, dst_layer, dst_head];
            NaN where src_layer >= dst_layer (a head can only read what earlier layers wrote).
        baselines: mode -> mean score of random matrices of the same shapes (0.0 when not subtracted).
        subtract_baseline: whether `adjusted` subtracts the baselines.
    """

    scores: dict[str, Float[torch.Tensor, "layer head layer head"]]
    baselines: dict[str, float] = field(default_factory=dict)
    subtract_baseline: bool = False

    def adjusted(self, mode: str) -> Float[torch.Tensor, "layer head layer head"]:
        """Scores minus the random baseline when subtract_baseline was asked for, else the raw scores."""
        base = self.baselines.get(mode, 0.0) if self.subtract_baseline else 0.0
        return self.scores[mode] - base

    def to_frame(self) -> pd.DataFrame:
        """Long table: one row per (mode, src layer/head, dst layer/head) with src layer < dst layer."""
        frames = []
        for mode, score in self.scores.items():
            idx = (~torch.isnan(score)).nonzero().tolist()
            adj = self.adjusted(mode)
            frames.append(
                pd.DataFrame(
                    [
                        {
                            "mode": mode,
                            "src_layer": la,
                            "src_head": ha,
                            "dst_layer": lb,
                            "dst_head": hb,
                            "score": float(score[la, ha, lb, hb]),
                            "baseline": self.baselines.get(mode, 0.0),
                            "adjusted": float(adj[la, ha, lb, hb]),
                        }
                        for la, ha, lb, hb in idx
                    ]
                )
            )
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def top_pairs(self, mode: str | None = None, k: int = 10) -> pd.DataFrame:
        """The k strongest composing pairs (by adjusted score) for one mode, or across all modes."""
        frame = self.to_frame()
        if mode is not None:
            if mode not in self.scores:
                raise InputError(f"mode {mode!r} was not computed; have {sorted(self.scores)}")
            frame = frame[frame["mode"] == mode]
        return frame.sort_values("adjusted", ascending=False).head(k).reset_index(drop=True)

    def to_dict(self) -> dict:
        return {
            "baselines": dict(self.baselines),
            "subtract_baseline": self.subtract_baseline,
            "scores": {m: s.tolist() for m, s in self.scores.items()},
        }


def composition_scores(
    model: HookedViT,
    modes: Sequence[str] = COMPOSITION_MODES,
    subtract_baseline: bool = False,
    n_baseline_samples: int = 64,
    seed: int = 0,
) -> CompositionScores:
    """Composition scores of every (earlier head, later head) pair, Elhage et al. 2021 (docs/circuits.md#composition-scores).

    score(A -> B) = ||OV_A M_B||_F / (||OV_A||_F ||M_B||_F) with M_B = QK_B (Q), QK_B^T (K) or OV_B (V).
    subtract_baseline: also compute the mean score of random Gaussian matrices of the same shapes (seeded)
    and report scores minus it in `adjusted` and `to_frame()["adjusted"]`.
    Fold the LayerNorms first (`process_weights`) so that the later head's LN1 gain is included.
    """
    unknown = [m for m in modes if m not in COMPOSITION_MODES]
    if unknown or not modes:
        raise InputError(f"modes must be a non-empty subset of {COMPOSITION_MODES}, got {list(modes)}")
    with torch.no_grad():
        writer = ov_circuits(model)
        scores = {m: _scores_later_than(writer, _reader(model, m)) for m in modes}
    baselines = {}
    if subtract_baseline:
        baselines = {
            m: random_composition_baseline(model.cfg.d_model, model.cfg.d_head, m, n_baseline_samples, seed + i)
            for i, m in enumerate(modes)
        }
    return CompositionScores(scores=scores, baselines=baselines, subtract_baseline=subtract_baseline)


def composition_changes(before: CompositionScores, after: CompositionScores) -> pd.DataFrame:
    """Per (mode, src, dst) pair: adjusted score before and after and the change, largest |change| first.

    The two results must come from models of the same architecture (same heads)."""
    keys = ["mode", "src_layer", "src_head", "dst_layer", "dst_head"]
    a, b = before.to_frame(), after.to_frame()
    if len(a) != len(b) or set(a["mode"]) != set(b["mode"]):
        raise InputError("composition results of different architectures or modes cannot be compared head by head")
    merged = a[keys + ["adjusted"]].merge(b[keys + ["adjusted"]], on=keys, suffixes=("_before", "_after"))
    merged["change"] = merged["adjusted_after"] - merged["adjusted_before"]
    return merged.reindex(merged["change"].abs().sort_values(ascending=False).index).reset_index(drop=True)


def uniform_distance_px(grid_size: int, patch_size: int) -> float:
    """Mean attention distance (pixels) of uniform attention over a g x g patch grid.

    >>> round(uniform_distance_px(14, 16), 2)  # ViT-B/16 at 224 px
    116.49
    """
    return float(patch_distances(grid_size, patch_size, torch.float64).mean())
