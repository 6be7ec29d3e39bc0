"""The CLI prints only its own lines: no warnings or log lines of paddle, paddleclas or faiss.

Each command runs in a fresh interpreter (as a user runs it, without the test session's
GLOG_minloglevel or warning filters), so the dependencies' import-time output is seen."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from offline_ssld import __version__
from tests.helpers import STUDENT, save_random_weights

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("GLOG_minloglevel", "PYTHONWARNINGS")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "offline_ssld", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help_prints_only_its_text(tmp_path):
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("Usage: ")


def test_version_is_the_package_version(tmp_path):
    """One source: `__version__`, which setup.cfg reads, is what --version prints."""
    result = run_cli("--version", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"offline-ssld, version {__version__}\n"
    assert "version = attr: offline_ssld.__version__" in (ROOT / "setup.cfg").read_text()


def test_commands_that_load_paddle_print_only_their_lines(project):
    """dump-teacher builds the teacher (paddle, paddleclas, faiss); eval builds a
    MobileNetV3 student, whose paddleclas constructor logs a deprecation."""
    config, tmp = project
    result = run_cli("dump-teacher", "-c", str(config), "--quiet", cwd=tmp)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert result.stdout.startswith("wrote 4 shards") and result.stdout.count("\n") == 1

    save_random_weights(STUDENT, tmp / "student.safetensors")
    result = run_cli(
        "eval", "-c", str(config), "-o", f"Global.pretrained_model={tmp / 'student'}", cwd=tmp
    )
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert result.stdout.startswith("top1 ") and result.stdout.count("\n") == 1
