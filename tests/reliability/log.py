"""What the reliability campaigns tried and what happened, recorded by the tests themselves.

The campaigns in tests/reliability/ record one entry per fault or input class (trials, outcome
counts, whether every trial met the goal); at the end of the session the log is written as JSON to
$OFFLINE_SSLD_RELIABILITY_JSON when that is set. tests/make_reliability_report.py sets it,
runs the campaign and renders docs/RELIABILITY.md from the JSON, so the document holds only
numbers a test run produced.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

FULL = os.environ.get("OFFLINE_SSLD_FULL", "") not in ("", "0")
"""OFFLINE_SSLD_FULL=1: the full campaign (20 kills, 500 byte flips, ...); else the CI one."""


@dataclass
class Entry:
    section: str  # e.g. "Fault injection"
    case: str  # the fault or input class
    trials: int
    ok: bool  # every trial met the goal
    goal: str  # what each trial must do
    outcomes: dict[str, int] = field(default_factory=dict)  # outcome -> count
    notes: str = ""


class ReliabilityLog:
    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.started = time.time()

    def record(
        self,
        section: str,
        case: str,
        outcomes: Counter | dict[str, int],
        ok: bool,
        goal: str,
        notes: str = "",
    ) -> Entry:
        counts = {str(k): int(v) for k, v in sorted(Counter(outcomes).items())}
        entry = Entry(section, case, sum(counts.values()), bool(ok), goal, counts, notes)
        self.entries.append(entry)
        return entry

    def write(self, path: str | Path) -> None:
        data = {
            "setting": "full" if FULL else "ci",
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started)),
            "seconds": round(time.time() - self.started, 1),
            "python": platform.python_version(),
            "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
            "entries": [asdict(e) for e in self.entries],
        }
        Path(path).write_text(json.dumps(data, indent=1) + "\n")
