"""Training-cost ratios of the fine-tuning tiers on the embedded 12 x 12-head architecture (one run, ratios only).

Measures, on the same batches and the same machine state (interleaved repeats, median):
- LoRA (rank 8 on q, v) training step / full fine-tuning step;
- linear probe on cached features (whole run) / linear probe through the frozen backbone (whole run),
  after checking both give the same head (allclose);
- LoRA merged forward / LoRA unmerged forward, after checking equal logits;
- explicit-softmax attention / fused SDPA, training step of the full tier.

    python benchmarks/train.py                # 224 px, batch 8
    python benchmarks/train.py --size 112 --batch 16 --repeats 5

The last line printed is a JSON object of the ratios.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from vitmech.data.procedural import PROCEDURAL_CLASSES, generate_procedural  # noqa: E402
from vitmech.train import ArrayDataset, TierConfig, TrainConfig, fine_tune, merge_lora, prepare_tier  # noqa: E402
from vitmech.train.data import to_model_input  # noqa: E402
from vitmech.train.loop import task_loss  # noqa: E402
from vitmech.train.mini import mini_vit  # noqa: E402


def step_seconds(model, groups, x, y) -> float:
    optimizer = torch.optim.AdamW(groups)
    t = time.perf_counter()
    loss = task_loss(model(x), y, "classification")
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    scenes = generate_procedural(args.batch * 4, seed=0, size=args.size)
    data = ArrayDataset(
        torch.from_numpy(scenes.images), torch.from_numpy(scenes.labels), list(PROCEDURAL_CLASSES), "classification"
    )
    base = mini_vit(len(PROCEDURAL_CLASSES), PROCEDURAL_CLASSES, image_size=args.size)
    x = to_model_input(data.images[: args.batch], base.preprocessing)
    y = data.targets[: args.batch]

    full = copy.deepcopy(base)
    full_groups = prepare_tier(full, TierConfig("full"))
    lora = copy.deepcopy(base)
    lora_groups = prepare_tier(lora, TierConfig("lora"))
    explicit = copy.deepcopy(base)
    explicit.set_attention_backend("explicit")
    explicit_groups = prepare_tier(explicit, TierConfig("full"))
    times: dict[str, list[float]] = {"full": [], "lora": [], "explicit": []}
    for _ in range(args.repeats + 1):  # first round warms up
        times["full"].append(step_seconds(full, full_groups, x, y))
        times["lora"].append(step_seconds(lora, lora_groups, x, y))
        times["explicit"].append(step_seconds(explicit, explicit_groups, x, y))
    med = {k: statistics.median(v[1:]) for k, v in times.items()}

    # LoRA merged vs unmerged forward (equal outputs first)
    lora.eval()
    with torch.no_grad():
        for param in lora.parameters():
            if param.ndim == 2 and param.shape[0] == 8:  # B matrices: give the adapters a non-zero update
                param.normal_(0, 0.05)
        unmerged_out = lora(x)
        fwd_unmerged = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            lora(x)
            fwd_unmerged.append(time.perf_counter() - t)
        merged = merge_lora(copy.deepcopy(lora))
        assert torch.allclose(merged(x), unmerged_out, atol=1e-4), "merged LoRA differs from unmerged"
        fwd_merged = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            merged(x)
            fwd_merged.append(time.perf_counter() - t)

    # linear probe: cached features vs the generic loop through the frozen backbone (same head)
    probe_cfg = TrainConfig(steps=16, batch_size=args.batch, clip_norm=None)  # 4 epochs over the 4 batches
    runs = {}
    for cached in (True, False):
        t = time.perf_counter()
        result = fine_tune(
            base, data, TierConfig("linear_probe", head_lr=1e-2), probe_cfg, cache_features=cached, progress=False
        )
        runs[cached] = (time.perf_counter() - t, result.model.head.W_H.detach())
    assert torch.allclose(runs[True][1], runs[False][1], atol=1e-5), (
        "cached-feature probe differs from the generic loop"
    )

    ratios = {
        "lora_step_over_full_step": med["lora"] / med["full"],
        "explicit_attention_step_over_sdpa_step": med["explicit"] / med["full"],
        "lora_merged_forward_over_unmerged": statistics.median(fwd_merged) / statistics.median(fwd_unmerged),
        "probe_cached_features_over_generic_loop": runs[True][0] / runs[False][0],
        "image_size": args.size,
        "batch": args.batch,
        "threads": args.threads,
    }
    for key, value in ratios.items():
        print(f"{key:>42}: {value:.3f}" if isinstance(value, float) else f"{key:>42}: {value}")
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
