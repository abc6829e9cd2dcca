"""Where the model looked when it was wrong: confusion matrix, misclassified images ranked by confidence,
class-specific maps for the true and the predicted class, and their alignment with annotated regions.

    vitmech misclassified                                     # mini-galaxy on 256 held-out synthetic galaxies
    vitmech misclassified --model vitmech/mini-cnn --top 12
    vitmech misclassified --model path/to/model --images my_labelled_images/ --labels label
"""

from __future__ import annotations

import argparse
from typing import Any

from vitmech.cli.args import FINETUNED, add_images, add_labels, add_models, add_run

QUICK = {"n_images": 12, "top": 2, "ig_steps": 4, "batch_size": 4}
DEFAULT_METHODS = ("gradcam", "transformer_attribution", "gradient_rollout", "integrated_gradients")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_models(parser, [FINETUNED], "model: a ViT or a CNN (vitmech/mini-cnn, a timm CNN name)")
    add_images(parser, n_images=256)
    add_labels(parser)
    parser.add_argument("--top", type=int, default=8, help="misclassified images explained (most confident first)")
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help="comma-separated class-specific methods (those the model takes are used)",
    )
    parser.add_argument("--ig-steps", type=int, default=32, help="integration steps of integrated gradients")
    parser.add_argument("--batch-size", type=int, default=16, help="images per pass")
    add_run(parser)


def predictions(model: Any, x: Any, batch_size: int) -> Any:
    """Logits [N, C] of the model's input x, in batches, without gradients."""
    import torch

    from vitmech.analysis.explain import is_vit

    device = next(model.parameters()).device
    parts = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            batch = x[start : start + batch_size].to(device)
            parts.append((model(batch, return_type="logits") if is_vit(model) else model(batch)).float().cpu())
    return torch.cat(parts)


def ranked_mistakes(logits: Any, labels: Any) -> Any:
    """Misclassified images, most confident first: a frame with image, true, predicted, confidence
    (softmax probability of the prediction) and the probability given to the true class."""
    import numpy as np
    import pandas as pd

    probs = logits.softmax(-1).numpy()
    predicted = probs.argmax(-1)
    labels = np.asarray(labels)
    wrong = np.nonzero(predicted != labels)[0]
    frame = pd.DataFrame(
        {
            "image": wrong,
            "true": labels[wrong],
            "predicted": predicted[wrong],
            "confidence": probs[wrong, predicted[wrong]],
            "p_true": probs[wrong, labels[wrong]],
        }
    )
    return frame.sort_values(["confidence", "image"], ascending=[False, True], kind="stable").reset_index(drop=True)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd
    import torch

    from vitmech.analysis.explain import explain
    from vitmech.cli.args import models_from
    from vitmech.cli.outputs import study_report
    from vitmech.studies._common import model_lines, start
    from vitmech.studies.explain import (
        alignment_rows,
        load_any_model,
        load_explain_images,
        methods_for,
        model_input,
        parse_methods,
    )
    from vitmech.train.evaluate import confusion_matrix
    from vitmech.viz.explain import plot_explanations

    if args.top < 1 or args.ig_steps < 1 or args.batch_size < 1:
        args.parser.error("--top, --ig-steps and --batch-size must be positive")
    names = models_from(args)
    if len(names) != 1:
        args.parser.error("misclassified takes one --model")
    wanted = parse_methods(args)
    out = start(args)
    m = load_any_model(args, names[0])
    model = m.model
    data = load_explain_images(args)
    if data.labels is None:
        raise SystemExit("error: misclassified needs labelled images (--labels, class folders or synthetic galaxies)")
    methods = methods_for(model, wanted, class_specific_only=True)
    if not methods:
        args.parser.error(f"--methods: none of {wanted} is a class-specific method {names[0]} takes")
    class_names = list(getattr(model, "class_names", None) or data.class_names or [])
    x = model_input(model, data.rgb)
    logits = predictions(model, x, args.batch_size)
    n_classes = logits.shape[-1]
    labels = np.asarray(data.labels, dtype=np.int64)
    if labels.min() < 0 or labels.max() >= n_classes:
        raise SystemExit(f"error: labels must be class indices in [0, {n_classes}) for {names[0]}")
    name_of = (lambda i: class_names[i]) if len(class_names) == n_classes else str

    report = study_report(out, f"Misclassified images: {names[0]}", [m])
    report.add_text(f"{model_lines([m])}\n- images: {data.note}\n- methods: {', '.join(methods)}")
    confusion = confusion_matrix(torch.as_tensor(labels), logits.argmax(-1), n_classes)
    accuracy = float(np.trace(confusion) / max(1, confusion.sum()))
    labels_text = [name_of(i) for i in range(n_classes)]
    caption = (
        f"Confusion matrix (rows: true class, columns: predicted); accuracy {accuracy:.3f} on {len(labels)} images"
    )
    occurring = np.flatnonzero(confusion.sum(0) + confusion.sum(1))  # classes seen as a label or a prediction
    report.add_table(
        "confusion",
        pd.DataFrame(confusion, index=pd.Index(labels_text, name="true"), columns=labels_text).reset_index(),
        caption=caption,
        show=len(occurring) == n_classes,
    )
    if len(occurring) < n_classes:  # e.g. a 1000-class ImageNet head on a few galaxies: show what occurs
        names = [labels_text[i] for i in occurring]
        sub = confusion[np.ix_(occurring, occurring)]
        report.add_table(
            "confusion_occurring",
            pd.DataFrame(sub, index=pd.Index(names, name="true"), columns=names).reset_index(),
            caption=f"{caption}, over the {len(occurring)} of the model's {n_classes} classes that occur as a "
            "label or a prediction (the full matrix: confusion.csv)",
        )
    mistakes = ranked_mistakes(logits, labels)
    shown = mistakes.assign(true=mistakes["true"].map(name_of), predicted=mistakes["predicted"].map(name_of))
    report.add_table("misclassified", shown, caption=f"{len(mistakes)} misclassified images, most confident first")
    if len(mistakes) == 0:
        report.add_text("No image is misclassified: nothing to explain.")
        print(report.write())
        return 0
    top = mistakes.head(args.top)
    rows = top["image"].to_numpy().copy()
    rgb = [data.rgb[i] for i in rows]
    chosen = x[torch.as_tensor(rows)]
    by_class = {}
    for which in ("true", "predicted"):
        target = torch.tensor(top[which].to_numpy())
        by_class[which] = explain(
            model, chosen, methods, target, batch_size=args.batch_size, ig_steps=args.ig_steps, random_weights=m.random
        )
    titles = [
        f"#{int(r)} {name_of(int(t))} -> {name_of(int(p))}\n({c:.2f})"
        for r, t, p, c in zip(rows, top["true"], top["predicted"], top["confidence"])
    ]
    report.add_figure(
        "misclassified_maps",
        plot_explanations(
            rgb,
            {"true class": by_class["true"], "predicted class": by_class["predicted"]},
            row_titles=titles,
        ),
        caption="The most confidently misclassified images (true -> predicted, confidence): each method's map "
        "for the true class and for the predicted class; one colour scale per column.",
    )
    if data.regions is not None:
        regions = data.regions.subset(rows)
        parts = [
            alignment_rows(ex.maps, regions, names[0], {"explained_class": which}) for which, ex in by_class.items()
        ]
        table = pd.concat(parts, ignore_index=True)
        table["image"] = rows[table["image"].to_numpy()]
        report.add_table("alignment", table, caption="Alignment of each map with each annotated region", show=False)
        union = table[table["region"] == "union"]
        summary = union.groupby(["method", "explained_class"], sort=False)[["iou", "energy", "pointing"]]
        result = summary.mean().reset_index()
        result["n_images"] = len(rows)
        result["area_share"] = float(union["area_share"].mean())
        report.add_table(
            "alignment_summary",
            result,
            caption=f"Mean alignment with the union of bar, arms and bulge over the {len(rows)} images shown "
            "(descriptive; the area share is the chance level of energy and pointing)",
        )
    report.add_json(
        "summary",
        {"accuracy": accuracy, "n_images": len(labels), "n_misclassified": len(mistakes), "methods": methods},
    )
    print(report.write())
    return 0
