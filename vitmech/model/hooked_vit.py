"""HookedViT: one hooked representation of a Vision Transformer, its optional parts chosen by the config.

Flow of one forward pass (hook names in brackets; P = n_prefix + N tokens, `vitmech.tokens` says where):

    images [B, C, S, S]
      -> embed (patches @ W_E + b_E)                      [B, N, d]
      -> prefix tokens prepended (class, distillation, registers)  [hook_embed]      [B, P, d]
      -> + position embeddings (zero where a token has none)       [hook_pos_embed]  [B, P, d]
      -> sum                                                        [hook_full_embed] [B, P, d]
      -> ln_pre (pre-norm models only)                      [hook_ln_pre]
      -> blocks.0 ... blocks.{L-1}                          [blocks.l.*]
      -> ln_final on every token (final_norm="tokens")      [ln_final.*]
      -> pool: class token / mean of patches / attention pool   [hook_pooled] [B, d]
         (or the patch tokens flattened, pool="flatten")          [hook_pooled] [B, N * d]
         (or each grid row's and column's mean, pool="rowcol")   [hook_pooled] [B, 2g * d]
      -> fc_norm (final_norm="pooled")                      [fc_norm.*]
      -> head (and head_dist, averaged, for DeiT)           [head.hook_logits] [B, n_classes]
         or projection                                      [proj.hook_embeddings] [B, d_proj]

`hook_embed + hook_pos_embed == hook_full_embed` (the token embeddings include the prefix tokens,
so that transformer_lens' `decompose_resid` sums to the residual stream).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, overload

import torch
from jaxtyping import Float, Int
from transformer_lens import ActivationCache, FactoredMatrix, HookedRootModule
from transformer_lens.hook_points import HookPoint

from vitmech.config import POSITIONAL_POOLS, ViTConfig
from vitmech.errors import HeadMismatchError, ImageInputError, IndexOutOfRangeError, InputError, RuntimeSettingError
from vitmech.hook_names import check_hook_names
from vitmech.model.block import BlockList, TransformerBlock
from vitmech.model.embed import ClassToken, DistillToken, PatchEmbed, PosEmbed, RegisterTokens
from vitmech.model.head import ClassifierHead, Projection
from vitmech.model.layer_norm import LayerNorm
from vitmech.model.pool import AttentionPool, FlattenPool, RowColPool, TokenPool
from vitmech.preprocessing import ImageLike, Preprocessing, preprocess
from vitmech.tokens import token_layout

if TYPE_CHECKING:
    from pathlib import Path

    from vitmech.loading.families.base import Converted

logger = logging.getLogger(__name__)

ReturnType = Literal["auto", "logits", "features", "embeddings", "tokens"] | None
RETURN_TYPES = ("auto", "logits", "features", "embeddings", "tokens")
NamesFilter = None | str | Sequence[str] | Callable[[str], bool]


class HookedViT(HookedRootModule):
    """A Vision Transformer whose every intermediate is a transformer_lens HookPoint.

    Build one from a source with `HookedViT.from_timm`, `from_hf`, `from_checkpoint` or
    `from_pretrained`; `HookedViT(cfg)` gives a seeded random init (timm-style) for training.
    """

    def __init__(
        self,
        cfg: ViTConfig,
        preprocessing: Preprocessing | None = None,
        class_names: Sequence[str] | None = None,
        seed: int | None = 0,
        initialize: bool = True,
    ) -> None:
        """A seeded timm-style random init (`seed=None`: torch's global RNG); loaders that overwrite every
        weight pass initialize=False to skip it (it is many small ops, slow on a busy CPU)."""
        super().__init__()
        self.cfg = cfg
        self.preprocessing = preprocessing or Preprocessing(image_size=cfg.image_size, source="vitmech default")
        if self.preprocessing.image_size != cfg.image_size:
            raise InputError(
                f"preprocessing makes {self.preprocessing.image_size}px images but the model takes {cfg.image_size}px"
            )
        if class_names is not None and len(class_names) != cfg.n_classes:
            raise HeadMismatchError(f"{len(class_names)} class names for a head with {cfg.n_classes} classes")
        self.class_names: list[str] | None = list(class_names) if class_names is not None else None
        # Free-form description (data, recipe, metrics) of a trained model; saved with it.
        self.card: dict[str, Any] = {}
        # Whether run_with_cache() without a names_filter also caches the per-head `attn.hook_result`.
        self.use_attn_result = False

        self.embed = PatchEmbed(cfg.n_channels, cfg.patch_size, cfg.d_model)
        if cfg.class_token:
            self.cls_token = ClassToken(cfg.d_model)
        if cfg.distill_token:
            self.dist_token = DistillToken(cfg.d_model)
        if cfg.n_register_tokens:
            self.registers = RegisterTokens(cfg.n_register_tokens, cfg.d_model)
        if cfg.pos_embed:
            self.pos_embed = PosEmbed(cfg)
        self.hook_embed = HookPoint()
        self.hook_pos_embed = HookPoint()
        self.hook_full_embed = HookPoint()
        if cfg.pre_norm:
            self.ln_pre = LayerNorm(cfg.d_model, cfg.ln_eps)
            self.hook_ln_pre = HookPoint()
        self.blocks = BlockList([TransformerBlock(cfg, layer) for layer in range(cfg.n_layers)])
        if cfg.final_norm == "tokens":
            self.ln_final = LayerNorm(cfg.d_model, cfg.ln_eps)
        self.pool: AttentionPool | FlattenPool | RowColPool | TokenPool
        if cfg.pool == "map":
            self.pool = AttentionPool(cfg)
        elif cfg.pool == "flatten":
            self.pool = FlattenPool(cfg)
        elif cfg.pool == "rowcol":
            self.pool = RowColPool(cfg)
        elif cfg.pool != "none":
            self.pool = TokenPool(cfg)
        self.hook_pooled = HookPoint()
        if cfg.final_norm == "pooled":
            self.fc_norm = LayerNorm(cfg.d_model, cfg.ln_eps)
        if cfg.has_classifier:
            self.head = ClassifierHead(cfg.pooled_dim, cfg.n_classes)
        if cfg.has_distill_head:
            self.head_dist = ClassifierHead(cfg.d_model, cfg.n_classes)
        if cfg.projection_dim:
            self.proj = Projection(cfg.d_model, cfg.projection_dim)
        if initialize:
            self.init_weights(seed)
        self.setup()

    # ------------------------------------------------------------------ construction
    def setup(self) -> None:
        """transformer_lens' hook and module tables, plus the run-time fields of `cfg` (device, switches).

        The split-input hooks live on the block (`blocks.l.hook_q_input`, as HookedTransformer named them);
        `blocks.l.attn.hook_q_input` (TransformerBridge's name, used by `transformer_lens.patching`) resolves
        to the same hook point when a hook is added by name.
        """
        super().setup()
        for layer in range(len(self.blocks)):
            for hook in ("hook_q_input", "hook_k_input", "hook_v_input", "hook_attn_in"):
                self.mod_dict[f"blocks.{layer}.attn.{hook}"] = self.mod_dict[f"blocks.{layer}.{hook}"]
        self._sync_runtime_cfg()

    def _sync_runtime_cfg(self) -> None:
        """Give the model its own copy of cfg whose run-time fields match the model (never the architecture)."""
        values = {
            "device": self.device,
            "use_split_qkv_input": any(block.use_split_qkv_input for block in self.blocks),
            "use_attn_in": any(block.use_attn_in for block in self.blocks),
            "use_hook_mlp_in": any(block.use_hook_mlp_in for block in self.blocks),
        }
        if all(getattr(self.cfg, name) == value for name, value in values.items()):
            return
        cfg = copy.copy(self.cfg)
        for name, value in values.items():
            object.__setattr__(cfg, name, value)
        self.cfg = cfg

    def _apply(self, fn: Callable, recurse: bool = True) -> HookedViT:
        """nn.Module.to / cuda / half: also keep `cfg.device` current."""
        result = super()._apply(fn, recurse)
        if "blocks" in self._modules:
            self._sync_runtime_cfg()
        return result

    @torch.no_grad()
    def init_weights(self, seed: int | None = 0) -> None:
        """timm-style init: truncated normal (std 0.02) matrices and positions, zero biases, unit LayerNorms."""
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        for name, param in self.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "gamma":
                param.fill_(1.0)
            elif leaf.startswith("W_") or leaf == "probe":
                std = 1e-6 if leaf in ("W_cls", "W_dist", "W_reg") else 0.02
                param.copy_(
                    torch.nn.init.trunc_normal_(
                        torch.empty_like(param), std=std, a=-2 * std, b=2 * std, generator=generator
                    )
                )
            elif leaf == "w":
                param.fill_(1.0)
            else:
                param.zero_()

    @classmethod
    def from_converted(cls, converted: Converted) -> HookedViT:
        """Build from a converter's output (config, state dict, preprocessing, class names), loading strictly."""
        from vitmech.loading._state import load_strict

        model = cls(
            converted.config,
            preprocessing=converted.preprocessing,
            class_names=converted.class_names,
            initialize=False,
        )
        load_strict(
            model,
            converted.state_dict,
            f"converted {converted.source or 'source'} weights",
            allow_nonfinite=converted.allow_nonfinite,
        )
        model.card = dict(converted.card)
        if converted.device is not None or converted.dtype is not None:
            model = model.to(device=converted.device, dtype=converted.dtype)
        return model.eval()

    @classmethod
    def from_timm(cls, model_or_name: Any, *, image_size: int | None = None, **timm_kwargs: Any) -> HookedViT:
        """Port a timm model (an instance, or a name for `timm.create_model(name, **timm_kwargs)`;
        `pretrained` defaults to True for names). image_size runs it at another size (positions resampled)."""
        from vitmech.loading.timm import convert_timm

        return cls.from_converted(convert_timm(model_or_name, image_size=image_size, **timm_kwargs))

    @classmethod
    def from_hf(cls, model_or_id_or_path: Any, **kwargs: Any) -> HookedViT:
        """Port a HuggingFace ViT / DeiT / ViTMAE / DINOv2 / CLIP / SigLIP model (instance, hub id or directory)."""
        from vitmech.loading.hf import convert_hf

        return cls.from_converted(convert_hf(model_or_id_or_path, **kwargs))

    @classmethod
    def from_open_clip(cls, model: Any, **kwargs: Any) -> HookedViT:
        """Port the image tower of an open_clip CLIP model (the model, or its `.visual`)."""
        from vitmech.loading.open_clip import convert_open_clip

        return cls.from_converted(convert_open_clip(model, **kwargs))

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs: Any) -> HookedViT:
        """Load a local weight file (safetensors / torch) in timm, HF or vitmech format."""
        from vitmech.loading.checkpoint import convert_checkpoint

        return cls.from_converted(convert_checkpoint(path, **kwargs))

    @classmethod
    def from_pretrained(cls, name: str, **kwargs: Any) -> HookedViT:
        """Load by name: a shipped vitmech model, a timm name, a HF hub id, or a local path."""
        from vitmech.loading.registry import load_pretrained

        return cls.from_converted(load_pretrained(name, **kwargs))

    def save_pretrained(
        self, directory: str | Path, card: dict[str, Any] | None = None, format: str = "vitmech"
    ) -> Path:
        """Write the model to `directory`. format "vitmech" (default): `model.safetensors` + `config.json`
        (architecture, preprocessing, class names, card); "hf": a transformers folder that
        `AutoModelForImageClassification.from_pretrained` (or `AutoModel`, headless) loads, with its image
        processor config; "timm": timm's hub layout (`timm.models.save_for_hf`). All three load back with
        `HookedViT.from_pretrained(directory)`."""
        from vitmech.loading.export_formats import save_hf, save_timm
        from vitmech.loading.native import save_native

        if format == "vitmech":
            return save_native(self, directory, card=card)
        if format == "hf":
            return save_hf(self, directory)
        if format == "timm":
            return save_timm(self, directory)
        raise InputError(f"format must be 'vitmech', 'hf' or 'timm', got {format!r}")

    def push_to_hub(self, repo_id: str, *, format: str = "hf", **kwargs: Any) -> Any:
        """Upload to the HuggingFace hub repo `repo_id` in `save_pretrained`'s `format` (HF by default, so
        `transformers.AutoModel...` loads it); kwargs: private, token, commit_message, revision, create_pr.
        Raises HubError when offline, unreachable or not logged in (`vitmech.loading.hub.push_to_hub`)."""
        from vitmech.loading.hub import push_to_hub

        return push_to_hub(self, repo_id, format=format, **kwargs)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.embed.W_E.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.W_E.dtype

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _stack(self, get: Callable[[TransformerBlock], torch.Tensor]) -> torch.Tensor:
        tensors = [get(block) for block in self.blocks]
        if len({t.shape for t in tensors}) > 1:
            raise InputError(
                f"this model has {list(self.cfg.n_heads_per_layer or [])} heads per layer (pruned), so per-head "
                "weights do not stack over layers; read them per block: model.blocks[l].attn.W_Q"
            )
        return torch.stack(tensors)

    @property
    def W_Q(self) -> Float[torch.Tensor, "layer head d_model d_head"]:
        return self._stack(lambda b: b.attn.W_Q)

    @property
    def W_K(self) -> Float[torch.Tensor, "layer head d_model d_head"]:
        return self._stack(lambda b: b.attn.W_K)

    @property
    def W_V(self) -> Float[torch.Tensor, "layer head d_model d_head"]:
        return self._stack(lambda b: b.attn.W_V)

    @property
    def W_O(self) -> Float[torch.Tensor, "layer head d_head d_model"]:
        return self._stack(lambda b: b.attn.W_O)

    @property
    def b_Q(self) -> Float[torch.Tensor, "layer head d_head"]:
        return self._stack(lambda b: b.attn.b_Q)

    @property
    def b_K(self) -> Float[torch.Tensor, "layer head d_head"]:
        return self._stack(lambda b: b.attn.b_K)

    @property
    def b_V(self) -> Float[torch.Tensor, "layer head d_head"]:
        return self._stack(lambda b: b.attn.b_V)

    @property
    def b_O(self) -> Float[torch.Tensor, "layer d_model"]:
        return self._stack(lambda b: b.attn.b_O)

    @property
    def W_in(self) -> Float[torch.Tensor, "layer d_model d_mlp"]:
        return self._stack(lambda b: b.mlp.W_in)

    @property
    def W_out(self) -> Float[torch.Tensor, "layer d_mlp d_model"]:
        return self._stack(lambda b: b.mlp.W_out)

    @property
    def b_in(self) -> Float[torch.Tensor, "layer d_mlp"]:
        return self._stack(lambda b: b.mlp.b_in)

    @property
    def b_out(self) -> Float[torch.Tensor, "layer d_model"]:
        return self._stack(lambda b: b.mlp.b_out)

    @property
    def W_E(self) -> Float[torch.Tensor, "d_patch d_model"]:
        return self.embed.W_E

    @property
    def W_pos(self) -> Float[torch.Tensor, "pos d_model"]:
        """Position embedding of every token at the model's grid, [P, d] (zero rows for tokens without
        one; all zero for models without learned positions). The stored parameter is `pos_embed.W_pos`."""
        if not self.cfg.pos_embed:
            return self.embed.W_E.new_zeros(self.cfg.n_tokens, self.cfg.d_model)
        return self.pos_embed.table()

    @property
    def W_cls(self) -> Float[torch.Tensor, " d_model"]:
        if not self.cfg.class_token:
            raise AttributeError("this model has no class token (W_cls)")
        return self.cls_token.W_cls

    @property
    def W_H(self) -> Float[torch.Tensor, "pooled n_classes"]:
        """The classifier [pooled_dim, n_classes]: [d_model, K], or wider for the positional pools
        ([N * d_model, K] for pool="flatten", [2 * grid * d_model, K] for "rowcol")."""
        return self._require_head().W_H

    @property
    def b_H(self) -> Float[torch.Tensor, " n_classes"]:
        return self._require_head().b_H

    # transformer_lens names for the output map, so its tools find the classifier.
    W_U = W_H
    b_U = b_H

    @property
    def QK(self) -> FactoredMatrix:
        """Per-head W_Q W_K^T, [layer, head, d_model, d_model], kept factored (rank <= d_head)."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        """Per-head W_V W_O, [layer, head, d_model, d_model], kept factored (rank <= d_head)."""
        return FactoredMatrix(self.W_V, self.W_O)

    def _require_head(self) -> ClassifierHead:
        if not self.cfg.has_classifier:
            raise AttributeError(
                "this model has no classifier head (n_classes=0, e.g. a HF ViTModel); "
                "logit-based analyses need a model with a head, or a direction / metric on its features"
            )
        return self.head

    @property
    def final_ln(self) -> LayerNorm | None:
        """The LayerNorm between the last block and the head: ln_final (on tokens), fc_norm (on the pooled
        vector) or None."""
        norm = {"tokens": "ln_final", "pooled": "fc_norm"}.get(self.cfg.final_norm)
        return getattr(self, norm) if norm else None

    # ------------------------------------------------------------------ transformer_lens glue
    def to_single_token(self, label: str) -> int:
        """Class index of a class name (transformer_lens calls classes 'tokens')."""
        if self.class_names is None:
            raise InputError("this model carries no class names; pass class indices")
        try:
            return self.class_names.index(label)
        except ValueError:
            import difflib

            close = difflib.get_close_matches(label, self.class_names, n=5)
            raise InputError(f"unknown class name {label!r}; close matches: {close}") from None

    def tokens_to_residual_directions(
        self, classes: int | str | Int[torch.Tensor, "..."]
    ) -> Float[torch.Tensor, "... d_model"]:
        """Residual direction of each class at the final LayerNorm's output scale: ln_final.w * W_H[:, c].

        With these directions, `cache.logit_attrs(stack, classes)` gives each component's direct
        logit attribution exactly (the final LN's centring and cached scale applied by transformer_lens,
        its gain here); the constant ln_final.b @ W_H[:, c] + b_H[c] is not attributed.
        """
        if self.cfg.pool in POSITIONAL_POOLS:
            raise InputError(
                f"pool={self.cfg.pool!r} reads the patches with position-dependent weights (W_H "
                f"[{self.cfg.pooled_dim}, n_classes]), so a class has no single residual direction"
            )
        if isinstance(classes, str):
            classes = self.to_single_token(classes)
        idx = torch.as_tensor(classes, device=self.device, dtype=torch.long)
        if ((idx < 0) | (idx >= self.cfg.n_classes)).any():
            raise IndexOutOfRangeError(f"class index out of range [0, {self.cfg.n_classes}): {idx.tolist()}")
        gain = self.final_ln.w if self.final_ln is not None else torch.ones_like(self.W_H[:, 0])
        directions = (self.W_H * gain[:, None]).T  # [n_classes, d_model]
        return directions[idx]

    # ------------------------------------------------------------------ controls
    def set_attention_backend(self, backend: Literal["auto", "explicit"]) -> None:
        """ "auto": fused SDPA unless a hook needs scores/pattern; "explicit": always the explicit softmax."""
        if backend not in ("auto", "explicit"):
            raise RuntimeSettingError(f"backend must be 'auto' or 'explicit', got {backend!r}")
        for block in self.blocks:
            block.attn.force_explicit = backend == "explicit"

    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Whether `run_with_cache()` without a names_filter caches `attn.hook_result` [B, P, H, d] too."""
        self.use_attn_result = use_attn_result

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        """Give each head its own copy of resid_pre for its query, key and value input: hooks
        `blocks.l.hook_q_input`, `hook_k_input`, `hook_v_input` [B, P, H, d_model] (before ln1), so one
        head's key input can be patched alone (path patching). Outputs are unchanged; memory grows by 3H copies."""
        if use_split_qkv_input and self.cfg.use_attn_in:
            raise InputError(
                "use_split_qkv_input and use_attn_in are mutually exclusive; call set_use_attn_in(False) first"
            )
        for block in self.blocks:
            block.use_split_qkv_input = bool(use_split_qkv_input)
        self._sync_runtime_cfg()

    def set_use_attn_in(self, use_attn_in: bool) -> None:
        """One copy of resid_pre per head, shared by its query, key and value: hook `blocks.l.hook_attn_in`
        [B, P, H, d_model] (before ln1). Outputs are unchanged."""
        if use_attn_in and self.cfg.use_split_qkv_input:
            raise InputError(
                "use_attn_in and use_split_qkv_input are mutually exclusive; call set_use_split_qkv_input(False) first"
            )
        for block in self.blocks:
            block.use_attn_in = bool(use_attn_in)
        self._sync_runtime_cfg()

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool) -> None:
        """A copy of resid_mid entering ln2 at hook `blocks.l.hook_mlp_in` [B, P, d_model]. Outputs are unchanged."""
        for block in self.blocks:
            block.use_hook_mlp_in = bool(use_hook_mlp_in)
        self._sync_runtime_cfg()

    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> Float[torch.Tensor, " d_model"]:
        """Sum of the output biases written to the residual stream before `layer`'s attention (or, with
        mlp_input, before its MLP): b_O of each earlier attention and, with include_mlp_biases, b_out of each
        earlier MLP. transformer_lens' `ActivationCache.get_full_resid_decomposition` adds it as its "bias" row.

        Args:
            layer: in [0, n_layers]; n_layers means the input to the final LayerNorm.
            mlp_input: also count `layer`'s own b_O (layer < n_layers).
            include_mlp_biases: count the MLPs' b_out (False when the MLP outputs are decomposed whole).
        """
        n = self.cfg.n_layers
        layer = self.cfg.layer_index(layer, allow_end=True, allow_negative=False)
        if mlp_input and layer == n:
            raise InputError("mlp_input=True needs layer < n_layers (the final LayerNorm has no MLP)")
        if self.cfg.pre_norm:
            raise NotImplementedError(
                "a pre-norm model's residual stream starts at ln_pre's output, which hook_embed + hook_pos_embed "
                "do not sum to, so the residual decomposition (embed, pos_embed, heads, neurons, bias) is not exact"
            )
        bias = torch.zeros(self.cfg.d_model, device=self.device, dtype=self.dtype)
        for block in self.blocks[:layer]:
            bias = bias + block.attn.output_bias()
            if include_mlp_biases:
                bias = bias + block.mlp.output_bias()
        if mlp_input:
            bias = bias + self.blocks[layer].attn.output_bias()
        return bias

    def preprocess(self, images: ImageLike | Sequence[ImageLike]) -> Float[torch.Tensor, "batch channel height width"]:
        """PIL images, uint8 arrays or image files -> normalised batch [B, C, S, S] on the model's device and dtype."""
        batch = preprocess(images, self.preprocessing, n_channels=self.cfg.n_channels)
        return batch.to(device=self.device, dtype=self.dtype)

    # ------------------------------------------------------------------ forward
    def check_images(self, images: Any) -> None:
        """Raise ImageInputError unless images is a finite float tensor [B, C, S, S] of the model's dtype."""
        c, s = self.cfg.n_channels, self.cfg.image_size
        expected = f"[batch, {c}, {s}, {s}]"
        if not isinstance(images, torch.Tensor):
            raise ImageInputError(
                f"HookedViT takes a float tensor {expected}; got {type(images).__name__}. "
                "Use model.preprocess(images) for PIL images or uint8 arrays."
            )
        if not images.is_floating_point():
            raise ImageInputError(
                f"expected a float tensor {expected}, got dtype {images.dtype}; "
                "use model.preprocess(images) to convert uint8 images"
            )
        if images.ndim != 4 or tuple(images.shape[1:]) != (c, s, s):
            hint = ""
            if images.ndim == 3:
                hint = " (one image? add a batch axis: images[None])"
            elif images.ndim == 4 and images.shape[-1] == c and images.shape[1] != c:
                hint = " (channels last? use images.permute(0, 3, 1, 2))"
            elif images.ndim == 4 and images.shape[1] == c:
                hint = f" (the model takes {s}px images; use model.preprocess(images) to resize)"
            raise ImageInputError(f"expected images of shape {expected}, got {list(images.shape)}{hint}")
        if images.dtype != self.dtype:
            raise ImageInputError(
                f"images are {images.dtype} but the model is {self.dtype}; use images.to(model.dtype)"
            )
        if images.device != self.device:
            raise ImageInputError(
                f"images are on {images.device} but the model is on {self.device}; move them with "
                f"images.to(model.device) (or the model with model.to('{images.device}'))"
            )
        finite = torch.isfinite(images)
        if not bool(finite.all()):
            n_nan = int(torch.isnan(images).sum())
            n_inf = int((~finite).sum()) - n_nan
            raise ImageInputError(f"input contains {n_nan} NaN and {n_inf} infinite values")

    def _layer_bound(self, layer: int, name: str) -> int:
        return self.cfg.layer_index(layer, name, allow_end=True)

    def prefix_tokens(self, batch_size: int) -> list[torch.Tensor]:
        """The learned prefix embeddings in layout order (`vitmech.tokens`): class, distillation, registers."""
        parts = []
        if self.cfg.class_token:
            parts.append(self.cls_token(batch_size))
        if self.cfg.distill_token:
            parts.append(self.dist_token(batch_size))
        if self.cfg.n_register_tokens:
            parts.append(self.registers(batch_size))
        return parts

    def embed_images(self, images: Float[torch.Tensor, "batch c h w"]) -> Float[torch.Tensor, "batch pos d_model"]:
        """The residual stream entering block 0 (fires the embedding hooks)."""
        batch = images.shape[0]
        tokens = self.hook_embed(torch.cat([*self.prefix_tokens(batch), self.embed(images)], dim=1))
        if self.cfg.pos_embed:
            positions = self.hook_pos_embed(self.pos_embed(batch))
            resid = self.hook_full_embed(tokens + positions)
        else:
            resid = self.hook_full_embed(tokens)
        if self.cfg.pre_norm:
            resid = self.hook_ln_pre(self.ln_pre(resid))
        return resid

    def pooled(self, resid: Float[torch.Tensor, "batch pos d_model"]) -> Float[torch.Tensor, "batch pooled"]:
        """Final norm and pooling: the vector the head reads [B, d] ([B, pooled_dim] for the positional pools
        "flatten" and "rowcol"; fires hook_pooled and the norm hooks)."""
        if self.cfg.final_norm == "tokens":
            resid = self.ln_final(resid)
        pooled = self.hook_pooled(self.pool(resid))
        return self.fc_norm(pooled) if self.cfg.final_norm == "pooled" else pooled

    def query_positions(self) -> slice | None:
        """The positions the output reads after the last block when it is not every token (class pooling,
        and the distillation token of DeiT), else None."""
        if self.cfg.pool != "cls":
            return None
        return slice(0, 2) if self.cfg.has_distill_head else slice(0, 1)

    @overload
    def unembed(self, resid: Float[torch.Tensor, "batch pos d_model"], return_type: None) -> None: ...

    @overload
    def unembed(
        self,
        resid: Float[torch.Tensor, "batch pos d_model"],
        return_type: Literal["auto", "logits", "features", "embeddings", "tokens"] = "auto",
    ) -> torch.Tensor: ...

    def unembed(
        self, resid: Float[torch.Tensor, "batch pos d_model"], return_type: ReturnType = "auto"
    ) -> torch.Tensor | None:
        """From the last residual stream to the output.

        `resid` may hold only the positions `query_positions()` names (the exact ablation engine's last layer)."""
        if return_type is None:
            return None
        if return_type not in RETURN_TYPES:
            raise InputError(f"return_type must be one of {RETURN_TYPES} or None, got {return_type!r}")
        cfg = self.cfg
        if return_type == "auto":
            return_type = (
                "logits"
                if cfg.has_classifier
                else "embeddings"
                if cfg.projection_dim
                else "features"
                if cfg.pool != "none"
                else "tokens"
            )
        if return_type == "tokens":
            return self.ln_final(resid) if cfg.final_norm == "tokens" else resid
        if cfg.pool == "none":
            raise InputError(f"return_type={return_type!r} needs a pooled vector; this model has pool='none'")
        pooled = self.pooled(resid)
        if return_type == "features":
            return pooled
        if return_type == "embeddings":
            if not cfg.projection_dim:
                raise InputError("this model has no projection; use return_type='features'")
            return self.proj(pooled)
        logits = self._require_head()(pooled)
        if cfg.has_distill_head:
            normalized = self.ln_final(resid) if cfg.final_norm == "tokens" else resid
            distill = normalized[:, token_layout(cfg).distill_index]
            logits = (logits + self.head_dist(distill)) / 2
        return logits

    def forward(
        self,
        x: torch.Tensor,
        *,
        return_type: ReturnType = "auto",
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
    ) -> torch.Tensor | None:
        """Run the model.

        Args:
            x: images [B, C, S, S] (normalised float), or, with start_at_layer, the residual
                stream [B, P, d_model] entering that block.
            return_type: "logits" [B, n_classes]; "features" = the pooled vector after the final norm
                [B, d_model] (the class token for class-token models; [B, cfg.pooled_dim] for "flatten", "rowcol"); "embeddings" = its projection
                [B, d_proj] (CLIP); "tokens" = all tokens after the final token norm [B, P, d_model];
                "auto" = logits if the model has a head, else embeddings if it has a projection, else
                features, else tokens; None = nothing (hooks only).
            start_at_layer: first block to run (x is then a residual stream).
            stop_at_layer: run blocks [start, stop) and return the residual stream [B, P, d_model].
        """
        if start_at_layer is None:
            self.check_images(x)
            resid = self.embed_images(x)
            start = 0
        else:
            start = self._layer_bound(start_at_layer, "start_at_layer")
            expected = (self.cfg.n_tokens, self.cfg.d_model)
            if not isinstance(x, torch.Tensor) or x.ndim != 3 or tuple(x.shape[1:]) != expected:
                shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ImageInputError(
                    f"with start_at_layer, x must be a residual stream [batch, {expected[0]}, {expected[1]}], got {shape}"
                )
            resid = x
        stop = self.cfg.n_layers if stop_at_layer is None else self._layer_bound(stop_at_layer, "stop_at_layer")
        for block in self.blocks[start:stop]:
            resid = block(resid)
        if stop_at_layer is not None:
            return resid
        return self.unembed(resid, return_type)

    @contextmanager
    def hooks(
        self,
        fwd_hooks: Any = (),
        bwd_hooks: Any = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
    ) -> Iterator[Any]:
        """transformer_lens' `hooks` (used by `run_with_hooks`), with hook names checked first: an unknown
        name or layer raises HookNameError listing the closest valid names."""
        check_hook_names(self, [name for name, _ in [*fwd_hooks, *bwd_hooks]])
        with super().hooks(list(fwd_hooks), list(bwd_hooks), reset_hooks_end, clear_contexts) as model:
            yield model

    def run_with_cache(
        self,
        *model_args: Any,
        names_filter: NamesFilter = None,
        return_cache_object: bool = True,
        remove_batch_dim: bool = False,
        cache_budget: int | None = None,
        **kwargs: Any,
    ) -> tuple[Any, ActivationCache | dict[str, torch.Tensor]]:
        """Run and cache activations (detached) in a transformer_lens ActivationCache.

        names_filter=None caches every hook except the per-head `attn.hook_result` (12x the size
        of attn_out) unless `use_attn_result` is set; ask for it by name to get it regardless.
        Call under `torch.no_grad()` when no gradients are needed. The cache size is estimated first
        (`vitmech.memory`): logged when large, refused above `cache_budget` bytes (default: the budget of
        `vitmech.set_cache_budget`, else 80% of the device's free memory).
        """
        if names_filter is None and not self.use_attn_result:
            names_filter = _all_but_head_results
        elif isinstance(names_filter, tuple):
            names_filter = list(names_filter)
        check_hook_names(
            self, [names_filter] if isinstance(names_filter, str) or callable(names_filter) else names_filter or []
        )
        if model_args and isinstance(model_args[0], torch.Tensor) and model_args[0].ndim >= 1:
            from vitmech.memory import check_cache_size  # logs large caches, refuses those above the budget

            check_cache_size(self, model_args[0].shape[0], names_filter, cache_budget)
        out, cache_dict = super().run_with_cache(
            *model_args, names_filter=names_filter, remove_batch_dim=remove_batch_dim, **kwargs
        )
        if return_cache_object:
            return out, ActivationCache(cache_dict, self, has_batch_dim=not remove_batch_dim)
        return out, cache_dict


def _all_but_head_results(name: str) -> bool:
    return not name.endswith("attn.hook_result")
