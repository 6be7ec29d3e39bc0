"""The session's ReliabilityLog: every campaign records into it, and it is written as JSON
to $OFFLINE_SSLD_RELIABILITY_JSON (set by tests/make_reliability_report.py) at the end."""

from __future__ import annotations

import os

import pytest

from tests.reliability.log import ReliabilityLog


@pytest.fixture(scope="session")
def rlog():
    log = ReliabilityLog()
    yield log
    target = os.environ.get("OFFLINE_SSLD_RELIABILITY_JSON")
    if target:
        log.write(target)
