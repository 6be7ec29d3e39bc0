"""A scan of the package's source: no code runs from file contents (no eval, pickle, ...)."""

from __future__ import annotations

import ast
import re
import tokenize
from pathlib import Path

from tests.reliability.common import HOSTILE, PACKAGE


def _code_only(path: Path) -> str:
    """The source's tokens without comments and string literals (docstrings mention eval and
    pickle), joined without spaces, so `pickle . load` reads `pickle.load`."""
    kept = []
    skip = {tokenize.COMMENT, tokenize.STRING, tokenize.ENCODING, tokenize.NL, tokenize.NEWLINE}
    skip |= {
        getattr(tokenize, n)
        for n in ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END")
        if hasattr(tokenize, n)
    }
    with open(path, "rb") as fh:
        for token in tokenize.tokenize(fh.readline):
            if token.type not in skip:
                kept.append(token.string)
    return " ".join(kept).replace(" . ", ".").replace(" (", "(").replace(" = ", "=")


BANNED = {  # pattern over _code_only text -> what it is
    r"(?<![\w.])(c?pickle|dill|cloudpickle|marshal|shelve|joblib)\b": "a pickle-like module",
    r"(?<![\w.])eval\(": "eval(",
    r"(?<![\w.])exec\(": "exec(",
    r"(?<![\w.])__import__\(": "__import__(",
    r"\byaml\.(load|load_all|full_load|unsafe_load|unsafe_load_all)\((?![^)]*SafeLoader)": (
        "yaml.load( without SafeLoader"
    ),
    r"\ballow_pickle=True": "allow_pickle=True",
    r"\btorch\.load\(": "torch.load(",
}


def _paddle_loads(path: Path) -> list[tuple[str, int]]:
    """(enclosing function, line) of every paddle.load call."""
    found = []
    for func in ast.walk(ast.parse(path.read_text())):
        if isinstance(func, ast.FunctionDef):
            for call in ast.walk(func):
                if (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Attribute)
                    and call.func.attr == "load"
                    and isinstance(call.func.value, ast.Name)
                    and call.func.value.id == "paddle"
                ):
                    found.append((func.name, call.lineno))
    return found


def _in_order(text: str, *parts: str) -> bool:
    position = 0
    for part in parts:
        position = text.find(part, position)
        if position < 0:
            return False
    return True


def test_no_code_runs_from_file_contents(rlog):
    """No pickle, eval, exec, unsafe yaml or allow_pickle in the package; the only pickle
    loads (paddle.load) sit behind an explicit opt-in."""
    sources = sorted(PACKAGE.rglob("*.py"))
    findings: list[str] = []
    for path in sources:
        code = _code_only(path)
        for pattern, what in BANNED.items():
            if re.search(pattern, code):
                findings.append(f"{path.relative_to(PACKAGE.parent)}: {what}")
    # paddle.load (a pickle) only in models.py, each call behind an opt-in that raises first.
    guarded = []
    for path in sources:
        for func, line in _paddle_loads(path):
            guarded.append(f"{path.name}:{line} ({func})")
            allowed = {"models.py": ("load_weights", "convert_pdparams")}
            allowed["checkpoint.py"] = ("read_paddleclas_pickle",)  # Global.checkpoints
            if func not in allowed.get(path.name, ()):
                findings.append(f"paddle.load outside the allowed places: {path.name}:{line}")
    for file, func in (("models.py", "load_weights"), ("checkpoint.py", "read_paddleclas_pickle")):
        text = (PACKAGE / file).read_text()
        body = text[text.index(f"def {func}") :]
        body = body[: body.index("\ndef ")]
        if "allow_pickle: bool = False" not in body or not _in_order(
            body, "if not allow_pickle:", "raise ConfigError", "paddle.load("
        ):
            findings.append(f"{file} {func}: paddle.load is not behind allow_pickle (default off)")
    cli_source = (PACKAGE / "cli.py").read_text()
    command = cli_source[cli_source.index("def convert_weights") :]
    if not _in_order(command, "if not trusted:", "raise", "convert_pdparams("):
        findings.append("cli convert-weights: convert_pdparams is not behind --i-trust-this-file")
    callers = sorted(p.name for p in sources if "convert_pdparams(" in _code_only(p))
    if callers != ["cli.py", "models.py", "pretrained.py"]:
        findings.append(f"convert_pdparams is called from {callers}")
    # `pretrained: True` / use_ssld: the zoo file PaddleClas itself would load (its URL from
    # the installed paddleclas); any other URL only with Offline.allow_pickle_weights.
    fetch = (PACKAGE / "pretrained.py").read_text()
    fetch = fetch[fetch.index("def fetch_weights") :]
    if not _in_order(fetch, "if not download.trusted:", "raise ConfigError", "convert_pdparams("):
        findings.append("pretrained.fetch_weights: convert_pdparams is not behind trusted")
    flags = sorted(
        p.name for p in sources if re.search(r"allow_pickle(_weights)?=(?!False)", _code_only(p))
    )
    rlog.record(
        HOSTILE,
        "Source scan: pickle, eval/exec, yaml.load without SafeLoader, allow_pickle=True",
        {"clean file" if not findings else "FINDINGS": len(sources)},
        ok=not findings,
        goal="none in the package (comments and strings excluded); paddle.load only in "
        "models.load_weights and checkpoint.read_paddleclas_pickle (Global.checkpoints naming "
        "PaddleClas's files) behind Offline.allow_pickle_weights (default false) and "
        "models.convert_pdparams behind convert-weights --i-trust-this-file and, for downloads, "
        "behind PaddleClas's own zoo URL or Offline.allow_pickle_weights",
        notes=f"{len(sources)} files scanned; paddle.load calls: {', '.join(guarded)}; "
        f"files passing an allow_pickle value through: {', '.join(flags) or 'none'}."
        + (f" Findings: {findings}" if findings else ""),
    )
    assert not findings, findings
