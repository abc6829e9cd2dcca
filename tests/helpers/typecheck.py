"""Runtime type checks (jaxtyping shapes through beartype, on in the default test run) switched off for a block.

For tests that pass wrongly-typed values on purpose to test vitmech's own validation: what a caller without
runtime checking gets.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jaxtyping


@contextlib.contextmanager
def runtime_checks_off() -> Iterator[None]:
    before = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", before)
