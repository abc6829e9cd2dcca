"""Port checks shared by the family tests: a seeded random source model, ported through the public loaders,
matches the source on its output and every block's output, on both attention paths, at batch 1 and 3;
its export through the family's key map gives the source's weights back exactly."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from tests.helpers.models import randomize_source_, seeded_images
from vitmech import HookedViT
from vitmech.loading import export_state_dict
from vitmech.loading.families import family_for

TOL = 1e-4


@torch.no_grad()
def block_outputs(
    layers: nn.ModuleList, reference: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    outputs: list[torch.Tensor] = []

    def keep(module, inputs, output):
        outputs.append(output[0] if isinstance(output, (tuple, list)) else output)

    handles = [layer.register_forward_hook(keep) for layer in layers]
    try:
        out = reference(x)
    finally:
        for h in handles:
            h.remove()
    return out, outputs


def check_port(
    source: nn.Module,
    hooked: HookedViT,
    layers: nn.ModuleList,
    reference: Callable[[torch.Tensor], torch.Tensor],
    *,
    return_type: str = "auto",
    image_size: int | None = None,
    batches: tuple[int, ...] = (1, 3),
    seed: int = 2,
) -> None:
    """hooked(x) == reference(x) and every block's output == the source's, fused and explicit, per batch size."""
    size = image_size or hooked.cfg.image_size
    for batch in batches:
        x = seeded_images(batch, size, channels=hooked.cfg.n_channels, seed=seed + batch)
        ref, ref_blocks = block_outputs(layers, reference, x)
        assert len(ref_blocks) == hooked.cfg.n_layers
        assert ref.abs().max() > 0.1, "test weights should give O(1) outputs"
        for backend in ("auto", "explicit"):
            hooked.set_attention_backend(backend)  # type: ignore[arg-type]
            with torch.no_grad():
                out, cache = hooked.run_with_cache(
                    x, return_type=return_type, names_filter=lambda n: n.endswith("hook_resid_post")
                )
            hooked.set_attention_backend("auto")
            assert out.shape == ref.shape, (out.shape, ref.shape)
            assert (out - ref).abs().max() <= TOL, (backend, batch, (out - ref).abs().max())
            for layer, block_ref in enumerate(ref_blocks):
                err = (cache["resid_post", layer] - block_ref).abs().max()
                assert err <= TOL, (backend, batch, layer, err)


def check_export_round_trip(
    source: nn.Module, hooked: HookedViT, source_name: str, left_out: tuple[str, ...] = ()
) -> None:
    """The family's key map read backwards gives the source weights exactly; read forwards again, the same model."""
    family = family_for(source, source_name)
    own = {k: v for k, v in source.state_dict().items() if not k.endswith(left_out) or not left_out}
    exported = export_state_dict(hooked, family, list(own))
    assert set(exported) == set(own), (sorted(set(own) ^ set(exported)))[:10]
    assert all(torch.equal(exported[k], own[k]) for k in own)
    from vitmech.loading.keymap import import_weights

    again = import_weights(exported, family.key_map(hooked.cfg, list(exported)), "round trip")
    mine = hooked.state_dict()
    assert set(again) == set(mine)
    assert all(torch.equal(again[k], mine[k]) for k in mine)


def randomized(model: nn.Module, seed: int = 1) -> nn.Module:
    return randomize_source_(model, seed=seed).eval()
