"""Under ``CI=true`` a skipped test is a failure, except in the tiers CI cannot have.

A tier that skips because a tool is missing (promtool, the Prometheus server, node/npm, vLLM)
would otherwise pass CI silently; ``bin/setup`` installs every such tool, so on CI a skip means a
broken set-up. Only tests marked ``cluster`` (a real Kubernetes cluster) or ``gpu`` (an
accelerator) may skip there. Expected failures (``xfail``) are not skips and are left alone.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

MAY_SKIP_ON_CI = ("cluster", "gpu")


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr: Any = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not _on_ci() or not report.skipped or hasattr(report, "wasxfail"):
        return
    if any(item.get_closest_marker(name) is not None for name in MAY_SKIP_ON_CI):
        return
    reason = _skip_reason(report)
    report.outcome = "failed"
    report.longrepr = (
        f"skipped under CI=true: {reason}\n"
        "CI must run every required tier: install what it needs in bin/setup, or mark the test "
        f"{' or '.join(MAY_SKIP_ON_CI)} if it truly needs a real cluster or an accelerator"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.CollectReport = outcome.get_result()
    if not _on_ci() or not report.skipped:
        return
    marks = {m.name for m in getattr(collector, "own_markers", [])}
    if marks & set(MAY_SKIP_ON_CI):
        return
    reason = _skip_reason(report)
    report.outcome = "failed"
    report.longrepr = f"module skipped under CI=true: {reason}\nCI must run every required tier: fix bin/setup"
