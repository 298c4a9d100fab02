"""Suite-wide rules: in CI (FLEET_REQUIRE_REAL_PARTS=1) a skipped test fails the run.

Every suite skips with a visible reason when a real part (mosquitto, valgrind,
the kube-apiserver binaries) is missing on a developer machine; in CI those
parts are installed, so a skip there means a test silently did not run.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_REAL_PARTS = os.environ.get("FLEET_REQUIRE_REAL_PARTS") == "1"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not REQUIRE_REAL_PARTS:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped and exitstatus == 0:
        reporter.write_line(
            f"FLEET_REQUIRE_REAL_PARTS=1: {len(skipped)} test(s) were skipped; in CI every test must run.",
            red=True,
        )
        session.exitstatus = 1
