"""A pytest plugin (loaded by conftest.py): under CI (`CI=true`), tests that must run there cannot be skipped.

A test marked with one of MUST_RUN_UNDER_CI needs a part of the install that a skip would hide (a browser,
a vector database); in CI such a skip is turned into a failure, so a broken install cannot pass green.
A whole test module skipped while it is collected (`pytest.importorskip` at the top) fails too, whatever
its markers: its markers cannot be known when it cannot even be imported. Elsewhere skips stay skips.
"""

from __future__ import annotations

import os

import pytest

#: markers of tests that must not be skipped under CI
MUST_RUN_UNDER_CI = ("browser", "milvus")


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    reason = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    if report.skipped and under_ci() and not hasattr(report, "wasxfail"):
        markers = sorted({mark.name for mark in item.iter_markers()} & set(MUST_RUN_UNDER_CI))
        if markers:
            report.outcome = "failed"
            report.longrepr = f"skipped under CI, where {'/'.join(markers)} tests must run: {_reason(report)}"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    report = yield
    if report.skipped and under_ci() and isinstance(collector, pytest.Module):
        report.outcome = "failed"
        report.longrepr = f"test module skipped under CI: {_reason(report)}"
    return report
