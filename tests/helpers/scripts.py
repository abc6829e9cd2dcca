"""Import an experiment script as a module, so tests call its main(argv) in-process."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def load_experiment(filename: str) -> ModuleType:
    """experiments/<filename> (".py" optional) as a fresh module."""
    path = EXPERIMENTS / (filename if filename.endswith(".py") else f"{filename}.py")
    spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
