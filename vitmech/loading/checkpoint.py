"""Local weight files (safetensors or torch) in timm, HuggingFace or vitmech layout.

A file holds weights, not architecture: timm files are loaded into `timm.create_model(arch)`, HF
files into a transformers ViT built from a config, each strictly, then ported by the same
converters as `from_timm` / `from_hf`. The number of classes is read from the file, so a
fine-tuned head of any size loads. Without `arch` / `hf_config`, the standard ViT size with the
file's width, depth and patch size is assumed (and logged).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch

from vitmech.config import ViTConfig
from vitmech.errors import CheckpointMismatchError, InputTypeError, PathNotFoundError, UnknownModelError
from vitmech.loading._state import check_finite, load_strict
from vitmech.loading.families.base import Converted

logger = logging.getLogger(__name__)

Format = Literal["timm", "hf", "vitmech"]
# embed_dim -> (timm size name, heads) for the standard ViT family.
STANDARD_SIZES = {192: ("tiny", 3), 384: ("small", 6), 768: ("base", 12), 1024: ("large", 16), 1280: ("huge", 16)}
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors / .pt / .pth / .bin file; unwraps {'state_dict': ...} and 'module.' prefixes."""
    path = Path(path)
    if not path.is_file():
        raise PathNotFoundError(f"no checkpoint file at {path}")
    if path.suffix == ".safetensors":
        from vitmech.io.readers import read_safetensors

        state: Any = read_safetensors(path, what="checkpoint")
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:  # pickle errors come in many types
            raise CheckpointMismatchError(f"cannot read {path} as a torch checkpoint: {err}") from err
    for key in _CONTAINER_KEYS:
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointMismatchError(f"{path} does not hold a flat state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def detect_format(state: dict[str, torch.Tensor]) -> Format:
    keys = set(state)
    if "blocks.0.attn.W_Q" in keys:
        return "vitmech"
    if "blocks.0.attn.qkv.weight" in keys or "patch_embed.proj.weight" in keys:
        return "timm"
    if any(k.startswith(("vit.embeddings.", "embeddings.patch_embeddings.")) for k in keys):
        return "hf"
    sample = sorted(keys)[:8]
    raise CheckpointMismatchError(f"unrecognised checkpoint layout (not timm, HF or vitmech ViT); first keys: {sample}")


def _count_layers(state: dict[str, torch.Tensor], marker: str) -> int:
    idx = {int(k.split(marker)[1].split(".")[0]) for k in state if marker in k}
    return max(idx) + 1 if idx else 0


def infer_timm_arch(state: dict[str, torch.Tensor]) -> str:
    """A timm model name matching the file's width, depth, patch and image size."""
    d_model = state["cls_token"].shape[-1]
    depth = _count_layers(state, "blocks.")
    patch = state["patch_embed.proj.weight"].shape[-1]
    grid = math.isqrt(state["pos_embed"].shape[1] - 1)
    if d_model not in STANDARD_SIZES:
        raise UnknownModelError(f"width {d_model} is not a standard ViT size; pass arch=<timm model name>")
    size = STANDARD_SIZES[d_model][0]
    name = f"vit_{size}_patch{patch}_{grid * patch}"
    if size == "tiny" or (size == "small" and depth == 12 and patch == 16):
        import timm

        if not timm.is_model(name):
            name = f"deit_{size}_patch{patch}_{grid * patch}"
    logger.info("no arch given: assuming timm %s (width %d, depth %d)", name, d_model, depth)
    return name


def _timm_from_state(state: dict[str, torch.Tensor], arch: str | None) -> Converted:
    import timm

    from vitmech.loading.timm import convert_timm

    arch = arch or infer_timm_arch(state)
    n_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
    model = timm.create_model(arch, pretrained=False, num_classes=n_classes)
    load_strict(model, state, f"timm checkpoint for {arch!r}", allow_nonfinite=True)  # checked by the caller
    return convert_timm(model.eval())


def _hf_config_for(state: dict[str, torch.Tensor], hf_config: Any, near: Path) -> Any:
    from transformers import ViTConfig as HFViTConfig

    if hf_config is None and (near.parent / "config.json").is_file():
        hf_config = near.parent
    if isinstance(hf_config, HFViTConfig):
        config = hf_config
    elif isinstance(hf_config, dict):
        config = HFViTConfig(**hf_config)
    elif hf_config is not None:
        config = HFViTConfig.from_pretrained(str(hf_config))
    else:
        stripped = {(k[4:] if k.startswith("vit.") else k): v for k, v in state.items()}
        d_model = stripped["embeddings.cls_token"].shape[-1]
        if d_model not in STANDARD_SIZES:
            raise UnknownModelError(f"width {d_model} is not a standard ViT size; pass hf_config=...")
        conv = stripped["embeddings.patch_embeddings.projection.weight"]
        grid = math.isqrt(stripped["embeddings.position_embeddings"].shape[1] - 1)
        marker = "encoder.layer." if any("encoder.layer." in k for k in stripped) else "layers."
        fc1 = next(v for k, v in stripped.items() if k.endswith(("intermediate.dense.weight", "mlp.fc1.weight")))
        config = HFViTConfig(
            hidden_size=d_model,
            num_attention_heads=STANDARD_SIZES[d_model][1],
            num_hidden_layers=_count_layers(stripped, marker),
            intermediate_size=fc1.shape[0],
            patch_size=conv.shape[-1],
            image_size=grid * conv.shape[-1],
            num_channels=conv.shape[1],
        )
        logger.info("no hf_config given: assuming %d heads for width %d", config.num_attention_heads, d_model)
    n_classes = state["classifier.weight"].shape[0] if "classifier.weight" in state else 0
    config.num_labels = n_classes
    if n_classes and len(getattr(config, "id2label", {}) or {}) != n_classes:
        config.id2label = {i: f"LABEL_{i}" for i in range(n_classes)}
        config.label2id = {v: k for k, v in config.id2label.items()}
    config.architectures = ["ViTForImageClassification"] if n_classes else ["ViTModel"]
    return config


def _hf_from_state(path: Path, state: dict[str, torch.Tensor], hf_config: Any) -> Converted:
    """Build the HF model through transformers' own from_pretrained (which also renames old key layouts)."""
    from safetensors.torch import save_file

    from vitmech.loading.hf import convert_hf

    config = _hf_config_for(state, hf_config, path)
    if not any(k.startswith("vit.") for k in state) and config.num_labels:
        raise CheckpointMismatchError(f"{path}: a classifier checkpoint must prefix the encoder with 'vit.'")
    with tempfile.TemporaryDirectory(prefix="vitmech_hf_") as tmp:
        config.save_pretrained(tmp)
        save_file({k: v.contiguous() for k, v in state.items()}, str(Path(tmp) / "model.safetensors"))
        return convert_hf(tmp)


def is_timm_dir(path: Path) -> bool:
    """Whether `path` is a folder in timm's hub layout: config.json naming an architecture and its
    pretrained_cfg (transformers' config.json has neither)."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "architecture" in config and "pretrained_cfg" in config


def convert_checkpoint(
    path: str | Path,
    *,
    arch: str | None = None,
    hf_config: Any = None,
    format: Format | None = None,
    config: Any = None,
    allow_nonfinite: bool = False,
) -> Converted:
    """Load a local weight file.

    Args:
        path: .safetensors, .pt, .pth or .bin file (or a vitmech / HF directory).
        arch: timm model name for timm-layout files (e.g. "vit_base_patch16_224").
        hf_config: for HF-layout files, a transformers ViTConfig, a dict, or a directory / hub id with
            config.json (default: config.json beside the file, else the standard size).
        format: force "timm", "hf" or "vitmech" instead of detecting it from the keys.
        config: the `vitmech.ViTConfig` of a bare HookedViT state dict (torch.save(model.state_dict())).
        allow_nonfinite: load weights holding NaN or inf (refused by default, naming the tensors).
    """
    from vitmech.loading.hf import convert_hf
    from vitmech.loading.native import is_native_dir, load_native, read_native_metadata

    path = Path(path)
    if path.is_dir():
        if is_native_dir(path):
            return load_native(path, allow_nonfinite=allow_nonfinite)
        if (path / "config.json").is_file():
            if is_timm_dir(path):  # timm's hub layout (save_pretrained(format="timm"), timm.models.save_for_hf)
                import timm

                from vitmech.loading.timm import convert_timm

                return convert_timm(timm.create_model(f"local-dir:{path}", pretrained=True).eval())
            return convert_hf(path)
        raise PathNotFoundError(f"{path} is a directory without a vitmech or HuggingFace config.json")
    if path.suffix == ".safetensors" and read_native_metadata(path) is not None:
        return load_native(path, allow_nonfinite=allow_nonfinite)
    state = read_state_dict(path)
    if not allow_nonfinite:
        check_finite(state, f"checkpoint {path}")
    fmt = format or detect_format(state)
    if fmt == "timm":
        return replace(_timm_from_state(state, arch), allow_nonfinite=allow_nonfinite)
    if fmt == "hf":
        return replace(_hf_from_state(path, state, hf_config), allow_nonfinite=allow_nonfinite)
    if config is None:
        raise CheckpointMismatchError(
            f"{path} holds bare HookedViT weights: pass config=ViTConfig(...), or save with model.save_pretrained(dir)"
        )
    if not isinstance(config, ViTConfig):
        raise InputTypeError(f"config must be a vitmech.ViTConfig, got {type(config).__name__}")
    from vitmech.preprocessing import Preprocessing

    return Converted(
        config=config,
        state_dict=state,
        preprocessing=Preprocessing(image_size=config.image_size, source="vitmech default"),
        source=f"HookedViT checkpoint {path}",
        allow_nonfinite=allow_nonfinite,
    )
