"""How many pytest-xdist workers `-n auto` (pyproject's addopts) starts: one per core for folders, none for files."""

from types import SimpleNamespace

from tests.conftest import pytest_xdist_auto_num_workers


def workers(*args: str) -> int | None:
    return pytest_xdist_auto_num_workers(SimpleNamespace(args=list(args)))  # type: ignore[arg-type]


def test_named_files_and_tests_run_in_one_process():
    assert workers("tests/unit/test_worker_count.py") == 0
    assert workers("tests/unit/test_worker_count.py::test_named_files_and_tests_run_in_one_process") == 0
    assert workers("tests/unit/test_errors.py", "vitmech/batching.py") == 0


def test_the_suite_and_folders_get_xdist_default():
    assert workers() is None  # no arguments: pyproject's testpaths, the whole suite
    assert workers("tests/unit") is None
    assert workers("tests/unit/test_errors.py", "tests/property") is None
    assert workers("tests/unit/no_such_file.py") is None  # not a file: pytest reports it, xdist's default stands
