"""Runtime type checks (jaxtyping shapes through beartype, on in the default test run) switched off for a block.

For tests that pass wrongly-typed values on purpose to test vitmech's own validation: what a caller without
runtime checking gets.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jaxtyping
from beartype import BeartypeConf, beartype

beartype_tower = beartype(conf=BeartypeConf(is_pep484_tower=True))
"""The runtime checker of the default test run: beartype with PEP 484's numeric tower (an int passes for a float)."""


@contextlib.contextmanager
def runtime_checks_off() -> Iterator[None]:
    before = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", before)
