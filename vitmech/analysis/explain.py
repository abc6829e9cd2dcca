"""One call, many explanation maps: `explain(model, images, methods, target)` -> maps on the image grid.

Works on a HookedViT and on any timm CNN (e.g. `vitmech.train.cnn.load_cnn("vitmech/mini-cnn")`). Every map
is [batch, H, W] float on the input's pixel grid (token-grid maps are upsampled bilinearly). Definitions
and sources: docs/explanations.md.

    ex = explain(model, images, ["rollout", "gradcam", "transformer_attribution", "integrated_gradients"])
    ex.maps["gradcam"]            # [B, H, W]
    ex.targets                    # [B] the class each class-specific map explains

Methods (HookedViT: all; CNN: Grad-CAM family, integrated gradients, saliency):
- "cls_attention": last layer, readout query's attention over the patches, mean over heads (vitmech's own).
- "rollout", "gradient_rollout", "gmar": `vitmech.analysis.rollout` (Abnar & Zuidema 2020; Chefer et al.
  2021 arXiv 2103.15679; GMAR arXiv 2504.19414).
- "gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "eigencam": the `grad-cam` package
  (pytorch_grad_cam) itself. ViTs: target layer the last block's ln1, with a reshape of its patch tokens
  onto the grid (`vit_reshape_transform`, prefix tokens dropped through `vitmech.tokens`); CNNs: the last
  feature stage (timm `feature_info`). Maps are the package's: ReLU, min-max scaled per image, resized.
- "transformer_attribution", "attention_gradcam": Chefer et al. 2021 (arXiv 2012.09838), see
  `vitmech.analysis.explain_lrp`.
- "integrated_gradients" (Sundararajan et al. 2017), "saliency" (Simonyan et al. 2014): captum's
  `IntegratedGradients` (black-image baseline, summed over channels) and `Saliency` (|gradient|, max over
  channels).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor, nn

from vitmech.analysis.rollout import RolloutSettings, Target, _target_values
from vitmech.errors import InputError
from vitmech.tokens import TokenLayout, token_layout

if TYPE_CHECKING:
    import pandas as pd

    from vitmech.model.hooked_vit import HookedViT

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Method:
    """name, whether it explains a class (uses the target), which models it takes, and its source."""

    name: str
    class_specific: bool
    vit_only: bool
    source: str


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("cls_attention", False, True, "vitmech: last-layer readout attention, mean over heads"),
        Method("rollout", False, True, "Abnar & Zuidema 2020, arXiv 2005.00928"),
        Method("gradient_rollout", True, True, "Chefer et al. 2021, arXiv 2103.15679"),
        Method("gmar", True, True, "GMAR, arXiv 2504.19414"),
        Method("gradcam", True, False, "Selvaraju et al. 2017, arXiv 1610.02391 (grad-cam package)"),
        Method("gradcam++", True, False, "Chattopadhay et al. 2018, arXiv 1710.11063 (grad-cam package)"),
        Method("hirescam", True, False, "Draelos & Carin 2020, arXiv 2011.08891 (grad-cam package)"),
        Method("xgradcam", True, False, "Fu et al. 2020, arXiv 2008.02312 (grad-cam package)"),
        Method("layercam", True, False, "Jiang et al. 2021 (grad-cam package)"),
        Method("eigencam", False, False, "Muhammad & Yeasin 2020, arXiv 2008.00299 (grad-cam package)"),
        Method("transformer_attribution", True, True, "Chefer et al. 2021, arXiv 2012.09838 (LRP)"),
        Method("attention_gradcam", True, True, "Chefer et al. 2021, arXiv 2012.09838 (baseline)"),
        Method("integrated_gradients", True, False, "Sundararajan et al. 2017, arXiv 1703.01365 (captum)"),
        Method("saliency", True, False, "Simonyan et al. 2014, arXiv 1312.6034 (captum)"),
    )
}
GRADCAM_METHODS = ("gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "eigencam")
VIT_DEFAULT = (
    "cls_attention",
    "rollout",
    "gradient_rollout",
    "gmar",
    "gradcam",
    "attention_gradcam",
    "transformer_attribution",
    "integrated_gradients",
    "saliency",
)
CNN_DEFAULT = ("gradcam", "gradcam++", "integrated_gradients", "saliency")


@dataclass
class Explanation:
    """Maps of one model on one batch of images.

    Attributes:
        maps: method -> [batch, H, W] float32 on the input's pixel grid.
        targets: [batch] the class each class-specific map explains.
        logits: [batch, n_classes] the model's outputs.
        methods: the Method of each map.
        class_names: the model's class names (None if unknown).
        random_weights: whether the model has random weights (stamped on figures).
        settings: the choices (IG steps, Grad-CAM layer, rollout settings).
    """

    maps: dict[str, Float[Tensor, "batch height width"]]
    targets: Int[Tensor, " batch"]
    logits: Float[Tensor, "batch classes"]
    methods: dict[str, Method]
    class_names: list[str] | None = None
    random_weights: bool = False
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def predicted(self) -> Int[Tensor, " batch"]:
        return self.logits.argmax(-1)

    @property
    def probabilities(self) -> Float[Tensor, "batch classes"]:
        return self.logits.float().softmax(-1)

    def class_name(self, index: int) -> str:
        return self.class_names[index] if self.class_names else str(index)

    def to_frame(self) -> pd.DataFrame:
        """One row per image and method: target, prediction, and the map's min / max / mean."""
        import pandas as pd

        rows = []
        for name, maps in self.maps.items():
            for b in range(maps.shape[0]):
                rows.append(
                    {
                        "image": b,
                        "method": name,
                        "class_specific": self.methods[name].class_specific,
                        "target": self.class_name(int(self.targets[b])),
                        "predicted": self.class_name(int(self.predicted[b])),
                        "min": float(maps[b].min()),
                        "max": float(maps[b].max()),
                        "mean": float(maps[b].mean()),
                    }
                )
        return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------- helpers


def is_vit(model: nn.Module) -> bool:
    from vitmech.model.hooked_vit import HookedViT

    return isinstance(model, HookedViT)


def to_image_grid(maps: Float[Tensor, "batch gh gw"], size: tuple[int, int]) -> Float[Tensor, "batch height width"]:
    """Bilinear upsampling of grid maps to the image's pixels (align_corners=False)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps.float()
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def vit_reshape_transform(layout: TokenLayout) -> Callable[[Tensor], Tensor]:
    """grad-cam's reshape_transform for a ViT: activations [B, P, d] -> the patch tokens as [B, d, gh, gw]
    (class, distillation and register tokens dropped through the layout)."""
    gh, gw = layout.grid

    def reshape(tensor: Tensor) -> Tensor:
        return rearrange(layout.patches(tensor, 1), "b (gh gw) d -> b d gh gw", gh=gh, gw=gw)

    return reshape


def cnn_target_layer(model: nn.Module) -> nn.Module:
    """The last feature stage of a timm CNN (its `feature_info`), the usual Grad-CAM layer."""
    info = getattr(model, "feature_info", None)
    if info:
        last = info[-1]["module"] if isinstance(info, list) else info.module_name()[-1]
        return model.get_submodule(last)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise InputError(f"cannot find a convolutional layer for Grad-CAM in {type(model).__name__}; pass layer=")
    return convs[-1]


def _logits(model: nn.Module, x: Tensor) -> Tensor:
    return model(x, return_type="logits") if is_vit(model) else model(x)


def _input_black(model: nn.Module, images: Tensor) -> Tensor:
    """The normalised input of a black image (IG's baseline): (0 - mean) / std per channel."""
    pre = getattr(model, "preprocessing", None)
    if pre is None or len(pre.mean) != images.shape[1]:
        return torch.zeros_like(images)
    mean = torch.tensor(pre.mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(pre.std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return ((0 - mean) / std).expand_as(images).contiguous()


def resolve_methods(model: nn.Module, methods: Sequence[str] | None) -> list[str]:
    vit = is_vit(model)
    chosen = list(methods) if methods is not None else list(VIT_DEFAULT if vit else CNN_DEFAULT)
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        raise InputError(f"unknown explanation methods {unknown}; choose from {sorted(METHODS)}")
    if not vit:
        attention = [m for m in chosen if METHODS[m].vit_only]
        if attention:
            raise InputError(
                f"methods {attention} read attention and need a HookedViT; a CNN takes {sorted(m for m in METHODS if not METHODS[m].vit_only)}"
            )
    return chosen


# ----------------------------------------------------------------------------------------- the methods


def gradcam_maps(
    model: nn.Module,
    images: Float[Tensor, "batch channel height width"],
    targets: Int[Tensor, " batch"],
    method: str = "gradcam",
    layer: nn.Module | None = None,
) -> Float[Tensor, "batch height width"]:
    """A Grad-CAM-family map from the grad-cam package (its own min-max scaling and resize to the input)."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    classes = {
        "gradcam": pytorch_grad_cam.GradCAM,
        "gradcam++": pytorch_grad_cam.GradCAMPlusPlus,
        "hirescam": pytorch_grad_cam.HiResCAM,
        "xgradcam": pytorch_grad_cam.XGradCAM,
        "layercam": pytorch_grad_cam.LayerCAM,
        "eigencam": pytorch_grad_cam.EigenCAM,
    }
    if method not in classes:
        raise InputError(f"unknown Grad-CAM method {method!r}; choose from {sorted(classes)}")
    if is_vit(model):
        wrapped: nn.Module = _LogitsOf(model)
        target_layer = layer if layer is not None else cast("HookedViT", model).blocks[-1].ln1
        reshape = vit_reshape_transform(token_layout(model))
    else:
        wrapped, target_layer, reshape = model, layer if layer is not None else cnn_target_layer(model), None
    was_training = model.training
    with (
        torch.enable_grad(),
        classes[method](model=wrapped, target_layers=[target_layer], reshape_transform=reshape) as cam,
    ):
        out = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    model.train(was_training)
    return torch.from_numpy(out).float()


class _LogitsOf(nn.Module):
    """A HookedViT as a plain images -> logits module (what grad-cam and captum call)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x, return_type="logits")


def captum_maps(
    model: nn.Module,
    images: Float[Tensor, "batch channel height width"],
    targets: Int[Tensor, " batch"],
    method: str,
    ig_steps: int = 32,
) -> Float[Tensor, "batch height width"]:
    """Integrated gradients (black-image baseline, summed over channels) or saliency (|gradient|, max over
    channels), computed by captum."""
    from captum.attr import IntegratedGradients, Saliency

    forward = _LogitsOf(model) if is_vit(model) else model
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        if method == "integrated_gradients":
            attributions = IntegratedGradients(forward).attribute(
                x, baselines=_input_black(model, images), target=targets, n_steps=ig_steps, internal_batch_size=len(x)
            )
            return attributions.detach().sum(1).float()
        if method == "saliency":
            return Saliency(forward).attribute(x, target=targets, abs=True).detach().amax(1).float()
    raise InputError(f"unknown captum method {method!r}; choose 'integrated_gradients' or 'saliency'")


def _token_grid(layout: TokenLayout, values: Float[Tensor, "batch patch"]) -> Float[Tensor, "batch gh gw"]:
    gh, gw = layout.grid
    return rearrange(values, "b (gh gw) -> b gh gw", gh=gh, gw=gw)


def attention_maps(
    model: HookedViT,
    images: Float[Tensor, "batch channel height width"],
    targets: Int[Tensor, " batch"],
    methods: Sequence[str],
    rollout_settings: RolloutSettings | None = None,
) -> dict[str, Float[Tensor, "batch gh gw"]]:
    """The attention-based maps (CLS attention, rollout, gradient rollout, GMAR) on the patch grid."""
    from vitmech.analysis.attention import cls_attention
    from vitmech.analysis.rollout import READOUT, attention_gradients, gmar, gradient_rollout, rollout

    layout = token_layout(model)
    out: dict[str, Tensor] = {}
    if not {"cls_attention", "rollout", "gradient_rollout", "gmar"} & set(methods):
        return out
    grads = attention_gradients(model, images, targets, progress=False)
    settings = rollout_settings or RolloutSettings()
    if "cls_attention" in methods:
        out["cls_attention"] = _token_grid(layout, cls_attention(grads.patterns[:, -1], layout=layout).mean(1))
    if "rollout" in methods:
        result = rollout(
            grads.patterns, settings.alpha, settings.head_fusion, settings.discard_ratio, [READOUT], layout
        )
        out["rollout"] = _token_grid(layout, result.map())
    if "gradient_rollout" in methods:
        out["gradient_rollout"] = _token_grid(
            layout, gradient_rollout(grads.patterns, grads.gradients, [READOUT], layout).map()
        )
    if "gmar" in methods:
        result = gmar(grads.patterns, grads.gradients, alpha=settings.alpha, tokens=[READOUT], layout=layout)
        out["gmar"] = _token_grid(layout, result.map())
    return out


# ----------------------------------------------------------------------------------------- explain


def explain(
    model: nn.Module,
    images: Float[Tensor, "batch channel height width"],
    methods: Sequence[str] | None = None,
    target: Target = None,
    *,
    batch_size: int = 8,
    ig_steps: int = 32,
    gradcam_layer: nn.Module | None = None,
    rollout_settings: RolloutSettings | None = None,
    random_weights: bool | None = None,
) -> Explanation:
    """Maps of `methods` for `images` (the model's normalised input [B, C, H, W]) on the [H, W] pixel grid.

    Args:
        model: a HookedViT, or a CNN returning logits (timm; `vitmech.train.cnn.load_cnn`).
        methods: names from METHODS (default: VIT_DEFAULT or CNN_DEFAULT).
        target: the class the class-specific maps explain: None (each image's predicted class), an int, or
            a [batch] tensor of class indices.
        batch_size: images per pass (the LRP and Grad-CAM passes keep every layer's activations).
        ig_steps: integration steps of integrated gradients.
        gradcam_layer: the Grad-CAM layer (default: a ViT's last ln1, a CNN's last feature stage).
        rollout_settings: alpha, head fusion and discard ratio of rollout and GMAR (default RolloutSettings()).
        random_weights: stamp figures "random weights" (default: read from the model's card).
    Returns:
        Explanation (maps float32 on the CPU).
    """
    from vitmech.analysis.explain_lrp import attention_gradcam, transformer_attribution

    chosen = resolve_methods(model, methods)
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise InputError(
            f"images must be a float tensor [batch, channel, height, width], got {getattr(images, 'shape', images)!r}"
        )
    if callable(target):
        raise InputError("target must be None, an int or a [batch] tensor of class indices")
    device = next(model.parameters()).device
    images = images.to(device)
    was_training = model.training
    model.eval()
    size = (images.shape[-2], images.shape[-1])
    parts: dict[str, list[Tensor]] = {m: [] for m in chosen}
    all_targets, all_logits = [], []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size]
        with torch.no_grad():
            logits = _logits(model, batch)
        batch_target = target[start : start + batch_size] if isinstance(target, Tensor) else target
        _, index = _target_values(logits, batch_target)
        assert index is not None
        all_targets.append(index.cpu())
        all_logits.append(logits.float().cpu())
        grid_maps: dict[str, Tensor] = {}
        if is_vit(model):
            grid_maps.update(attention_maps(model, batch, index, chosen, rollout_settings))  # type: ignore[arg-type]
            if "transformer_attribution" in chosen:
                grid_maps["transformer_attribution"] = transformer_attribution(model, batch, index)  # type: ignore[arg-type]
            if "attention_gradcam" in chosen:
                grid_maps["attention_gradcam"] = attention_gradcam(model, batch, index)  # type: ignore[arg-type]
        for name in chosen:
            if name in grid_maps:
                parts[name].append(to_image_grid(grid_maps[name].detach(), size).cpu())
            elif name in GRADCAM_METHODS:
                parts[name].append(gradcam_maps(model, batch, index, name, gradcam_layer))
            elif name in ("integrated_gradients", "saliency"):
                parts[name].append(captum_maps(model, batch, index, name, ig_steps).cpu())
    model.train(was_training)
    card = getattr(model, "card", {}) or {}
    random = bool(card.get("random_init", False)) if random_weights is None else random_weights
    return Explanation(
        maps={name: torch.cat(p) for name, p in parts.items()},
        targets=torch.cat(all_targets),
        logits=torch.cat(all_logits),
        methods={name: METHODS[name] for name in chosen},
        class_names=list(getattr(model, "class_names", None) or []) or None,
        random_weights=random,
        settings={
            "ig_steps": ig_steps,
            "ig_baseline": "black image",
            "gradcam_layer": "given"
            if gradcam_layer is not None
            else ("last block ln1" if is_vit(model) else "last feature stage"),
            "rollout": (rollout_settings or RolloutSettings()).to_dict(),
            "upsampling": "bilinear, align_corners=False",
        },
    )


__all__ = [
    "CNN_DEFAULT",
    "GRADCAM_METHODS",
    "METHODS",
    "VIT_DEFAULT",
    "Explanation",
    "Method",
    "attention_maps",
    "captum_maps",
    "cnn_target_layer",
    "explain",
    "gradcam_maps",
    "to_image_grid",
    "vit_reshape_transform",
]
