"""Paddle is the user's prerequisite, as for PaddleClas: our wheel names no paddle distribution,
pip installing it beside paddlepaddle or paddlepaddle-gpu changes nothing already there, and
the CLI without paddle, or with two or an unsupported one, says so in one line.

pip itself answers (`pip install --dry-run --report`), offline: the wheel is built with the
venv's setuptools, the environments are this venv and a stand-in venv whose installed
distributions are constraints.txt's pins with paddlepaddle-gpu in place of paddlepaddle."""

from __future__ import annotations

import email
import json
import os
import re
import subprocess
import sys
import venv
import zipfile
from pathlib import Path
from shutil import copy2, copytree, ignore_patterns

import pytest
from click.testing import CliRunner

from offline_ssld import prerequisites
from offline_ssld.cli import main
from offline_ssld.prerequisites import TESTED
from tests.test_cli_output import run_cli

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "fashion_mnist" / "mnv3_small_student.yaml"


def pip(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """This venv's pip, offline (--no-index is passed by the callers), without the user's pip
    settings (the machine's global config still applies)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pip", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Our wheel, built from a copy of the sources (a build writes build/ and *.egg-info)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    copytree(ROOT / "offline_ssld", src / "offline_ssld", ignore=ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        copy2(ROOT / name, src / name)
    built = pip(
        "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", "dist", "./src", cwd=tmp
    )
    assert built.returncode == 0, built.stderr
    (path,) = (tmp / "dist").glob("offline_ssld-*.whl")
    return path


def wheel_metadata(path: Path) -> email.message.Message:
    with zipfile.ZipFile(path) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(zf.read(name))


def constraint_pins() -> dict[str, str]:
    """name -> version of every `name==version` line of constraints.txt."""
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return dict(m.groups() for m in map(re.compile(r"([\w.-]+)==(\S+)$").match, lines) if m)


def write_dist_info(site: Path, name: str, version: str) -> None:
    """An installed distribution as pip sees one: its metadata (the files do not matter)."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "INSTALLER").write_text("pip\n")
    (info / "RECORD").write_text("")


def write_wheel(folder: Path, name: str, version: str) -> None:
    """A wheel of `name` holding only its metadata, for pip to find if anything asks for it."""
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as zf:
        zf.writestr(
            f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        )
        zf.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        zf.writestr(f"{info}/RECORD", "")


def dry_run(requirement: str, cwd: Path, *python: str) -> list[tuple[str, str]]:
    """(name, version) of every distribution pip would install for `requirement`."""
    report = cwd / "report.json"
    links = cwd / "links"
    links.mkdir(exist_ok=True)
    write_wheel(links, "paddlepaddle", TESTED)  # so that a paddle requirement resolves
    result = pip(
        *python,
        "install",
        "--dry-run",
        "--quiet",
        "--report",
        str(report),
        "--no-index",
        "--find-links",
        str(links),
        requirement,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr
    installs = json.loads(report.read_text())["install"]
    return sorted((i["metadata"]["name"].lower(), i["metadata"]["version"]) for i in installs)


def test_wheel_requires_no_paddle_distribution(wheel):
    metadata = wheel_metadata(wheel)
    requires = metadata.get_all("Requires-Dist") or []
    assert any(r.startswith("paddleclas") for r in requires), requires  # the field is read
    assert not [r for r in requires if r.lower().startswith("paddlepaddle")], requires
    assert set(metadata["Requires-Python"].split(",")) == {">=3.11", "<3.12"}  # CI tests 3.11


def test_pip_adds_only_offline_ssld_beside_paddlepaddle_gpu(wheel, tmp_path):
    """A GPU user's environment (the stand-in: constraints.txt's versions installed, with
    paddlepaddle-gpu for paddlepaddle): pip would install our wheel with its extras and touch
    nothing else, so setup.cfg's ranges also admit every pin of constraints.txt."""
    env = tmp_path / "env"
    venv.create(env, with_pip=False)
    (site,) = env.glob("lib/python*/site-packages")
    pins = constraint_pins()
    assert pins.pop("paddlepaddle") == TESTED  # prerequisites.TESTED is what CI installs
    for name, version in {**pins, "paddlepaddle-gpu": TESTED}.items():
        write_dist_info(site, name, version)
    version = wheel_metadata(wheel)["Version"]
    python = ("--python", str(env / "bin" / "python"))
    assert dry_run(f"{wheel}[test,bench]", tmp_path, *python) == [("offline-ssld", version)]


def test_pip_changes_nothing_in_this_venv(wheel, tmp_path):
    """This venv (paddlepaddle from constraints.txt and its other pins, installed for real):
    installing our wheel would replace only offline-ssld."""
    version = wheel_metadata(wheel)["Version"]
    assert dry_run(str(wheel), tmp_path) == [("offline-ssld", version)]


def run_cli_without_paddle(*args: str) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter where `import paddle` fails, as where it is not installed."""
    code = "import sys; sys.modules['paddle'] = None; from offline_ssld.cli import main; main()"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_without_paddle_says_how_to_install_it():
    result = run_cli_without_paddle("export", "-c", str(CONFIG))
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: paddle is not installed: ")
    assert f"pip install paddlepaddle=={TESTED}" in line and "paddlepaddle-gpu" in line


def test_cli_help_works_without_paddle():
    for args in (["--help"], ["export", "--help"], ["--version"]):
        result = run_cli_without_paddle(*args)
        assert result.returncode == 0 and result.stderr == "", (args, result.stderr)


def test_two_paddle_distributions_are_refused(tmp_path, monkeypatch):
    """paddlepaddle-gpu installed over this venv's paddlepaddle, as pip would have done when
    setup.cfg pinned paddlepaddle: both own `paddle`, and the CLI says so."""
    write_dist_info(tmp_path, "paddlepaddle-gpu", TESTED)
    (tmp_path / f"paddlepaddle_gpu-{TESTED}.dist-info" / "top_level.txt").write_text("paddle\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # run_cli puts the repository first
    result = run_cli("inspect", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "paddlepaddle" in line and f"paddlepaddle-gpu {TESTED}" in line
    assert "are installed over the same `paddle` package" in line


@pytest.mark.parametrize(
    ("version", "ok"),
    [("2.6.2", False), ("3.2.2", False), (TESTED, True), ("3.9.0", True), ("4.0.0", False)],
)
def test_paddle_version_outside_the_range_is_one_line(monkeypatch, tmp_path, version, ok):
    monkeypatch.setattr(
        prerequisites, "paddle_distributions", lambda: {"paddlepaddle-gpu": version}
    )
    monkeypatch.delenv(prerequisites.ANY_PADDLE, raising=False)
    result = CliRunner().invoke(main, ["inspect", str(tmp_path)])
    refused = f"paddlepaddle-gpu {version} is outside the supported range paddle>=3.3,<4"
    assert (refused in result.output) is not ok, result.output
    if not ok:
        assert result.exit_code == 2 and len(result.output.splitlines()) == 1
        monkeypatch.setenv(prerequisites.ANY_PADDLE, "1")
        assert refused not in CliRunner().invoke(main, ["inspect", str(tmp_path)]).output
