"""LoRA (and other peft) adapters on timm or HuggingFace base models, merged before conversion.

`merged(model, adapter)` returns a merged copy of the base model (the caller's model is not changed): from a
`peft.PeftModel`, or from a base model plus the directory `PeftModel.save_pretrained` wrote. The families
then port it like any other source model; the adapter's update W + (alpha / r) B A is in the weights.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from vitmech.errors import CheckpointMismatchError, InputTypeError, PathNotFoundError


def is_peft_model(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def merged(model: Any, adapter: str | Path | None = None) -> Any:
    """A copy of `model` with its peft adapter merged in (`model` itself when there is none).

    model: a peft.PeftModel, or a base model (then `adapter` is the adapter directory to load onto a copy).
    """
    if is_peft_model(model):
        if adapter is not None:
            raise InputTypeError("the model already carries a peft adapter; pass adapter=None")
        return copy.deepcopy(model).merge_and_unload()
    if adapter is None:
        return model
    from peft import PeftModel

    path = Path(adapter)
    if not (path / "adapter_config.json").is_file():
        raise PathNotFoundError(
            f"no peft adapter at {path} (expected adapter_config.json from PeftModel.save_pretrained)"
        )
    try:
        wrapped = PeftModel.from_pretrained(copy.deepcopy(model), str(path))
    except (KeyError, ValueError, RuntimeError) as err:
        raise CheckpointMismatchError(f"the peft adapter at {path} does not fit this base model: {err}") from err
    return wrapped.merge_and_unload()
