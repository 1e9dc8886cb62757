"""A pytest plugin that keeps the suite's disk to one module's files: the folders a module's fixtures made
(``tmp_path_factory.mktemp``) go when its last test ends, unless one of its tests failed (they stay for the reader,
as a failing test's own folder does under ``tmp_path_retention_policy = "failed"``)."""

import os
import shutil
from pathlib import Path

import pytest

# module -> (the base folder's entries before its first test, whether one of its tests failed)
_MODULES: dict[str, tuple[set[str], list[bool]]] = {}


def _module(item) -> str:
    return item.nodeid.split("::")[0]


def _basetemp(item) -> Path:
    return item.config._tmp_path_factory.getbasetemp()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    if _module(item) not in _MODULES:
        _MODULES[_module(item)] = (set(os.listdir(_basetemp(item))), [False])
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if outcome.get_result().failed and _module(item) in _MODULES:
        _MODULES[_module(item)][1][0] = True


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield  # a module's fixtures are finalised in its last test's teardown
    if nextitem is not None and _module(nextitem) == _module(item):
        return
    before, failed = _MODULES.get(_module(item), (None, [True]))
    if before is None or failed[0]:
        return
    for name in set(os.listdir(_basetemp(item))) - before:
        shutil.rmtree(_basetemp(item) / name, ignore_errors=True)
