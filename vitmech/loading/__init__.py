"""Loading ViTs from timm, HuggingFace, local files and the shipped zoo; exporting back."""

from vitmech.loading.checkpoint import hooked_vit_from_checkpoint, read_state_dict
from vitmech.loading.export import hf_state_dict, timm_state_dict, to_hf, to_timm
from vitmech.loading.hf import hooked_vit_from_hf
from vitmech.loading.native import load_native, save_native
from vitmech.loading.registry import load_pretrained, zoo_models
from vitmech.loading.timm import hooked_vit_from_timm

__all__ = [
    "hf_state_dict",
    "hooked_vit_from_checkpoint",
    "hooked_vit_from_hf",
    "hooked_vit_from_timm",
    "load_native",
    "load_pretrained",
    "read_state_dict",
    "save_native",
    "timm_state_dict",
    "to_hf",
    "to_timm",
    "zoo_models",
]
