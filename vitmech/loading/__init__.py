"""Loading ViTs from timm, HuggingFace, open_clip, local files and the shipped zoo; exporting back.

Converters return a `Converted` (config, state dict, preprocessing, class names); `HookedViT.from_*`
builds the model. Nothing here imports `HookedViT`.
"""

from vitmech.loading.checkpoint import convert_checkpoint, read_state_dict
from vitmech.loading.export import export_state_dict, hf_state_dict, timm_state_dict, to_hf, to_timm
from vitmech.loading.families import FAMILIES, Converted, Family
from vitmech.loading.hf import convert_hf
from vitmech.loading.native import load_native, save_native
from vitmech.loading.registry import load_pretrained, zoo_models
from vitmech.loading.timm import convert_timm

__all__ = [
    "FAMILIES",
    "Converted",
    "Family",
    "convert_checkpoint",
    "convert_hf",
    "convert_timm",
    "export_state_dict",
    "hf_state_dict",
    "load_native",
    "load_pretrained",
    "read_state_dict",
    "save_native",
    "timm_state_dict",
    "to_hf",
    "to_timm",
    "zoo_models",
]
