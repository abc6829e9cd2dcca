"""Shared test settings: offline hubs, headless plots, one torch thread.

Most tests run tiny models, whose ops are dominated by thread hand-off: with 2 threads on a
busy 2-core machine each op can stall for a scheduler slice (observed: 60x slower). Set
VITMECH_TEST_THREADS to use more.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("VITMECH_TEST_THREADS", "1")))
