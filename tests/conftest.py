"""The test session on several pytest-xdist workers (pyproject's `-n auto --dist loadgroup`), its costly shared state
on one worker each.

Every test runs on the worker of its group: a module's tests on one worker (so its module-scoped fixtures are built
once), and every module that trains in the session's shared torchrun jobs (tests/executor_jobs.py, which runs all of
them the first time any module asks) on one worker together, so the jobs run once per session. `-n 0` runs the
session in this process (the groups are then plain marks).
"""

import os

import pytest

MAX_WORKERS = 4  # (each worker's tests start up to 4 ranks of their own: more workers only contend for the cores)


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: a worker per core this process may run on, at most MAX_WORKERS."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores))


@pytest.hookimpl(tryfirst=True)  # (before xdist's own hook, which reads the groups)
def pytest_collection_modifyitems(items):
    for item in items:
        module = getattr(item, "module", None)
        uses_jobs = module is not None and hasattr(module, "executor_jobs")
        item.add_marker(pytest.mark.xdist_group("executor-jobs" if uses_jobs else item.nodeid.split("::")[0]))
